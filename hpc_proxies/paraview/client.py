"""The notebook side: ``connect()`` and ``show()``, run in the ParaView kernel.

The kernel finds its own Jupyter server (the ``jpserver-*.json`` file of the server
that started it), asks the tile's service there to start pvserver (``POST
/paraview/api/start``, authenticated with that server's token), reads the connect-id
from the 0600 file the service names, and connects ``paraview.simple``. The user types
no host, port, token or secret. Errors are exceptions that say what to do.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import procs, xdisplay
from ..pages import STATE_HEADER
from ..problems import Problem
from .discovery import JupyterServer, find_jupyter_server, server_request
from .errors import (
    JupyterServerNotFound,
    ParaViewDisabled,
    ParaViewError,
    ParaViewNotImportable,
    PvserverStartFailed,
)

__all__ = [
    "JupyterServer",
    "JupyterServerNotFound",
    "ParaViewDisabled",
    "ParaViewError",
    "ParaViewNotImportable",
    "PvserverStartFailed",
    "connect",
    "ensure_pvserver",
    "find_jupyter_server",
    "show",
]

if TYPE_CHECKING:
    from .view import ViewServers

APP = "paraview"
#: Height of the interactive view in the cell (its width follows the notebook).
VIEW_HEIGHT = 480


#: Seconds each request waits while pvserver's Slurm job is queued: the cell then shows
#: where the job is, and asks again.
QUEUE_POLL = 5.0
#: Launcher states without a problem that pass by themselves: ask again until the
#: service answers (202 Accepted means starting, whatever the state says).
PASSING_STATES = frozenset({"starting", "running", "stopping"})
#: Problem codes meaning the site configuration keeps ParaView off here (an invalid
#: configuration turns every app off).
DISABLED_CODES = frozenset({"disabled", "invalid-config"})


def _problem_error(problem: Problem) -> ParaViewError:
    """The exception for a problem the tile's launcher reported."""
    if problem.code in DISABLED_CODES:
        return ParaViewDisabled(problem.text())
    return PvserverStartFailed(problem.text(), list(problem.tail))


def _launcher_state(status: int, body: bytes) -> dict:
    """The JSON state the tile's launcher answered with (it set ``STATE_HEADER``)."""
    try:
        state = json.loads(body)
    except ValueError:
        state = None
    if not isinstance(state, dict):
        raise PvserverStartFailed(
            f"The ParaView tile answered HTTP {status} without its JSON state: the Jupyter "
            "server runs another version of hpc-proxies than this kernel (restart it after "
            "an upgrade)."
        )
    return state


def _json_or_empty(headers, body: bytes) -> dict:
    """A JSON object answer as a dict; anything else (an HTML error page) as ``{}``."""
    if not headers.get("Content-Type", "").startswith("application/json"):
        return {}
    try:
        info = json.loads(body)
    except ValueError:
        return {}  # said JSON, was not: only its status is left to report
    return info if isinstance(info, dict) else {}


