"""The ParaView service's HTTP side: the status page, its JSON API, and the views.

* ``GET /``: the status page (state, ranks, host, uptime, client, a snippet for the
  notebook, stop and restart buttons); opening it starts pvserver if it is stopped;
* ``GET api/status``, ``POST api/start|stop|restart``: JSON, used by the page and by
  ``hpc_proxies.paraview.connect()`` in a kernel;
* ``/view/<id>/…``: HTTP and websockets passed on to the interactive view that a
  kernel serves on a unix socket in ``DIR/views`` (see :mod:`.view`).

It is served on the launch's private unix socket until the launcher stops it; then
pvserver is stopped (its whole tree) before the socket goes.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ..bridge import serve_until_stopped
from ..wsjoin import Side, join
from . import ENGINES, HANDSHAKE_TIMEOUT, ISOLATION, RENDERING_MODES, page
from .service import PvserverService, RanksRefused, StartFailed
from .starter import Options

VIEW_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
#: Headers of one hop, not passed on; nor are the user's credentials for Jupyter.
HOP_HEADERS = {"connection", "keep-alive", "upgrade", "transfer-encoding", "host"}
CREDENTIALS = ("Authorization", "Cookie")


def make_app(service: PvserverService) -> web.Application:
    """The service's routes; every one is behind the user's Jupyter authentication."""

    async def index(request: web.Request) -> web.Response:
        if service.state == "stopped" and not service.user_stopped:
            service.start_soon()
        return web.Response(
            text=page.status_page(service.options.prefix),
            content_type="text/html",
            headers={"Cache-Control": "no-store"},
        )

    async def status(request: web.Request) -> web.Response:
        return web.json_response(service.status(), headers={"Cache-Control": "no-store"})

    async def started(starting: Awaitable[dict[str, Any]]) -> web.Response:
        """The status once pvserver listens, or 503 with why it did not start."""
        try:
            return web.json_response(await starting)
        except StartFailed as err:
            return web.json_response({**service.status(), "error": str(err)}, status=503)

    async def with_ranks(request: web.Request, action) -> web.Response:
        """``?ranks=N``: on N MPI ranks; a count the site does not allow is a 400."""
        asked = request.query.get("ranks")
        try:
            ranks = None if asked is None else int(asked)
            return await started(action(ranks))
        except (ValueError, RanksRefused) as err:
            why = str(err) if isinstance(err, RanksRefused) else f"ranks={asked!r}: not a number"
            return web.json_response({**service.status(), "error": why}, status=400)

    async def queued(request: web.Request, action) -> web.Response:
        """``?wait=S``: answer after S seconds at most while a job waits for Slurm (202,
        with the status saying where it is); the caller asks again."""
        asked = request.query.get("wait")
        try:
            wait = None if asked is None else float(asked)
        except ValueError:
            why = f"wait={asked!r}: not a number of seconds"
            return web.json_response({**service.status(), "error": why}, status=400)
        response = await with_ranks(request, lambda ranks: action(ranks, wait))
        if response.status == 200 and service.state == "starting":
            response.set_status(202)
        return response

    async def start(request: web.Request) -> web.Response:
        return await queued(request, service.ensure_started)

    async def stop(request: web.Request) -> web.Response:
        await service.stop()
        service.user_stopped = True
        return web.json_response(service.status())

    async def restart(request: web.Request) -> web.Response:
        return await queued(request, service.restart)

    async def view(request: web.Request) -> web.StreamResponse:
        view_id = request.match_info["view"]
        target = service.views / f"{view_id}.sock"
        if not VIEW_ID.match(view_id) or not target.exists():
            return web.Response(status=404, text=page.view_gone_page(), content_type="text/html")
        return await proxy_to_unix(request, target, "/" + request.match_info["path"])

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/", index)
    app.router.add_get("/api/status", status)
    app.router.add_post("/api/start", start)
    app.router.add_post("/api/stop", stop)
    app.router.add_post("/api/restart", restart)
    app.router.add_route("*", "/view/{view}/{path:.*}", view)
    return app


async def proxy_to_unix(request: web.Request, target: Path, path: str) -> web.StreamResponse:
    """Pass one request (or a websocket) on to a server on a unix socket, without the
    user's Jupyter credentials: the view's kernel never needs them."""
    connector = aiohttp.UnixConnector(path=str(target))
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"http://view{path}"
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await _proxy_websocket(request, session, url)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        for credential in CREDENTIALS:
            headers.pop(credential, None)
        try:
            async with session.request(
                request.method,
                url,
                params=request.query,
                headers=headers,
                data=await request.read(),
            ) as upstream:
                body = await upstream.read()
                out = {
                    k: v
                    for k, v in upstream.headers.items()
                    if k.lower() not in HOP_HEADERS | {"content-length", "content-encoding"}
                }
                return web.Response(status=upstream.status, body=body, headers=out)
        except aiohttp.ClientError:
            return web.Response(status=502, text=page.view_gone_page(), content_type="text/html")


async def _proxy_websocket(
    request: web.Request, session: aiohttp.ClientSession, url: str
) -> web.WebSocketResponse:
    """The browser's websocket joined to one to the view (no compression, no size cap)."""
    browser = web.WebSocketResponse(compress=False, max_msg_size=0)
    await browser.prepare(request)
    try:
        upstream = await session.ws_connect(url, params=request.query, max_msg_size=0)
    except aiohttp.ClientError:
        await browser.close(code=1011, message=b"the view's kernel is gone")
        return browser
    try:
        await join(Side.websocket(browser), Side.websocket(upstream))
    finally:
        await upstream.close()
        await browser.close()
    return browser


