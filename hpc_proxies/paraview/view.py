"""The interactive view a kernel serves for ``show()``: pvserver renders, the cell shows.

Each render view gets a tornado server (tornado comes with ipykernel) on a unix socket
in the tile's private ``views`` directory; the tile's service passes
``/paraview/view/<id>/`` on to it, so the browser reaches it only through the
authenticated Jupyter URL and no TCP port is opened. The page (``static/view.html``)
sends pointer and wheel input over a websocket; the kernel moves the camera, has
pvserver render (``vtkPVWebApplication``, ParaView Web's image delivery) and sends back
a JPEG. The page asks for the next frame only when the last one arrived, so a slow link
or a busy kernel never builds a queue.

:class:`ViewServers` owns the servers: one per view however often it is shown, stopped
(socket removed) when its view is deleted or its connection closes.

Handlers run on the kernel's event loop, on its main thread, which is where ParaView
must be called; while a cell runs, the view waits.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import secrets
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web
import tornado.websocket

JPEG_QUALITY = 85
ROTATE_DEGREES_PER_PIXEL = 0.4
#: The websocket close code (and ``{"closed": true}`` message, which passes the
#: tile's proxy) that tells the page its view is gone for good: no reconnecting.
VIEW_CLOSED = 4000


@functools.cache
def page() -> bytes:
    """The view's page (HTML, CSS and script in one file shipped with the package), read
    when a browser first asks for it rather than when a kernel imports this module."""
    return resources.files(__package__).joinpath("static/view.html").read_bytes()


class ViewServers:
    """The interactive views this kernel serves: one server and one socket per render
    view, however often ``show()`` displays it.

    Showing a served view again returns its id (every cell showing it stays live). A
    view's server stops, its websockets close and its socket goes when the view is
    deleted, when its connection closes (``Disconnect()``, or ``connect()`` to a new
    pvserver), when it is served into another directory (the tile was relaunched), and
    on :meth:`close` and :meth:`close_all`. ParaView announces deletions while it is
    still unregistering, so those are checked on the event loop's next turn.
    Everything runs on the kernel's main thread.
    """

    def __init__(self) -> None:
        self._served: dict[Any, _Served] = {}  # by the view's vtkSMProxy
        self._watched_sessions: set[int] = set()
        self._loop: tornado.ioloop.IOLoop | None = None
        self._prune_pending = False

    def __len__(self) -> int:
        return len(self._served)

    def serve(self, view: Any, views_dir: Path) -> str:
        """Serve ``view`` on a socket in ``views_dir`` (private to the user), or keep
        serving it there; return the id the tile routes ``/paraview/view/<id>/`` by."""
        self.prune()
        views_dir = Path(views_dir)
        key = view.SMProxy
        served = self._served.get(key)
        if served is not None:
            if served.socket.parent == views_dir and served.socket.exists():
                return served.view_id
            self._stop(key)  # the tile moved on (or its directory was emptied)
        self._watch(view)
        view_id = secrets.token_urlsafe(12)
        served = _Served(
            owner=self,
            view=view,
            view_id=view_id,
            socket=views_dir / f"{view_id}.sock",
            registered=_registered(view),
        )
        app = tornado.web.Application(
            [(r"/", _Page), (r"/ws", _Frames, {"served": served})],
            websocket_max_message_size=1 << 16,
        )
        listener = tornado.netutil.bind_unix_socket(str(served.socket), mode=0o600)
        served.server = tornado.httpserver.HTTPServer(app)
        served.server.add_socket(listener)
        self._served[key] = served
        return view_id

    def close(self, view: Any) -> None:
        """Stop serving ``view`` (nothing happens if it is not served)."""
        if view.SMProxy in self._served:
            self._stop(view.SMProxy)

    def close_all(self) -> None:
        """Stop every server and remove its socket (the kernel is exiting). Touches no
        ParaView object, which may already be finalized then."""
        for key in list(self._served):
            self._stop(key)

    def prune(self) -> None:
        """Stop the servers of views that were deleted or whose connection closed."""
        self._prune_pending = False
        for key, served in list(self._served.items()):
            if not served.is_open():
                self._stop(key)

    def _stop(self, key: Any) -> None:
        served = self._served.pop(key)
        served.stop()
        if self._loop is not None:
            # Idle keep-alive connections of the tile's proxy; websockets closed above.
            self._loop.add_callback(served.server.close_all_connections)

    def _watch(self, view: Any) -> None:
        """Prune when ParaView unregisters a proxy in the view's session, or closes a
        connection."""
        from paraview.modules.vtkRemotingCore import vtkProcessModule

        process_module = vtkProcessModule.GetProcessModule()
        if self._loop is None:
            self._loop = tornado.ioloop.IOLoop.current()
            process_module.AddObserver("ConnectionClosedEvent", self._prune_soon)
        session = view.SMProxy.GetSession()
        session_id = process_module.GetSessionID(session)
        if session_id not in self._watched_sessions:
            self._watched_sessions.add(session_id)
            session.GetSessionProxyManager().AddObserver("UnRegisterEvent", self._prune_soon)

    def _prune_soon(self, *_event: object) -> None:
        if self._served and not self._prune_pending and self._loop is not None:
            self._prune_pending = True
            self._loop.add_callback(self.prune)


@dataclass(eq=False)
class _Served:
    """One view's server, its socket, and the websockets open on it."""

    owner: ViewServers
    view: Any
    view_id: str
    socket: Path
    registered: bool  # in its session's "views" group when first served
    server: tornado.httpserver.HTTPServer | None = None
    websockets: set[_Frames] = field(default_factory=set)

    def is_open(self) -> bool:
        """The view's connection is open and (if it was registered) it is not deleted."""
        from paraview.modules.vtkRemotingCore import vtkProcessModule

        proxy = self.view.SMProxy
        session = proxy.GetSession()
        if session is None or vtkProcessModule.GetProcessModule().GetSessionID(session) == 0:
            return False
        return not self.registered or bool(
            session.GetSessionProxyManager().IsProxyInGroup(proxy, "views")
        )

    def stop(self) -> None:
        """Stop listening, tell the open pages their view is gone, remove the socket."""
        if self.server is not None:
            self.server.stop()
        for websocket in list(self.websockets):
            # The tile's proxy does not pass close codes on: say it in a message first.
            with contextlib.suppress(tornado.websocket.WebSocketClosedError):  # closing anyway
                websocket.write_message(json.dumps({"closed": True}))
            websocket.close(VIEW_CLOSED, "view closed")
        self.websockets.clear()
        self.socket.unlink(missing_ok=True)
        self.view = None  # ParaView frees a closed connection only once nothing holds it


