"""The entry points (group ``jupyter_serverproxy_servers``): one tile per app.

The names (``xpra``, ``vnc``, ``paraview``, ``tensorboard``, ``rstudio``) are a public
contract; each function only builds its app's server dict, at server start.
"""

from __future__ import annotations

from ..apps import load_app
from ..config import SiteConfig, load
from .serverproxy import server_process


def _tile(name: str, site: SiteConfig | None = None) -> dict:
    return server_process(load_app(name), site if site is not None else load())


def setup_xpra() -> dict:
    """The "Xpra Desktop" tile."""
    return _tile("xpra")


def setup_vnc() -> dict:
    """The "VNC Desktop" tile."""
    return _tile("vnc")


def setup_tensorboard() -> dict:
    """The "TensorBoard" tile."""
    return _tile("tensorboard")


def setup_rstudio() -> dict:
    """The "RStudio" tile."""
    return _tile("rstudio")


def setup_paraview() -> dict:
    """The "ParaView" tile."""
    return _tile("paraview")