def parse_options(argv: list[str] | None = None) -> tuple[Path, Options]:
    """The socket to serve on, and the service's options, from the launcher's argv."""
    parser = argparse.ArgumentParser(prog="python -m hpc_proxies.paraview.service")
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--dir", required=True, type=Path, help="private directory")
    parser.add_argument("--prefix", required=True, help="public URL prefix of the tile")
    parser.add_argument("--python", required=True, help="Python that imports ParaView")
    parser.add_argument("--rendering", default="xvfb", choices=RENDERING_MODES)
    parser.add_argument("--display", default="")
    parser.add_argument("--egl-device", type=int, default=0)
    parser.add_argument("--xvfb", default="Xvfb")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--handshake-timeout", type=float, default=HANDSHAKE_TIMEOUT)
    parser.add_argument("--isolate-network", default="auto", choices=ISOLATION)
    parser.add_argument("--engine", default="local", choices=ENGINES)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--max-ranks", type=int, default=4)
    parser.add_argument("--mpiexec", default="mpiexec")
    parser.add_argument("--partition", default="")
    parser.add_argument("--account", default="")
    parser.add_argument("--time", default="1:00:00")
    parser.add_argument("--extra-args", default="")
    parser.add_argument("--job-script", default="")
    parser.add_argument("--job-directory", default="~/.hpc-proxies/paraview-jobs")
    parser.add_argument("--callback-address", default="")
    args = parser.parse_args(argv)
    options = Options(
        directory=args.dir,
        prefix=args.prefix,
        python=args.python,
        rendering=args.rendering,
        display=args.display,
        egl_device=args.egl_device,
        xvfb=args.xvfb,
        timeout=args.timeout,
        handshake_timeout=args.handshake_timeout,
        isolate_network=args.isolate_network,
        engine=args.engine,
        ranks=args.ranks,
        max_ranks=args.max_ranks,
        mpiexec=args.mpiexec,
        partition=args.partition,
        account=args.account,
        time=args.time,
        extra_args=args.extra_args,
        job_script=args.job_script,
        job_directory=args.job_directory,
        callback_address=args.callback_address,
    )
    return args.socket, options


def main(argv: list[str] | None = None) -> None:
    """Serve the service until SIGTERM, SIGINT or SIGHUP; then stop pvserver."""
    socket_path, options = parse_options(argv)

    async def serve() -> None:
        service = PvserverService(options)
        await serve_until_stopped(
            make_app(service),
            socket_path,
            before_cleanup=lambda: service.stop("The ParaView service stopped."),
        )

    asyncio.run(serve())
