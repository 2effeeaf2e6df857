"""A websocket-to-unix-socket bridge that also serves a static web client, run by the
launcher itself (one process less per desktop).

Apps that speak a raw protocol (a VNC server's RFB) need a web client (noVNC) and a
websocket that carries the protocol. jupyter-server-proxy's ``raw_socket_proxy``
answers every plain HTTP request with 405 (so the client cannot be served under the
same URL) and has no backpressure (the Jupyter server grows to a gigabyte behind a
slow browser). An app declares a ``WebBridge`` (``AppSpec.bridge``), and for each start
the launcher serves it on the app's private socket, on its own event loop:

* ``GET /`` sends the browser on to the client's page with the query it needs;
* every other path is a file of the client's directory (no CSP sandbox, so ES modules
  load);
* a websocket on ``/websockify`` is joined to the app's socket, with backpressure both
  ways and no permessage-deflate (which would cost the proxy hop a factor of ten):
  :func:`hpc_proxies.wsjoin.join`. What the VNC server writes in pieces goes on as one
  message when the pieces are already there (:func:`hpc_proxies.wsjoin.coalesced_chunks`).

It used to be a companion process: 26 to 29 MiB of PSS per desktop for a second Python
with aiohttp, which the launcher already has. ``python -m hpc_proxies.bridge`` still
runs one in a process of its own (the benches' direct path uses it), and
:func:`serve_until_stopped` serves other aiohttp services the same way (ParaView's).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from .pages import render_template
from .spec import WebBridge
from .wsjoin import Side, join

#: The websocket's path under the app's prefix (noVNC's default).
WEBSOCKET_PATH = "/websockify"
#: How long stopping waits for requests in progress (websockets are closed first).
STOP_GRACE = 1.0


class RunningBridge:
    """One start's bridge on the app's socket. The websockets it joined are closed when it
    stops, so a stop never waits for a browser."""

    def __init__(self, bridge: WebBridge) -> None:
        self.bridge = bridge
        self.websockets: set[web.WebSocketResponse] = set()
        self.runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=STOP_GRACE)

    async def start(self, socket_path: Path) -> None:
        """Serve on ``socket_path``, in the launch's private directory (the proxy gets it
        at the hand-over)."""
        await serve_unix(self.runner, socket_path)

    async def stop(self) -> None:
        for ws in list(self.websockets):
            await ws.close(code=1001, message=b"the app stopped")
        await self.runner.cleanup()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._start_page)
        app.router.add_get(WEBSOCKET_PATH, self._websocket)
        app.router.add_static("/", self.bridge.web_dir, follow_symlinks=True)
        return app

    async def _start_page(self, request: web.Request) -> web.Response:
        url = f"{self.bridge.index}?{self.bridge.query}"
        return web.Response(
            text=render_template("bridge_start.html", url=url), content_type="text/html"
        )

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("binary",), compress=False, max_msg_size=0)
        await ws.prepare(request)
        app_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        app_socket.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(app_socket, str(self.bridge.target))
        except OSError as err:
            app_socket.close()
            await ws.close(code=1011, message=f"cannot reach the app: {err.strerror}".encode())
            return ws
        self.websockets.add(ws)
        try:
            await join(Side.websocket(ws), Side.socket(app_socket))
        finally:
            self.websockets.discard(ws)
            app_socket.close()
            await ws.close()
        return ws


async def serve_bridge(bridge: WebBridge, socket_path: Path) -> RunningBridge:
    """Start serving ``bridge`` on ``socket_path`` (on the running event loop)."""
    running = RunningBridge(bridge)
    await running.start(socket_path)
    return running


async def serve_unix(runner: web.AppRunner, socket_path: Path) -> None:
    """Serve ``runner``'s app on a private (0600) unix socket."""
    await runner.setup()
    await web.UnixSite(runner, str(socket_path)).start()
    os.chmod(socket_path, 0o600)


async def until_stopped() -> None:
    """Return on SIGTERM, SIGINT or SIGHUP: a service in a process of its own ends."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def serve_until_stopped(
    app: web.Application, socket_path: Path, before_cleanup: Callable[[], Awaitable] | None = None
) -> None:
    """Serve ``app`` on a private (0600) unix socket until SIGTERM, SIGINT or SIGHUP."""
    runner = web.AppRunner(app, access_log=None)
    await serve_unix(runner, socket_path)
    await until_stopped()
    if before_cleanup is not None:
        await before_cleanup()
    await runner.cleanup()


async def serve_bridge_until_stopped(bridge: WebBridge, socket_path: Path) -> None:
    running = await serve_bridge(bridge, socket_path)
    await until_stopped()
    await running.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m hpc_proxies.bridge``: a bridge in a process of its own (the benches'
    direct path, or an app run by hand); the launcher serves it in-process."""
    parser = argparse.ArgumentParser(prog="python -m hpc_proxies.bridge", description=__doc__)
    parser.add_argument("--listen", required=True, type=Path, help="unix socket to serve on")
    parser.add_argument("--target", required=True, type=Path, help="unix socket to join to")
    parser.add_argument("--web", required=True, type=Path, help="directory of the web client")
    parser.add_argument("--index", required=True, help="the client's page, e.g. vnc.html")
    parser.add_argument("--query", default="", help="query string GET / sends it with")
    args = parser.parse_args(argv)
    bridge = WebBridge(args.target, args.web, args.index, args.query)
    asyncio.run(serve_bridge_until_stopped(bridge, args.listen))


if __name__ == "__main__":
    main()
