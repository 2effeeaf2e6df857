"""A websocket-to-unix-socket bridge that also serves a static web client.

    python -m hpc_proxies.bridge --listen SOCK --target RFB_SOCK --web DIR --index PAGE

Apps that speak a raw protocol (a VNC server's RFB) need a web client (noVNC) and a
websocket that carries the protocol. jupyter-server-proxy's ``raw_socket_proxy``
answers every plain HTTP request with 405 (so the client cannot be served under the
same URL) and has no backpressure (the Jupyter server grows to a gigabyte behind a
slow browser). This bridge is a companion process on the app's private socket:

* ``GET /`` sends the browser on to ``PAGE`` with the query the client needs;
* every other path is a file of ``DIR`` (no CSP sandbox, so ES modules load);
* a websocket on ``/websockify`` is joined to ``--target``, with backpressure both
  ways and no permessage-deflate (which would cost the proxy hop a factor of ten):
  :func:`hpc_proxies.wsjoin.join`. What the VNC server writes in pieces goes on as one
  message when the pieces are already there (:func:`hpc_proxies.wsjoin.coalesced_chunks`).
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
from .wsjoin import Side, join


async def serve_until_stopped(
    app: web.Application, socket_path: Path, before_cleanup: Callable[[], Awaitable] | None = None
) -> None:
    """Serve ``app`` on a private (0600) unix socket until SIGTERM, SIGINT or SIGHUP."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, str(socket_path)).start()
    os.chmod(socket_path, 0o600)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    if before_cleanup is not None:
        await before_cleanup()
    await runner.cleanup()


def make_app(target: Path, web_dir: Path, index: str, query: str) -> web.Application:
    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("binary",), compress=False, max_msg_size=0)
        await ws.prepare(request)
        app_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        app_socket.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(app_socket, str(target))
        except OSError as err:
            app_socket.close()
            await ws.close(code=1011, message=f"cannot reach the app: {err.strerror}".encode())
            return ws
        try:
            await join(Side.websocket(ws), Side.socket(app_socket))
        finally:
            app_socket.close()
            await ws.close()
        return ws

    async def start_page(request: web.Request) -> web.Response:
        body = render_template("bridge_start.html", url=f"{index}?{query}")
        return web.Response(text=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", start_page)
    app.router.add_get("/websockify", websocket)
    app.router.add_static("/", web_dir, follow_symlinks=True)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hpc_proxies.bridge", description=__doc__)
    parser.add_argument("--listen", required=True, type=Path, help="unix socket to serve on")
    parser.add_argument("--target", required=True, type=Path, help="unix socket to join to")
    parser.add_argument("--web", required=True, type=Path, help="directory of the web client")
    parser.add_argument("--index", required=True, help="the client's page, e.g. vnc.html")
    parser.add_argument("--query", default="", help="query string GET / sends it with")
    args = parser.parse_args(argv)

    app = make_app(args.target, args.web, args.index, args.query)
    asyncio.run(serve_until_stopped(app, args.listen))


if __name__ == "__main__":
    main()
