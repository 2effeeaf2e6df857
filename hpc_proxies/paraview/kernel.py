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
from ..apps import icon_path
from ..executables import app_env, run_program, setup_argv

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


class _Python:
    """One Python interpreter, always run after the site's setup snippet."""

    def __init__(self, executable: str, setup: str, env: dict[str, str]):
        self.executable, self.setup, self.env = executable, setup, env

    def ok(self, *args: str) -> bool:
        try:
            return run_program(self.executable, args, self.setup, self.env).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def run(self, what: str, *args: str) -> str:
        """Its output; :class:`KernelInstallError` naming ``what`` if it fails."""
        try:
            done = run_program(self.executable, args, self.setup, self.env, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise KernelInstallError(f"{what} failed: {err}") from err
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()[-3000:]
            raise KernelInstallError(f"{what} failed (exit {done.returncode}):\n{output}")
        return done.stdout.strip()


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

    paraview_python = _Python(python, setup, env)
    probe = "import paraview; print(getattr(paraview, '__version__', '?'))"
    try:
        version = paraview_python.run(f"importing ParaView with {python}", "-c", probe)
    except KernelInstallError as err:
        reason = str(err).strip().splitlines()[-1]  # e.g. "No module named 'paraview'"
        raise KernelInstallError(
            f"{python} cannot import ParaView ({reason}). Install it (Debian/Ubuntu: apt install "
            "paraview python3-paraview), or name a Python that can with --python (and "
            "--setup, e.g. 'module load ParaView')."
        ) from None

    env_dir = env_dir_for(scope)
    if env_dir.exists():
        shutil.rmtree(env_dir)
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    paraview_python.run(
        f"creating the kernel's venv with {python}",
        *("-m", "venv", "--system-site-packages", str(env_dir)),
    )
    env_python = str(env_dir / "bin" / "python")
    kernel_python = _Python(env_python, setup, env)
    if not kernel_python.ok("-c", "import ipykernel, tornado"):
        kernel_python.run(
            "installing ipykernel into the kernel's venv", "-m", "pip", "install", "-q", "ipykernel"
        )
    purelib = kernel_python.run(
        "locating the venv's site-packages",
        *("-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"),
    ).splitlines()[-1]
    # This very package, linked (not copied): upgrading hpc-proxies upgrades the kernel.
    (Path(purelib) / "hpc_proxies").symlink_to(PACKAGE_DIR, target_is_directory=True)
    kernel_python.run(
        "checking the kernel's imports",
        "-c",
        "import paraview.simple, hpc_proxies.paraview, ipykernel",
    )

    launch = [env_python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {
        "argv": setup_argv(setup, launch),
        "display_name": DISPLAY_NAME,
        "language": "python",
        "metadata": {"debugger": False, "hpc_proxies": {"python": python, "setup": setup}},
    }
    with tempfile.TemporaryDirectory() as tmp:
        # install_kernel_spec copies the directory with its mode, and a temporary
        # directory is 0700: an admin's --sys-prefix kernel would be invisible to users.
        Path(tmp).chmod(0o755)
        (Path(tmp) / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
        logo = icon_path(KERNEL_NAME)
        if logo:
            shutil.copy(logo, Path(tmp) / "logo-svg.svg")
        kernel_dir = KernelSpecManager().install_kernel_spec(
            tmp,
            KERNEL_NAME,
            user=scope == "user",
            prefix=sys.prefix if scope == "sys-prefix" else None,
        )
    return KernelInstall(Path(kernel_dir), env_dir, python, version.strip())