def ensure_pvserver(
    timeout: float = 120.0,
    server: JupyterServer | None = None,
    action: str = "start",
    ranks: int | None = None,
) -> dict:
    """Ask the tile's service to start (or ``restart``) pvserver, on ``ranks`` ranks if
    given, starting the service too if needed, and wait until pvserver listens."""
    server = server or find_jupyter_server()
    query = f"?wait={QUEUE_POLL:g}" + (f"&ranks={int(ranks)}" if ranks is not None else "")
    path = f"{APP}/api/{action}{query}"
    deadline = time.monotonic() + timeout
    said = ""
    while True:
        try:
            status, headers, body = server_request(server, "POST", path, timeout=timeout)
        except OSError as err:
            raise JupyterServerNotFound(
                f"Cannot reach the Jupyter server at {server.url}: {err}"
            ) from err
        if headers.get(STATE_HEADER):  # the tile's launcher: the service is not running
            state = _launcher_state(status, body)
            if state.get("problem"):
                raise _problem_error(Problem.from_json(state["problem"]))
            if status != 202 and state.get("state") not in PASSING_STATES:
                raise PvserverStartFailed(
                    f"The ParaView service is {state.get('state', 'not running')} (HTTP {status}).",
                    state.get("tail"),
                )
            if time.monotonic() > deadline:
                raise PvserverStartFailed(
                    f"The ParaView service did not start within {timeout:.0f} s.",
                    state.get("tail"),
                )
            time.sleep(0.3)
            continue
        if status == 200:
            return json.loads(body)
        if status == 202 and not headers.get(STATE_HEADER):  # pvserver's job waits for Slurm
            info = json.loads(body)
            if info.get("message") != said:
                said = info.get("message", "")
                print(f"pvserver: {said}", flush=True)  # the cell shows the queue's progress
            if time.monotonic() > deadline:
                raise PvserverStartFailed(
                    f"{said} connect() waited {timeout:.0f} s. The job stays queued: run "
                    "connect() again (with a longer timeout) to wait on, or stop it on the "
                    f"ParaView tile ({info.get('prefix', '/paraview/')}).",
                    info.get("tail"),
                )
            continue
        if status == 404:
            raise ParaViewError(
                f"The Jupyter server at {server.url} has no /{APP}/: hpc-proxies is not "
                "installed next to JupyterLab there (pip install hpc-proxies), or the server "
                "needs a restart."
            )
        info = _json_or_empty(headers, body)
        if status in (401, 403):  # Jupyter's own refusal: ParaView's tile never saw it
            raise ParaViewError(
                f"The Jupyter server at {server.url} refused /{path} (HTTP {status}"
                + (f": {info['message']}" if info.get("message") else "")
                + "): this kernel's token is not accepted there."
            )
        if status == 400:  # a rank count the site does not allow
            raise ParaViewError(info.get("error", f"HTTP {status}"))
        # The service's own errors: {"error": ..., "tail": [...]}.
        raise PvserverStartFailed(info.get("error", f"HTTP {status}"), info.get("tail"))


# ------------------------------------------------------------------- display
class _KernelDisplay:
    """A private Xvfb for this kernel's own render windows (GLX builds need one even
    when pvserver renders): started once, stopped when the kernel exits.

    The kernel may be killed (its Jupyter server's death takes it along) and then its
    ``atexit`` never runs: the Xvfb gets SIGTERM from the kernel's death itself
    (``die_with_parent``), and a reaper (``procs.DirectoryReaper``) removes the
    directory however the kernel ends."""

    def __init__(self) -> None:
        self.server: xdisplay.XServer | None = None
        self.directory: str | None = None
        self.reaper: procs.DirectoryReaper | None = None
        self.stop_registered = False

    def ensure(self) -> None:
        if self.server is not None and self.server.proc.poll() is None:
            return
        xvfb = shutil.which("Xvfb")
        if xvfb is None:
            return  # EGL/OSMesa builds, or an inherited DISPLAY
        self.stop()  # an Xvfb that died: its directory goes before a new one comes
        if not self.stop_registered:
            atexit.register(self.stop)
            self.stop_registered = True
        self.directory = tempfile.mkdtemp(prefix="hpc-proxies-pvkernel-")
        self.reaper = procs.DirectoryReaper(self.directory)
        try:
            self.server = xdisplay.start_xvfb(self.directory, xvfb, die_with_parent=True)
        except BaseException:
            self.stop()
            raise
        os.environ.update(self.server.environ())

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.reaper is not None:
            self.reaper.remove_now()
            self.reaper = None
        self.directory = None


_display = _KernelDisplay()


@dataclass
class _Session:
    """The connection connect() made, held weakly: ParaView closes a connection (and
    pvserver exits) only when nothing references it any more. ``views`` serves the
    render views show() displayed, made by the first show() (which imports tornado)."""

    port: int | None = None
    connection: weakref.ref | None = None
    views: ViewServers | None = None

    def live(self):
        return self.connection() if self.connection is not None else None

    def view_servers(self) -> ViewServers:
        """This kernel's view servers; they stop, and their sockets go, when it exits."""
        if self.views is None:
            from .view import ViewServers

            self.views = ViewServers()
            atexit.register(self.views.close_all)
        return self.views


_session = _Session()


def _import_simple():
    try:
        from paraview import simple
    except ImportError as err:
        import sys

        raise ParaViewNotImportable(
            f"ParaView cannot be imported in this kernel ({sys.executable}: {err}). Use the "
            "'ParaView (pvpython)' kernel; an administrator installs it with "
            "'hpc-proxies install-kernel paraview'."
        ) from err
    return simple


