"""The interactive view a kernel serves for ``show()``: pvserver renders, the cell shows.

Each view gets a tornado server (tornado comes with ipykernel) on a unix socket in the
tile's private ``views`` directory; the tile's service passes ``/paraview/view/<id>/``
on to it, so the browser reaches it only through the authenticated Jupyter URL and no
TCP port is opened. The page sends pointer and wheel input over a websocket; the
kernel moves the camera, has pvserver render (``vtkPVWebApplication``, ParaView Web's
image delivery) and sends back a JPEG. The page asks for the next frame only when the
last one arrived, so a slow link or a busy kernel never builds a queue.

Handlers run on the kernel's event loop, on its main thread, which is where ParaView
must be called; while a cell runs, the view waits.
"""

from __future__ import annotations

import functools
import json
import secrets
import time
from pathlib import Path

import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket

JPEG_QUALITY = 85
ROTATE_DEGREES_PER_PIXEL = 0.4
_servers: dict[str, tornado.httpserver.HTTPServer] = {}

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>ParaView view</title>
<style>
html, body { margin: 0; height: 100%; overflow: hidden; background: #32344a; }
#view { width: 100%; height: 100%; display: block; touch-action: none; cursor: grab;
        user-select: none; -webkit-user-drag: none; }
#info { position: absolute; right: .5rem; bottom: .3rem; color: #ccc;
        font: 11px system-ui, sans-serif; pointer-events: none; }
</style></head>
<body><img id="view" alt="ParaView render view" draggable="false"><div id="info"></div>
<script>
(function () {
  const img = document.getElementById('view'), info = document.getElementById('info');
  const url = new URL('ws', location.href);
  url.protocol = url.protocol.replace('http', 'ws');
  let ws, busy = false, pending = null, drag = null, lastUrl = null, sentAt = 0;
  window.paraviewFrames = [];   // (round-trip ms, render ms) of each frame
  function queue(op) {
    if (pending && pending.op === op.op && op.op !== 'size') {
      for (const k of ['dx', 'dy']) if (k in op) pending[k] += op[k];
      if ('f' in op) pending.f *= op.f;
    } else if (pending) { send(pending); pending = op; return; }
    else pending = op;
    flush();
  }
  function send(op) { if (ws && ws.readyState === 1) ws.send(JSON.stringify(op)); }
  function flush() {
    if (busy || !pending || !ws || ws.readyState !== 1) return;
    busy = true; sentAt = performance.now(); send(pending); pending = null;
  }
  function size() {
    queue({op: 'size', w: Math.max(64, Math.round(img.clientWidth)),
           h: Math.max(64, Math.round(img.clientHeight))});
  }
  function open() {
    ws = new WebSocket(url); ws.binaryType = 'blob';
    let renderMs = 0;
    ws.onopen = () => { busy = false; size(); };
    ws.onmessage = (e) => {
      if (typeof e.data === 'string') { renderMs = JSON.parse(e.data).ms; return; }
      const next = URL.createObjectURL(e.data);
      img.onload = () => { if (lastUrl) URL.revokeObjectURL(lastUrl); lastUrl = next; };
      img.src = next;
      const rtt = performance.now() - sentAt;
      window.paraviewFrames.push([rtt, renderMs]);
      info.textContent = renderMs.toFixed(0) + ' ms render, ' + rtt.toFixed(0) + ' ms frame';
      busy = false; flush();
    };
    ws.onclose = () => { info.textContent = 'reconnecting…'; setTimeout(open, 1000); };
  }
  img.addEventListener('pointerdown', (e) => {
    img.setPointerCapture(e.pointerId);
    drag = {x: e.clientX, y: e.clientY,
            op: (e.button === 2 || e.button === 1 || e.shiftKey) ? 'pan' : 'rotate'};
    img.style.cursor = 'grabbing';
  });
  img.addEventListener('pointermove', (e) => {
    if (!drag) return;
    queue({op: drag.op, dx: e.clientX - drag.x, dy: e.clientY - drag.y});
    drag.x = e.clientX; drag.y = e.clientY;
  });
  const end = () => { drag = null; img.style.cursor = 'grab'; };
  img.addEventListener('pointerup', end);
  img.addEventListener('pointercancel', end);
  img.addEventListener('contextmenu', (e) => e.preventDefault());
  img.addEventListener('dblclick', () => queue({op: 'reset'}));
  img.addEventListener('wheel', (e) => {
    e.preventDefault(); queue({op: 'zoom', f: Math.pow(1.1, -e.deltaY / 100)});
  }, {passive: false});
  new ResizeObserver(size).observe(img);
  open();
})();
</script></body></html>
"""


class _Page(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.write(PAGE)


class _Frames(tornado.websocket.WebSocketHandler):
    def initialize(self, view) -> None:
        self.view = view

    def check_origin(self, origin: str) -> bool:
        # Reached only through the user's Jupyter server (which checked the origin and
        # the login) and the tile's private socket; the Host header here is the proxy's.
        return True

    def on_message(self, message: str | bytes) -> None:
        op = json.loads(message)
        started = time.perf_counter()
        frame = render(self.view, op)
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
    import math

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


def serve_view(view, views_dir: Path) -> str:
    """Serve ``view`` on a new socket in ``views_dir`` (private to the user); return
    the id the tile routes ``/paraview/view/<id>/`` by."""
    view_id = secrets.token_urlsafe(12)
    app = tornado.web.Application(
        [(r"/", _Page), (r"/ws", _Frames, {"view": view})],
        websocket_max_message_size=1 << 16,
    )
    sock = tornado.netutil.bind_unix_socket(str(views_dir / f"{view_id}.sock"), mode=0o600)
    server = tornado.httpserver.HTTPServer(app)
    server.add_socket(sock)
    _servers[view_id] = server
    return view_id
