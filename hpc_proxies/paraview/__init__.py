"""ParaView: this user's pvserver behind a tile, driven from a notebook kernel.

The tile (``/paraview/``) is a small service (:mod:`.service`) on the launch's private
unix socket: a status page, a JSON API, and the route to interactive views. It starts
pvserver on demand, inside a Python that imports ParaView (:mod:`.server`), so the
per-launch connect-id comes from a 0600 file and never appears in an argv; with GLX
builds each start gets a private Xvfb (no TCP, a cookie in a 0600 file).

In a notebook on the "ParaView (pvpython)" kernel (``hpc-proxies install-kernel
paraview``)::

    import hpc_proxies.paraview as pvh
    from paraview.simple import *
    pvh.connect()          # starts pvserver through the Jupyter server if needed
    Show(Sphere())
    pvh.show()             # an interactive view in the cell, rendered by pvserver
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from ..spec import AppSpec, Launch, Requirement, Setting

#: Debian's python3-paraview is importable by Debian's own Python.
DEFAULT_PYTHON = "/usr/bin/python3"
RENDERING_MODES = ("xvfb", "display", "egl")
#: How pvserver is launched: one process here, or ``ranks`` MPI ranks with ``mpiexec``.
ENGINES = ("local", "mpiexec")
#: Seconds a client let through the relay has, unless the site sets
#: ``handshake_timeout``, to finish ParaView's handshake: pvserver serves one client and
#: waits on the first, so one that stalls would hold everyone.
HANDSHAKE_TIMEOUT = 15.0


def connect(timeout: float = 120.0, ranks: int | None = None):
    """Make sure this user's pvserver runs (on ``ranks`` MPI ranks, if asked and the
    site allows) and connect ``paraview.simple`` to it."""
    from .client import connect as _connect

    return _connect(timeout=timeout, ranks=ranks)


def show(view=None, interactive: bool = True):
    """Display the active render view in the cell (interactive), or return a PNG."""
    from .client import show as _show

    return _show(view=view, interactive=interactive)


#: The site keys the ParaView service takes, and its command-line option for each.
SERVICE_OPTIONS = {
    "rendering": "--rendering",
    "display": "--display",
    "egl_device": "--egl-device",
    "pvserver_timeout": "--timeout",
    "handshake_timeout": "--handshake-timeout",
    "isolate_network": "--isolate-network",
    "engine": "--engine",
    "ranks": "--ranks",
    "max_ranks": "--max-ranks",
}
#: isolate_network's values.
ISOLATION = ("auto", "required", "off")


def command(launch: Launch) -> list[str]:
    settings = launch.settings
    argv = [
        sys.executable,
        "-m",
        "hpc_proxies.paraview.service",
        "--socket",
        str(launch.socket),
        "--dir",
        str(launch.app_dir),
        "--prefix",
        launch.prefix,
        "--python",
        launch.executable,
    ]
    # Each site key the service takes, with the Setting's own default (one place).
    defaults = {setting.name: setting.default for setting in APP.settings}
    for key, option in SERVICE_OPTIONS.items():
        argv += [option, str(settings.get(key, defaults[key]))]
    if "mpiexec" in launch.executables:
        argv += ["--mpiexec", launch.executables["mpiexec"]]
    if "Xvfb" in launch.executables:
        argv += ["--xvfb", launch.executables["Xvfb"]]
    return argv


def requires(settings: Mapping[str, object]) -> tuple[Requirement, ...]:
    reqs = [
        Requirement(
            DEFAULT_PYTHON,
            "a Python that imports ParaView (Debian/Ubuntu: apt install paraview "
            "python3-paraview), or set [apps.paraview] executable (and setup, e.g. "
            "'module load ParaView') in the site configuration",
        )
    ]
    if str(settings.get("rendering") or "xvfb") == "xvfb":
        reqs.append(Requirement("Xvfb", "on Debian/Ubuntu: apt install xvfb"))
    if str(settings.get("engine") or "local") == "mpiexec":
        reqs.append(
            Requirement(
                "mpiexec",
                "the MPI that ParaView was built with (Debian/Ubuntu: apt install "
                "openmpi-bin), or `setup` that loads it (e.g. 'module load OpenMPI')",
            )
        )
    return tuple(reqs)


APP = AppSpec(
    name="paraview",
    title="ParaView",
    icon="paraview",
    description="This user's ParaView server (pvserver), driven from a notebook kernel.",
    requires=requires,
    command=command,
    timeout=30.0,
    max_instances=1,  # one pvserver service per user; kernels share it
    html_paths=(),
    settings=(
        Setting(
            "engine",
            str,
            "local",
            "How pvserver runs: 'local' (one process on the Jupyter server's node) or "
            "'mpiexec' (`ranks` MPI ranks with `mpiexec`, on this node or in the "
            "allocation the Jupyter server's job holds). The notebook code is the same.",
            choices=ENGINES,
        ),
        Setting(
            "ranks",
            int,
            2,
            "pvserver's MPI ranks with engine = 'mpiexec'.",
            minimum=1,
            example=4,
        ),
        Setting(
            "max_ranks",
            int,
            4,
            "The most ranks a user may ask for, with connect(ranks=N), under engine = "
            "'mpiexec' (`ranks` is what they get when they do not ask).",
            minimum=1,
            example=16,
        ),
        Setting(
            "rendering",
            str,
            "xvfb",
            "Where pvserver renders: 'xvfb' (a private Xvfb per start, for GLX builds "
            "such as Debian's), 'display' (an existing X display: `display`, or the "
            "server's DISPLAY), or 'egl' (headless EGL builds, device `egl_device`).",
            choices=RENDERING_MODES,
        ),
        Setting("display", str, "", "The X display for rendering = 'display'.", example=":0"),
        Setting("egl_device", int, 0, "The EGL device index for rendering = 'egl'."),
        Setting(
            "pvserver_timeout",
            float,
            60.0,
            "Seconds pvserver may take to listen after a start (the tile's own start-up "
            "is `timeout`).",
            example=300,
        ),
        Setting(
            "handshake_timeout",
            float,
            HANDSHAKE_TIMEOUT,
            "Seconds a client let through the relay has to finish ParaView's handshake "
            "before pvserver is started anew, so that a hung client cannot hold it (pvserver "
            "serves one client, and waits on the first).",
        ),
        Setting(
            "isolate_network",
            str,
            "auto",
            "pvserver listens on every interface (ParaView 5.11 has no bind address). "
            "'auto' runs it in a private network namespace (unprivileged user namespaces) "
            "with a relay on 127.0.0.1, or, where the kernel forbids those, on every "
            "interface behind its connect-id, saying so on the status page; 'required' "
            "refuses to start without the namespace; 'off' never uses one.",
            choices=ISOLATION,
        ),
    ),
)