def connect(timeout: float = 120.0, ranks: int | None = None):
    """Make sure this user's pvserver runs, connect ``paraview.simple`` to it, and return
    the connection. Calling it again reuses a live connection, or starts pvserver anew.
    It gives up after ``timeout`` seconds, saying what it waited for. ``ranks``: on that
    many MPI ranks, within what the site allows (``engine = "mpiexec"``, ``max_ranks``);
    a pvserver on another count is restarted unless a client is connected to it."""
    deadline = time.monotonic() + timeout
    _display.ensure()
    simple = _import_simple()
    server = find_jupyter_server()
    info = ensure_pvserver(timeout, server, ranks=ranks)
    previous, active = _session.live(), simple.servermanager.ActiveConnection
    ours = previous is not None and _session.port == info["port"]
    if ours and previous is active and info["client_connected"]:
        return previous
    if info["client_connected"]:
        if not ours:
            raise ParaViewError(
                "This user's pvserver already has a client (another kernel, or a ParaView "
                "GUI), and it serves one at a time. Disconnect() there, or stop it from the "
                f"ParaView tile ({info['prefix']})."
            )
        # Disconnect()ed here, but ParaView keeps the socket (and pvserver) until the
        # last reference to the old connection goes: start a fresh pvserver instead.
        info = ensure_pvserver(_left(deadline), server, action="restart")
    if previous is not None and previous is active:
        with contextlib.suppress(RuntimeError):
            simple.Disconnect()
    if _session.views is not None:
        _session.views.prune()  # they hold the closed connection's views: let them go
    _session.connection = None
    del previous, active
    from paraview.modules.vtkRemotingCore import vtkRemotingCoreConfiguration

    while True:
        connect_id = int(Path(info["connect_id_file"]).read_text().strip())
        vtkRemotingCoreConfiguration.GetInstance().SetConnectID(connect_id)
        # The relay is IPv4 only; ParaView retries a refused connection until its timeout.
        connection = simple.Connect("127.0.0.1", info["port"], timeout=int(_left(deadline)))
        if connection is not None:
            break
        # pvserver starts anew when a connection stalls its handshake: try the new one.
        stalled = info.get("stalled_handshakes", 0)
        info = ensure_pvserver(_left(deadline), server)
        if info.get("stalled_handshakes", 0) == stalled or _left(deadline) <= 1:
            raise PvserverStartFailed(
                f"paraview.simple could not connect to pvserver on port {info['port']} "
                f"within {timeout:.0f} s"
                + (
                    f"; {info['stalled_handshakes']} connection(s) held pvserver's "
                    "handshake without finishing it (see the ParaView tile's log)"
                    if info.get("stalled_handshakes")
                    else ""
                )
                + ".",
                info.get("tail"),
            )
    # Render on pvserver, always: the data stays near the server.
    simple.GetSettingsProxy("RenderViewSettings").RemoteRenderThreshold = 0.0
    _session.port, _session.connection = info["port"], weakref.ref(connection)
    return connection


def _left(deadline: float) -> float:
    """Seconds until ``deadline``, at least one (a last try rather than none)."""
    return max(1.0, deadline - time.monotonic())


def show(view=None, interactive: bool = True):
    """Display ``view`` (default: the active render view) in the cell.

    ``interactive=True`` returns an IFrame with a view that pvserver renders as you drag
    (rotate), shift-drag or right-drag (pan) and scroll (zoom); ``interactive=False``
    returns a PNG image (``IPython.display.Image``; its bytes are ``.data``).
    """
    simple = _import_simple()
    if simple.servermanager.ActiveConnection is None:
        connect()
    view = view or simple.GetActiveViewOrCreate("RenderView")
    if not interactive:
        return _png(simple, view)
    from IPython.display import IFrame

    status, _, body = server_request(find_jupyter_server(), "GET", f"{APP}/api/status")
    if status != 200:
        raise ParaViewError(f"The ParaView service did not answer (HTTP {status}); run connect().")
    info = json.loads(body)
    view_id = _session.view_servers().serve(view, Path(info["views_dir"]))
    return IFrame(f"{info['prefix']}view/{view_id}/", width="100%", height=VIEW_HEIGHT)


def _png(simple, view):
    from IPython.display import Image

    with tempfile.TemporaryDirectory(prefix="hpc-proxies-png-") as tmp:
        path = Path(tmp) / "view.png"
        simple.SaveScreenshot(str(path), view)
        return Image(data=path.read_bytes(), format="png")
