"""The ParaView tile's service: this user's pvserver, its status page, and view routing.

    python -m hpc_proxies.paraview.service --socket SOCK --dir DIR --prefix URL ...

It is the "app" the hpc-proxies launcher runs for the ``paraview`` entry point, on the
launch's private unix socket, so everything below is reached only through the
user's authenticated Jupyter URL:

* ``GET /``: the status page (state, ranks, host, uptime, client, a snippet for the
  notebook, stop and restart buttons); opening it starts pvserver if it is stopped;
* ``GET api/status``, ``POST api/start|stop|restart``: JSON, used by the page and by
  ``hpc_proxies.paraview.connect()`` in a kernel;
* ``/view/<id>/…``: HTTP and websockets passed on to the interactive view that a
  kernel serves on a unix socket in ``DIR/views`` (see :mod:`.view`).

pvserver itself is started by an :class:`Engine`; :class:`LocalEngine` runs one
serial server on this node, each start with a new connect-id in a 0600 file and,
for GLX builds, a private Xvfb. A later engine (MPI, the batch scheduler) replaces it.
pvserver exits when its client disconnects; the next ``api/start`` starts it again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import re
import secrets
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from .. import netns, xdisplay
from ..bridge import serve_until_stopped, until_either_ends
from ..runtime import ensure_private_dir, fresh_private_dir, remove_tree, write_private_file
from . import page
from .server import EXIT_NO_PARAVIEW, MARK

SERVER_SCRIPT = Path(__file__).with_name("server.py")
VIEW_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
#: A client that presents a wrong connect-id is refused; after this many refusals the
#: server is restarted on a new port with a new id, so the id cannot be guessed.
MAX_REFUSALS = 3
#: Connections from other users refused by the relay, kept across restarts and new ids
#: so that the user sees them on the status page.
REFUSED_KEPT = 20
#: A client let through the relay has this long to finish ParaView's handshake: pvserver
#: serves one client and waits on the first, so one that stalls would hold everyone.
HANDSHAKE_TIMEOUT = 15.0
TAIL_LINES = 40
INNER_ADDRESS_LINES = ("Connection URL:", "Accepting connection(s):")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Options:
    """What the launcher passes on (from the site configuration); nothing secret."""

    directory: Path
    prefix: str
    python: str
    rendering: str = "xvfb"  # xvfb | display | egl
    display: str = ""
    egl_device: int = 0
    xvfb: str = "Xvfb"
    timeout: float = 60.0
    isolate_network: str = "auto"  # auto | required | off


@dataclass
class Run:
    """One start of pvserver."""

    proc: asyncio.subprocess.Process
    workdir: Path
    connect_id_file: Path
    xserver: xdisplay.XServer | None
    started: float = field(default_factory=time.time)
    port: int | None = None
    connected: bool = False
    connected_event: asyncio.Event = field(default_factory=asyncio.Event)
    refusals: int = 0
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    follower: asyncio.Task[None] | None = None  # reads its output; cleans up at its exit
    #: The keeper's unix socket when pvserver runs in a private network namespace.
    connector: Path | None = None
    #: Where clients reach it, for the status page and the log.
    network: str = ""
    relay: netns.LoopbackRelay | None = None


class StartFailed(RuntimeError):
    """pvserver did not come up; the message says why."""


class Engine:
    """How pvserver is started: the replaceable launch step."""

    ranks = 1

    async def start(self, options: Options, workdir: Path, connect_id_file: Path) -> Run:
        raise NotImplementedError


class LocalEngine(Engine):
    """One serial pvserver on this node, its X display private to this launch, and its
    TCP port (on every interface: ParaView 5.11 has no bind address) inside a network
    namespace of its own where the kernel allows one (:mod:`hpc_proxies.netns`)."""

    async def start(self, options: Options, workdir: Path, connect_id_file: Path) -> Run:
        env = dict(os.environ)
        pv_args = ["--no-mpi"]
        xserver = None
        if options.rendering == "xvfb":
            try:
                xserver = await asyncio.to_thread(xdisplay.start_xvfb, workdir, options.xvfb)
            except (xdisplay.XServerError, OSError) as err:
                raise StartFailed(f"the private X server (Xvfb) did not start: {err}") from err
            env.update(xserver.environ())
        elif options.rendering == "display":
            if options.display:
                env["DISPLAY"] = options.display
        elif options.rendering == "egl":
            env.pop("DISPLAY", None)
            pv_args += ["--force-offscreen-rendering", f"--displays={options.egl_device}"]
        argv = [options.python, str(SERVER_SCRIPT), "--connect-id-file", str(connect_id_file)]
        argv += [f"--pv-arg={arg}" for arg in pv_args]
        try:
            if options.isolate_network != "off":
                connector = workdir / "connector.sock"
                proc = await _spawn(netns.keeper_argv(connector, argv), env, workdir)
                unavailable = await _namespace_refusal(proc, options.timeout)
                if unavailable is None:
                    return Run(
                        proc,
                        workdir,
                        connect_id_file,
                        xserver,
                        connector=connector,
                        network="127.0.0.1 only (pvserver is in a private network namespace)",
                    )
                if options.isolate_network == "required":
                    raise StartFailed(
                        f"pvserver must run in a private network namespace (isolate_network "
                        f"= 'required'), but {unavailable}"
                    )
                network = f"every interface: {unavailable}"
            else:
                network = "every interface (isolate_network = 'off')"
            proc = await _spawn(argv, env, workdir)
            return Run(proc, workdir, connect_id_file, xserver, network=network)
        except OSError as err:
            if xserver is not None:
                xserver.stop()
            raise StartFailed(f"starting {argv[0]} failed: {err}") from err
        except StartFailed:
            if xserver is not None:
                xserver.stop()
            raise


async def _spawn(argv: list[str], env: dict[str, str], workdir: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        cwd=str(workdir),
    )


async def _namespace_refusal(proc: asyncio.subprocess.Process, timeout: float) -> str | None:
    """None once the keeper is in its namespace; otherwise why it is not."""
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout)).decode().strip()
    except asyncio.TimeoutError:
        line = ""
    if line == f"{netns.MARK} ready":
        return None
    await terminate_session(proc)
    rest = (await proc.stdout.read()).decode(errors="replace").strip()
    reason = line.removeprefix(f"{netns.MARK} unavailable").strip() or rest
    return reason or f"the namespace keeper exited (code {proc.returncode})"


class PvserverService:
    """State of this user's pvserver, and the start/stop operations on it."""

    def __init__(self, options: Options, engine: Engine | None = None):
        self.options = options
        self.engine = engine or LocalEngine()
        self.run: Run | None = None
        self.state = "stopped"  # stopped | starting | running | failed | stopping
        self.message = "Not started yet."
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.user_stopped = False
        self.starts = 0
        self.refused: deque[netns.Refusal] = deque(maxlen=REFUSED_KEPT)
        self.refused_total = 0
        self.stalls = 0  # handshakes that timed out
        #: Held while pvserver is started or stopped, so that each start or stop sees the
        #: state the previous one left (never a half-stopped run).
        self.lock = asyncio.Lock()
        self.views = ensure_private_dir(options.directory / "views")

    # ---------------------------------------------------------------- status
    def status(self) -> dict:
        run = self.run
        running = self.state == "running" and run is not None
        return {
            "state": self.state,
            "message": self.message,
            "ranks": self.engine.ranks if running else 0,
            "host": socket.gethostname(),
            "port": run.port if running else None,
            "uptime": round(time.time() - run.started, 1) if running else None,
            "client_connected": bool(running and run.connected),
            "connect_id_file": str(run.connect_id_file) if running else None,
            "views_dir": str(self.views),
            "prefix": self.options.prefix,
            "rendering": self.options.rendering,
            "display": run.xserver.display if running and run.xserver else None,
            "network": run.network if running else None,
            "stalled_handshakes": self.stalls,
            "refused": {
                "total": self.refused_total,
                "latest": [
                    {"time": r.when, "uid": r.uid, "user": _user_name(r.uid)}
                    for r in reversed(self.refused)
                ],
            },
            "tail": list(self.tail)[-15:],
        }

    def note_refusal(self, refusal: netns.Refusal) -> None:
        """The relay refused another user's connection: keep it and say so."""
        self.refused.append(refusal)
        self.refused_total += 1
        who = _user_name(refusal.uid) or "an unknown owner"
        uid = "" if refusal.uid is None else f" (uid {refusal.uid})"
        self.log(
            f"refused a connection from {who}{uid}: only your own processes may "
            "connect to your pvserver"
        )

    def log(self, line: str) -> None:
        line = ANSI_ESCAPE.sub("", line)
        self.tail.append(line)
        sys.stderr.write(f"{line}\n")  # the launcher prefixes and forwards it
        sys.stderr.flush()

    # ---------------------------------------------------------------- start
    async def ensure_started(self) -> dict:
        """Start pvserver unless it runs; wait until it listens (or fails)."""
        async with self.lock:
            if self.state not in ("starting", "running") or self.run is None:
                await self._start()
            run = self.run
        return await self._until_listening(run)

    async def _until_listening(self, run: Run | None) -> dict:
        if run is None:
            raise StartFailed(self.message)
        try:
            await asyncio.wait_for(run.listening.wait(), self.options.timeout)
        except asyncio.TimeoutError:
            await self.stop(f"pvserver did not listen within {self.options.timeout:.0f} s.")
            self.state = "failed"
            raise StartFailed(self.message) from None
        if self.run is not run or run.port is None:
            raise StartFailed(self.message)
        return self.status()

    async def _start(self) -> None:
        self.user_stopped = False
        self.state, self.message = "starting", "Starting pvserver…"
        self.tail.clear()
        # A directory per start: the previous run's clean-up must not touch this one.
        self.starts += 1
        workdir = fresh_private_dir(self.options.directory / f"pvserver-{self.starts}")
        # ParaView's connect-id is a positive 32-bit int; it lives only in this file.
        connect_id_file = write_private_file(
            workdir / "connect-id", str(secrets.randbelow(2**31 - 2) + 1)
        )
        try:
            run = await self.engine.start(self.options, workdir, connect_id_file)
        except StartFailed as err:
            self.state, self.message = "failed", str(err)
            self.log(str(err))
            remove_tree(workdir)
            return
        self.run = run
        self.log(f"started pvserver (pid {run.proc.pid})")
        run.follower = asyncio.get_running_loop().create_task(self._follow(run))

    async def _follow(self, run: Run) -> None:
        """Read pvserver's output: its state lines, refusals, and its exit."""
        assert run.proc.stdout is not None
        async for raw in run.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line.startswith(MARK):
                words = line.split()[1:]
                if words[:1] == ["listening"] and self.run is run:
                    await self._listening(run, int(words[1]))
                elif words[:1] == ["connected"] and self.run is run:
                    run.connected = True
                    run.connected_event.set()
                    self.message = "A client is connected."
                    self.log("client connected")
                continue
            if run.connector is not None and line.startswith(INNER_ADDRESS_LINES):
                continue  # pvserver names its port inside the namespace: not for clients
            self.log(line)
            if "connection ids do not match" in line:
                run.refusals += 1
                if run.refusals >= MAX_REFUSALS and self.run is run:
                    self.log(f"{run.refusals} clients with a wrong id: new port and id")
                    asyncio.get_running_loop().create_task(self.restart())
        code = await run.proc.wait()
        await self._stopped(run, code)

    async def _listening(self, run: Run, port: int) -> None:
        """pvserver listens: clients reach it on ``port``, or through a loopback relay."""
        if run.connector is not None:
            run.relay = await netns.LoopbackRelay(
                run.connector,
                port,
                on_refusal=self.note_refusal,
                on_join=lambda ended: self._watch_handshake(run, ended),
            ).start()
            port = run.relay.port
        run.port = port
        self.state, self.message = "running", "Waiting for a client."
        run.listening.set()
        self.log(f"listening on port {run.port}, reachable on {run.network}")

    def _watch_handshake(self, run: Run, ended: asyncio.Event) -> None:
        """A client came through the relay: it must finish the handshake (pvserver says
        "connected") or leave within HANDSHAKE_TIMEOUT, or pvserver starts anew."""
        if not run.connected:
            asyncio.get_running_loop().create_task(self._handshake_deadline(run, ended))

    async def _handshake_deadline(self, run: Run, ended: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(e.wait()) for e in (run.connected_event, ended)]
        _done, pending = await asyncio.wait(
            waits, timeout=HANDSHAKE_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        for wait in pending:
            wait.cancel()
        if run.connected or ended.is_set() or self.run is not run:
            return
        self.log(
            f"a connection to pvserver did not finish ParaView's handshake within "
            f"{HANDSHAKE_TIMEOUT:.0f} s and held it; starting pvserver anew"
        )
        self.stalls += 1
        with contextlib.suppress(StartFailed):  # the status says why, to every client
            await self.restart()

    async def _stopped(self, run: Run, code: int) -> None:
        """The one clean-up of a run, however it ended: its relay, X server and files go."""
        if run.relay is not None:
            await run.relay.close()
        if run.xserver is not None:
            await asyncio.to_thread(run.xserver.stop)
        remove_tree(run.workdir)
        if self.run is not run:
            return
        self.run = None
        run.listening.set()  # wake waiters: they see the failure
        if self.state == "stopping":
            return
        if not run.connected:
            self.state = "failed"
            if code == EXIT_NO_PARAVIEW:
                self.message = "ParaView's Python modules cannot be imported (see the log below)."
            else:
                self.message = f"pvserver exited (code {code}) before a client connected."
        else:
            self.state = "stopped"
            self.message = (
                "The client disconnected, so pvserver stopped; connect() starts it again."
            )
        self.log(f"pvserver exited with code {code}")

    # ---------------------------------------------------------------- stop
    async def stop(self, message: str = "Stopped from the status page.") -> None:
        async with self.lock:
            await self._stop(message)

    async def _stop(self, message: str) -> None:
        run = self.run
        if run is None:
            if self.state in ("starting", "running"):
                self.state = "stopped"
            self.message = message
            return
        self.state, self.message = "stopping", message
        await terminate_session(run.proc)
        if run.follower is not None:
            await run.follower  # it sees the exit and cleans up
        self.state, self.message = "stopped", message

    async def restart(self) -> dict:
        """Stop and start as one step: a start asked for meanwhile waits for it, so it
        neither starts a second pvserver nor has its own marked stopped."""
        async with self.lock:
            await self._stop("Restarting…")
            await self._start()
            run = self.run
        return await self._until_listening(run)


def _user_name(uid: int | None) -> str | None:
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


async def terminate_session(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    """SIGTERM the process's session (pvserver and anything it started), then SIGKILL."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)
        try:
            await asyncio.wait_for(proc.wait(), grace)
            return
        except asyncio.TimeoutError:
            continue


# -------------------------------------------------------------------- web
def make_app(service: PvserverService) -> web.Application:
    async def index(request: web.Request) -> web.Response:
        if service.state == "stopped" and not service.user_stopped:
            asyncio.get_running_loop().create_task(_start_quietly(service))
        return web.Response(
            text=page.status_page(service.options.prefix),
            content_type="text/html",
            headers={"Cache-Control": "no-store"},
        )

    async def status(request: web.Request) -> web.Response:
        return web.json_response(service.status(), headers={"Cache-Control": "no-store"})

    async def started(starting) -> web.Response:
        """The status once pvserver listens, or 503 with why it did not start."""
        try:
            return web.json_response(await starting)
        except StartFailed as err:
            return web.json_response({**service.status(), "error": str(err)}, status=503)

    async def start(request: web.Request) -> web.Response:
        return await started(service.ensure_started())

    async def stop(request: web.Request) -> web.Response:
        await service.stop()
        service.user_stopped = True
        return web.json_response(service.status())

    async def restart(request: web.Request) -> web.Response:
        return await started(service.restart())

    async def view(request: web.Request) -> web.StreamResponse:
        view_id = request.match_info["view"]
        target = service.views / f"{view_id}.sock"
        if not VIEW_ID.match(view_id) or not target.exists():
            return web.Response(
                status=404,
                text=page.view_gone_page(),
                content_type="text/html",
            )
        return await proxy_to_unix(request, target, "/" + request.match_info["path"])

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/", index)
    app.router.add_get("/api/status", status)
    app.router.add_post("/api/start", start)
    app.router.add_post("/api/stop", stop)
    app.router.add_post("/api/restart", restart)
    app.router.add_route("*", "/view/{view}/{path:.*}", view)
    return app


async def _start_quietly(service: PvserverService) -> None:
    with contextlib.suppress(StartFailed):
        await service.ensure_started()


HOP_HEADERS = {"connection", "keep-alive", "upgrade", "transfer-encoding", "host"}


async def proxy_to_unix(request: web.Request, target: Path, path: str) -> web.StreamResponse:
    """Pass one request (or a websocket) on to a server on a unix socket."""
    connector = aiohttp.UnixConnector(path=str(target))
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"http://view{path}"
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await _proxy_websocket(request, session, url)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        headers.pop("Authorization", None)
        headers.pop("Cookie", None)
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
    browser = web.WebSocketResponse(compress=False, max_msg_size=0)
    await browser.prepare(request)
    try:
        upstream = await session.ws_connect(url, params=request.query, max_msg_size=0)
    except aiohttp.ClientError:
        await browser.close(code=1011, message=b"the view's kernel is gone")
        return browser

    async def pump(source, sink) -> None:
        async for msg in source:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await sink.send_str(msg.data)
            else:
                break

    try:
        await until_either_ends(pump(browser, upstream), pump(upstream, browser))
    finally:
        await upstream.close()
        await browser.close()
    return browser


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hpc_proxies.paraview.service")
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--dir", required=True, type=Path, help="private directory")
    parser.add_argument("--prefix", required=True, help="public URL prefix of the tile")
    parser.add_argument("--python", required=True, help="Python that imports ParaView")
    parser.add_argument("--rendering", default="xvfb", choices=("xvfb", "display", "egl"))
    parser.add_argument("--display", default="")
    parser.add_argument("--egl-device", type=int, default=0)
    parser.add_argument("--xvfb", default="Xvfb")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--isolate-network", default="auto", choices=("auto", "required", "off"))
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
        isolate_network=args.isolate_network,
    )

    async def serve() -> None:
        service = PvserverService(options)
        await serve_until_stopped(
            make_app(service),
            args.socket,
            before_cleanup=lambda: service.stop("The ParaView service stopped."),
        )

    asyncio.run(serve())


if __name__ == "__main__":
    main()