def _registered(view: Any) -> bool:
    proxy = view.SMProxy
    return bool(proxy.GetSessionProxyManager().IsProxyInGroup(proxy, "views"))


class _Page(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.write(page())


class _Frames(tornado.websocket.WebSocketHandler):
    def initialize(self, served: _Served) -> None:
        self.served = served

    def check_origin(self, origin: str) -> bool:
        # Reached only through the user's Jupyter server (which checked the origin and
        # the login) and the tile's private socket; the Host header here is the proxy's.
        return True

    def open(self) -> None:
        self.served.websockets.add(self)

    def on_close(self) -> None:
        self.served.websockets.discard(self)

    def on_message(self, message: str | bytes) -> None:
        if self.served.view is not None and not self.served.is_open():
            self.served.owner.prune()  # deleted or disconnected: stops its server
        if self.served.view is None:  # no longer served
            self.close(VIEW_CLOSED, "view closed")
            return
        op = json.loads(message)
        started = time.perf_counter()
        frame = render(self.served.view, op)
        elapsed = (time.perf_counter() - started) * 1000
        self.write_message(json.dumps({"ms": round(elapsed, 1)}))
        self.write_message(frame, binary=True)


def render(view, op: dict) -> bytes:
    """Apply one input to the camera, have pvserver render, and return a JPEG."""
    from paraview import simple

    kind = op.get("op")
    camera = view.GetActiveCamera()
    if kind == "size":
        view.ViewSize = [int(op["w"]), int(op["h"])]
    elif kind == "rotate":
        camera.Azimuth(-float(op["dx"]) * ROTATE_DEGREES_PER_PIXEL)
        camera.Elevation(float(op["dy"]) * ROTATE_DEGREES_PER_PIXEL)
        camera.OrthogonalizeViewUp()
    elif kind == "pan":
        _pan(view, camera, float(op["dx"]), float(op["dy"]))
    elif kind == "zoom":
        camera.Dolly(max(0.2, min(5.0, float(op["f"]))))
    elif kind == "reset":
        simple.ResetCamera(view)
    simple.Render(view)
    buffer = _image_delivery().StillRenderToBuffer(view.SMProxy, 0, JPEG_QUALITY)
    return bytes(memoryview(buffer)) if buffer is not None else b""


@functools.cache
def _image_delivery():
    """ParaView Web's image delivery, one per process: it encodes on worker threads,
    and freeing one after each frame corrupted the heap (seen as crashes in the bench)."""
    from paraview.modules.vtkPVClientWeb import vtkPVWebApplication

    delivery = vtkPVWebApplication()
    delivery.SetImageEncoding(0)  # raw JPEG bytes, not base64
    return delivery


def _pan(view, camera, dx: float, dy: float) -> None:
    """Move camera and focal point across the screen by (dx, dy) pixels."""
    height = max(1, view.ViewSize[1])
    distance = camera.GetDistance()
    scale = 2 * distance * math.tan(math.radians(camera.GetViewAngle()) / 2) / height
    fx, fy, fz = camera.GetFocalPoint()
    px, py, pz = camera.GetPosition()
    ux, uy, uz = camera.GetViewUp()
    # right = direction of projection x view up
    dpx, dpy, dpz = fx - px, fy - py, fz - pz
    rx, ry, rz = dpy * uz - dpz * uy, dpz * ux - dpx * uz, dpx * uy - dpy * ux
    norm = math.sqrt(rx * rx + ry * ry + rz * rz) or 1.0
    rx, ry, rz = rx / norm, ry / norm, rz / norm
    mx = (-dx * rx + dy * ux) * scale
    my = (-dx * ry + dy * uy) * scale
    mz = (-dx * rz + dy * uz) * scale
    camera.SetFocalPoint(fx + mx, fy + my, fz + mz)
    camera.SetPosition(px + mx, py + my, pz + mz)
