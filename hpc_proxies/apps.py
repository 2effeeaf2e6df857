"""The registry of apps: entry-point name -> the module that describes it."""

from __future__ import annotations

import importlib
from pathlib import Path

from .spec import AppSpec

#: Entry-point names (a public contract) and the modules holding their ``APP`` spec.
APP_MODULES = {
    "xpra": "hpc_proxies.xpra",
    "vnc": "hpc_proxies.vnc",
    "tensorboard": "hpc_proxies.tensorboard",
    "rstudio": "hpc_proxies.rstudio",
    "paraview": "hpc_proxies.paraview",
}


def load_app(name: str) -> AppSpec:
    """Import the app module for ``name`` and return its :class:`AppSpec`."""
    try:
        module_name = APP_MODULES[name]
    except KeyError:
        known = ", ".join(sorted(APP_MODULES))
        raise KeyError(f"unknown app {name!r}; known apps: {known}") from None
    return importlib.import_module(module_name).APP


def icon_path(name: str) -> str:
    """The SVG icon ``icons/<name>.svg``, from the wheel or from a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "icons" / f"{name}.svg", here.parent / "icons" / f"{name}.svg"):
        if candidate.is_file():
            return str(candidate)
    return ""
