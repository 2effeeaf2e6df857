"""``hpc-proxies install-kernel paraview``: a Jupyter kernel that imports ParaView.

ParaView's Python modules belong to one Python (Debian's ``/usr/bin/python3``, or the
one a site's ``module load ParaView`` provides), usually not the one JupyterLab runs
in. Putting ParaView's directory on the Jupyter Python's ``PYTHONPATH`` mixes two
installations (``paraview.simple`` then puts that directory first on ``sys.path``,
and a later ``import numpy`` gets the other Python's copy). So the kernel gets its own
environment: a venv of ParaView's Python with ``--system-site-packages`` (ParaView
and its numpy, as they were built together), ipykernel, and this package linked in.
The site's ``setup`` snippet, if any, runs before the kernel starts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import config
from ..executables import app_env, setup_argv

KERNEL_NAME = "paraview"
DISPLAY_NAME = "ParaView (pvpython)"
PACKAGE_DIR = Path(__file__).resolve().parent.parent


class KernelInstallError(RuntimeError):
    """The kernel could not be installed; the message says why and what to do."""


@dataclass
class KernelInstall:
    kernel_dir: Path
    env_dir: Path
    python: str
    paraview_version: str


def env_dir_for(scope: str) -> Path:
    """Where the kernel's venv lives: beside the kernelspec's scope."""
    if scope == "sys-prefix":
        return Path(sys.prefix) / "share" / "hpc-proxies" / "paraview-kernel"
    return Path.home() / ".local" / "share" / "hpc-proxies" / "paraview-kernel"


def _run(argv: list[str], what: str, env=None, timeout: float = 600) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise KernelInstallError(f"{what} failed: {err}") from err
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-3000:]
        raise KernelInstallError(f"{what} failed (exit {done.returncode}):\n{output}")
    return done.stdout


def install(
    scope: str = "user", python: str | None = None, setup: str | None = None
) -> KernelInstall:
    """Create the kernel's venv and install the ``paraview`` kernelspec in ``scope``
    ('user' or 'sys-prefix'). ``python`` and ``setup`` default to the site
    configuration's ``[apps.paraview]`` executable and setup."""
    from jupyter_client.kernelspec import KernelSpecManager

    settings = config.load().for_app(KERNEL_NAME).values
    python = python or str(settings.get("executable") or "/usr/bin/python3")
    setup = str(settings.get("setup") or "") if setup is None else setup
    env = app_env(settings)
    env.pop("PYTHONPATH", None)  # the Jupyter Python's path must not leak into this one

    probe = "import paraview; print(getattr(paraview, '__version__', '?'))"
    try:
        version = _run(
            setup_argv(setup, [python, "-c", probe]), f"importing ParaView with {python}", env
        )
    except KernelInstallError as err:
        raise KernelInstallError(
            f"{err}\n{python} cannot import ParaView. Install it (Debian/Ubuntu: apt install "
            "paraview python3-paraview), or name a Python that can with --python (and "
            "--setup, e.g. 'module load ParaView')."
        ) from None

    env_dir = env_dir_for(scope)
    if env_dir.exists():
        shutil.rmtree(env_dir)
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    _run(
        setup_argv(setup, [python, "-m", "venv", "--system-site-packages", str(env_dir)]),
        f"creating the kernel's venv with {python}",
        env,
    )
    env_python = str(env_dir / "bin" / "python")
    has_ipykernel = subprocess.run(
        setup_argv(setup, [env_python, "-c", "import ipykernel, tornado"]),
        env=env,
        capture_output=True,
        check=False,
    )
    if has_ipykernel.returncode != 0:
        _run(
            setup_argv(setup, [env_python, "-m", "pip", "install", "-q", "ipykernel"]),
            "installing ipykernel into the kernel's venv",
            env,
        )
    purelib = (
        _run(
            setup_argv(
                setup,
                [env_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            ),
            "locating the venv's site-packages",
            env,
        )
        .strip()
        .splitlines()[-1]
    )
    # This very package, linked (not copied): upgrading hpc-proxies upgrades the kernel.
    (Path(purelib) / "hpc_proxies").symlink_to(PACKAGE_DIR, target_is_directory=True)
    _run(
        setup_argv(
            setup, [env_python, "-c", "import paraview.simple, hpc_proxies.paraview, ipykernel"]
        ),
        "checking the kernel's imports",
        env,
    )

    launch = [env_python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {
        "argv": setup_argv(setup, launch),
        "display_name": DISPLAY_NAME,
        "language": "python",
        "metadata": {"debugger": False, "hpc_proxies": {"python": python, "setup": setup}},
    }
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
        logo = PACKAGE_DIR.parent / "icons" / "paraview.svg"
        if not logo.exists():
            logo = PACKAGE_DIR / "icons" / "paraview.svg"
        if logo.exists():
            shutil.copy(logo, Path(tmp) / "logo-svg.svg")
        kernel_dir = KernelSpecManager().install_kernel_spec(
            tmp,
            KERNEL_NAME,
            user=scope == "user",
            prefix=sys.prefix if scope == "sys-prefix" else None,
        )
    return KernelInstall(Path(kernel_dir), env_dir, python, version.strip())
