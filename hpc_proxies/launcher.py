"""The per-launch supervisor that jupyter-server-proxy starts in place of an app.

    python -m hpc_proxies.launcher --app xpra --socket DIR/socket --prefix /user/me/xpra/

jupyter-server-proxy proxies well but supervises poorly: it signals only its direct
child, keeps an app that exited cleanly as "running" until Jupyter restarts, notices a
crash during start-up only at the end of its timeout, shows a blank page while an app
starts, and never removes its socket directories. This small process closes all of
those gaps in one place, and stays up for as long as the Jupyter server does:

* it serves a progress page on the launch's socket at once, starts the app on a
  private socket beside it, and, when the app answers, atomically renames the app's
  socket over its own, so the proxy's next request reaches the app;
* when the app exits it takes the socket back: the next request starts the app again,
  and a start-up failure becomes a readable page with the app's last output lines;
* the app runs in a session of its own, and this process is a child subreaper, so
  stopping reaches every descendant (SIGTERM, then SIGKILL after a grace period);
* on SIGTERM/SIGINT/SIGHUP, or when the Jupyter server dies, it stops everything and
  removes the runtime directory;
* an app with URL parameters (``/tensorboard/?logdir=DIR``) is started with the value a
  request chose and relaunched when a request chooses another; a bad value gets a page.
  While the app runs, its requests do not reach this process, so the Jupyter server
  passes such a choice on through a control socket beside the launch socket
  (``hpc_proxies.serverproxy``), one JSON line each way. A new value relaunches the
  app only if the request cannot come from another web site (``request_origin``);
  otherwise the user gets a page that asks first.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from . import config, pages, procs
from .apps import load_app
from .executables import MissingExecutables, app_env, resolve_app, setup_argv, supported_flags
from .runtime import (
    UnsafeRuntimeDir,
    ensure_private_dir,
    fresh_private_dir,
    remove_tree,
    write_private_file,
    write_secret,
)
from .spec import AppSpec, CannotStart, Launch, Parameter

APP_DIR = "app"
APP_SOCKET = "app.sock"
#: Beside the launch socket, for apps with URL parameters: see the module docstring.
CONTROL_SOCKET = "control"
TAIL_LINES = 40
READY_POLL = 0.05
#: Longer log lines (an app's output, a value from a URL) are cut: one request or one
#: runaway line must not write kilobytes into the Jupyter server's log.
LOG_LINE_MAX = 2000
#: The origins (``request_origin``) whose new URL parameters relaunch an app at once;
#: no page on another site can make a request that has one of them.
MAY_RELAUNCH = frozenset({"same-origin", "none", "token", "confirmed"})


@dataclass
class Failure:
    heading: str
    paragraphs: list[str]
    status: int
    tail: list[str]
    permanent: bool = False  # shown for every request (configuration), not just once


class Launcher:
    """Supervises one app for one Jupyter server; see the module docstring."""

    def __init__(
        self,
        app: AppSpec,
        socket_path: Path,
        prefix: str,
        parent_pid: int | None,
        site: config.SiteConfig | None = None,
    ):
        self.app = app
        self.site = site if site is not None else config.load()
        # An app outside the registry (a site's own AppSpec) runs with its defaults.
        self.settings = self.site.apps.get(app.name) or config.AppSettings(
            app.name, config.app_defaults(app)
        )
        self.socket_path = socket_path
        self.runtime_dir = socket_path.parent
        self.app_dir = self.runtime_dir / APP_DIR
        self.prefix = prefix
        self.parent_pid = parent_pid
        self.state = "stopped"  # stopped | starting | running | failed | stopping
        self.proc: subprocess.Popen[bytes] | None = None  # the app's main process
        self.companions: list[subprocess.Popen[bytes]] = []  # processes beside it
        self.started_at = 0.0
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.failure: Failure | None = None
        self.note = ""
        self.cleaning = False  # the previous run's processes are being stopped
        self.start_wanted = False  # a request came while cleaning: start after it
        self.server: socket.socket | None = None  # our listener on the launch socket
        self.done = asyncio.Event()
        self.exit_status = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._partial = b""
        self.chosen: dict[str, str] = {}  # URL parameters a request chose (resolved)
        self.current: dict[str, str] = {}  # the parameters of the latest start
        self.generation = 0  # counts starts: a start overtaken by a restart gives up
        self.control: asyncio.AbstractServer | None = None

    @property
    def title(self) -> str:
        return str(self.settings["title"])

    @property
    def home_url(self) -> str:
        return pages.home_url(self.prefix)

    @property
    def timeout(self) -> float:
        return float(self.settings["timeout"])  # type: ignore[arg-type]

    def failure_is_permanent(self) -> bool:
        return self.failure is not None and self.failure.permanent

    def refuse_by_configuration(self) -> bool:
        """An invalid site configuration or a disabled app: a page for every request."""
        site = self.site
        if site.error is not None:
            problems = "".join(f"<li><code>{escape(p)}</code></li>" for p in site.error.problems)
            self.fail(
                "is unavailable: the site configuration is invalid",
                [
                    "Every hpc-proxies app is disabled until the site configuration is "
                    f"fixed:<ul>{problems}</ul>",
                    "Administrators: check the file with <code>hpc-proxies check</code>, "
                    "then restart the Jupyter server.",
                ],
                status=503,
                permanent=True,
            )
            return True
        # An app outside the registry (a site's own AppSpec) has no settings to disable it.
        reason = site.disabled_reason(self.app.name) if self.app.name in site.apps else None
        if reason is not None:
            self.fail(
                "is disabled here",
                [
                    f"{escape(self.title)} is {escape(reason)}.",
                    "Ask your HPC centre if you need it on this system.",
                ],
                status=403,
                permanent=True,
            )
            return True
        return False

    # ---------------------------------------------------------------- logging
    def log(self, message: str) -> None:
        message = pages.shorten(message, LOG_LINE_MAX)
        sys.stderr.write(f"[hpc-proxies {self.app.name}] {message}\n")
        sys.stderr.flush()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- our socket
    async def listen(self) -> None:
        """Serve our pages on the launch socket (taking it back from a dead app)."""
        if self.server is not None:
            return
        self.socket_path.unlink(missing_ok=True)
        # Our own listening socket, not asyncio's server: at the hand-over to the app,
        # every connection that already reached us must still be answered. (Closing an
        # asyncio server while it is accepting leaked such a connection, unanswered.)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        os.chmod(self.socket_path, 0o600)
        listener.listen(128)
        listener.setblocking(False)
        self.server = listener
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept_waiting, listener)

    def _accept_waiting(self, listener: socket.socket) -> None:
        """Answer every connection waiting on our socket."""
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                self.log(f"accepting a connection failed: {err}")
                return
            self._spawn(self._serve(conn))

    async def _serve(self, conn: socket.socket) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=conn)
        await self.handle(reader, writer)

    def stop_listening(self) -> None:
        """Stop serving on the launch socket: its path is the app's socket by now, so no
        new connection reaches us; the ones already queued are still answered."""
        if self.server is None:
            return
        listener, self.server = self.server, None
        asyncio.get_running_loop().remove_reader(listener.fileno())
        self._accept_waiting(listener)
        listener.close()

    # ---------------------------------------------------------------- the app
    def start_app(self) -> None:
        """Start the app (the work happens in :meth:`launch`); the progress page shows at once."""
        if self.state in ("starting", "running", "stopping") or self.failure_is_permanent():
            return
        self.state, self.started_at = "starting", time.monotonic()
        self.tail.clear()
        self.failure = None
        if self.cleaning:
            self.start_wanted = True  # the previous run's processes are still being stopped
            return
        self.generation += 1
        self._spawn(self.launch(self.generation))

    def is_current(self, generation: int) -> bool:
        """The start ``generation`` is still wanted (no stop, failure or restart since)."""
        return self.state == "starting" and generation == self.generation

    async def launch(self, generation: int = 0) -> None:
        """Look up the programs (after the site's setup snippet), check the app's URL
        parameters and the flags its program has, prepare, and exec the app."""
        generation = generation or self.generation
        settings = self.settings
        env = app_env(settings.values)
        try:
            executables = await asyncio.to_thread(resolve_app, self.app, settings.values, env)
            params = await self.resolve_params()
            flags = await self.probe_flags(executables, env)
        except MissingExecutables as missing:
            if self.is_current(generation):
                self.fail_missing(missing)
            return
        except CannotStart as cannot:
            if self.is_current(generation):
                self.fail(cannot.heading, cannot.paragraphs, cannot.status)
            return
        if not self.is_current(generation):
            return
        self.current = params
        argv: list[str] = [self.app.name]
        try:
            launch = prepare_start(
                self.app,
                self.runtime_dir,
                self.app_dir,
                self.prefix,
                settings.values,
                executables,
                params=params,
                flags=flags,
            )
            env = start_env(self.app, launch, env)
            argv = self.app.command(launch)
            self.proc = self._popen(setup_argv(str(settings["setup"]), argv), env)
            for companion in self.app.companions(launch) if self.app.companions else []:
                argv = companion
                self.companions.append(self._popen(companion, env))
        except CannotStart as cannot:
            self.fail(cannot.heading, cannot.paragraphs, cannot.status)
            await self.stop_app()
            return
        except (OSError, subprocess.SubprocessError) as err:
            self.fail(
                "could not be started",
                [f"Starting <code>{escape(argv[0])}</code> failed: {escape(str(err))}"],
            )
            await self.stop_app()
            return
        await self.wait_ready(launch, self.proc, generation)

    async def resolve_params(self) -> dict[str, str]:
        """This start's URL parameters: what a request chose, else the site's default."""
        params = {}
        for param in self.app.parameters:
            value = self.chosen.get(param.name) or param.default(self.settings.values)
            try:
                params[param.name] = await asyncio.to_thread(param.resolve, value)
            except ValueError as err:
                raise CannotStart(*self.parameter_problem(param, value, str(err))) from None
        return params

    def parameter_problem(
        self, param: Parameter, value: str, message: str
    ) -> tuple[str, list[str], int]:
        """A page's heading, paragraphs and status for a bad value, with a form to choose
        another (the user has no terminal to fix it with)."""
        example = f"{self.prefix}?{param.name}=…"
        form = (
            "<form method='get' action='' class='actions'>"
            f"<label>Open another {escape(param.label)}: "
            f"<input name='{escape(param.name)}' size='48' "
            f"value='{escape(value[: pages.SHOWN_MAX])}'></label>"
            "<button type='submit'>Open</button></form>"
        )
        return (
            f"cannot open this {param.label}",
            [
                f"{escape(message)}.",
                form,
                f"Any {escape(param.label)} can also be opened from the address bar: "
                f"<code>{escape(example)}</code>.",
            ],
            404,
        )

    async def probe_flags(self, executables: dict[str, str], env: dict[str, str]) -> frozenset[str]:
        """Which of the app's flags its installed program has; a page if a required one
        is missing (never a start that fails on an unknown option)."""
        if not self.app.flags:
            return frozenset()
        main = next(iter(executables.values()))
        found, text = await asyncio.to_thread(
            supported_flags,
            main,
            [flag.name for flag in self.app.flags],
            self.app.help_args,
            str(self.settings["setup"]),
            env,
        )
        missing = [flag for flag in self.app.flags if flag.required and flag.name not in found]
        if missing:
            self.tail.extend(text.strip().splitlines()[-TAIL_LINES:])
            asked = " ".join([main, *self.app.help_args])
            raise CannotStart(
                "cannot run with the version installed here",
                [
                    f"<code>{escape(asked)}</code> does not list "
                    + " or ".join(f"<code>{escape(flag.name)}</code>" for flag in missing)
                    + ".",
                    *(escape(flag.required) for flag in missing),
                    "Administrators: install a newer version, or point the site "
                    "configuration's <code>executable</code> (or <code>setup</code>) at one.",
                ],
            )
        omitted = [flag.name for flag in self.app.flags if flag.name not in found]
        if omitted:
            self.log(f"{main} does not list {', '.join(omitted)}: starting without them")
        return found

    def _popen(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start one process of the app in a session of its own, its output to our log."""
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
        self.log(f"started pid {proc.pid}: {' '.join(argv)}")
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        asyncio.get_running_loop().add_reader(proc.stdout.fileno(), self._read_output, proc)
        return proc

    def _read_output(self, proc: subprocess.Popen[bytes]) -> None:
        """Forward the app's output to the Jupyter log and keep its last lines."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            asyncio.get_running_loop().remove_reader(fd)
            proc.stdout.close()
            chunk, self._partial = self._partial + b"\n", b""
            if chunk.strip() == b"":
                return
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            line = raw.decode(errors="replace").rstrip("\r")
            self.tail.append(line)
            self.log(line)

    async def wait_ready(
        self, launch: Launch, proc: subprocess.Popen[bytes], generation: int = 0
    ) -> None:
        """Poll the app's own socket until it answers HTTP, it dies, or time runs out."""
        generation = generation or self.generation
        deadline = self.started_at + self.timeout
        while self.is_current(generation) and self.proc is proc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.fail(
                    "did not start in time",
                    [
                        f"<code>{escape(self.title)}</code> did not answer on its socket "
                        f"within {self.timeout:.0f} s, so it was stopped.",
                        "If the system is busy, the site configuration can raise the "
                        "app's <code>timeout</code>.",
                    ],
                )
                self.cleanup_after_app()
                return
            if await http_answers(
                launch.socket, self.app.ready_path, min(remaining, 5.0)
            ) and await self.banners_answer(launch, min(remaining, 5.0)):
                if self.is_current(generation) and self.proc is proc:
                    os.rename(launch.socket, self.socket_path)
                    self.stop_listening()
                    self.state = "running"
                    self.note = ""
                    self.log(f"ready after {time.monotonic() - self.started_at:.2f} s")
                return
            await asyncio.sleep(READY_POLL)

    async def banners_answer(self, launch: Launch, timeout: float) -> bool:
        """The app's other sockets (e.g. a VNC server's) greet with their banners."""
        for path, banner in self.app.ready_banners(launch) if self.app.ready_banners else []:
            if not await greets(path, banner, timeout):
                return False
        return True

    def on_app_exit(self, code: int) -> None:
        """The app's main process ended: report it, clean up, and take the socket back."""
        what = f"exit code {code}" if code >= 0 else f"signal {-code}"
        if self.state == "starting":
            self.fail(
                "stopped during start-up",
                [
                    f"<code>{escape(self.title)}</code> exited ({escape(what)}) "
                    "before it was ready.",
                ],
            )
        elif self.state == "running":
            self.log(f"exited ({what}); the next request starts it again")
            self.note = f"The previous session ended ({what})."
            self.state = "stopped"
        else:
            return
        self.cleanup_after_app()

    def cleanup_after_app(self) -> None:
        """Answer on our socket at once, stop what the app left, then start again if asked."""
        self.cleaning = True

        async def cleanup() -> None:
            try:
                if self.state != "stopping":
                    await self.listen()
                await self.stop_app()
            finally:
                self.cleaning = False
            if self.start_wanted and self.state == "starting":
                self.start_wanted = False
                self.state = "stopped"
                self.start_app()

        self._spawn(cleanup())

    async def stop_app(self) -> None:
        """Stop the app and everything it started, then remove its private files."""
        started = [p for p in (self.proc, *self.companions) if p is not None]
        self.proc, self.companions = None, []
        if started:
            await self.stop_tree(started)
            for proc in started:
                if proc.stdout is not None and not proc.stdout.closed:
                    asyncio.get_running_loop().remove_reader(proc.stdout.fileno())
                    proc.stdout.close()
        remove_tree(self.app_dir)

    async def stop_tree(self, started: list[subprocess.Popen[bytes]]) -> None:
        """SIGTERM what we started, then HUP+TERM all left in their sessions or below us;
        SIGKILL after the grace period."""
        me = os.getpid()
        leaders = {p.pid for p in started}

        def alive() -> set[int]:
            snapshot = procs.all_processes()
            members = set().union(*(procs.session_members(pid, snapshot) for pid in leaders))
            return (members | procs.descendants(me, snapshot)) - {me}

        grace = self.app.stop_grace
        procs.send(leaders, signal.SIGTERM)
        await self._wait_until(lambda: not (leaders & alive()), grace / 2)
        left = alive()
        procs.send(left, signal.SIGHUP)  # what interactive shells in the session honour
        procs.send(left, signal.SIGTERM)
        if not await self._wait_until(lambda: not alive(), grace / 2):
            left = alive()
            self.log(f"still running after {grace:.0f} s, killing: {sorted(left)}")
            procs.send(left, signal.SIGKILL)
            await self._wait_until(lambda: not alive(), 2.0)

    @staticmethod
    async def _wait_until(condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def fail(
        self, heading: str, paragraphs: list[str], status: int = 502, permanent: bool = False
    ) -> None:
        self.state = "failed"
        self.failure = Failure(heading, paragraphs, status, list(self.tail), permanent)
        self.log(f"{self.title} {heading}")

    def fail_missing(self, missing: MissingExecutables) -> None:
        items = "".join(
            f"<li><code>{escape(m.requirement.executable)}</code>: "
            f"{escape(m.requirement.install_hint)}</li>"
            for m in missing.missing
        )
        search_path = escape(missing.missing[0].search_path)
        self.fail(
            "is not installed here",
            [
                f"{escape(self.title)} needs programs that were not found on this system:"
                f"<ul>{items}</ul>",
                f"They were looked for on <code>PATH={search_path}</code>"
                + (
                    f", after the site's setup snippet <code>{escape(missing.setup)}</code>"
                    if missing.setup
                    else ""
                )
                + ".",
                "Install them, or ask your HPC centre to; the site configuration can also "
                "point the app at an <code>executable</code> in another place.",
            ],
            status=503,
        )
        if missing.detail:
            self.failure.tail = missing.detail.splitlines()[-TAIL_LINES:]

    # ---------------------------------------------------------------- HTTP
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer one request on our socket with the page (or JSON) for the current state."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, headers = parse_head(head)
            probe = pages.PROBE_HEADER.lower() in headers
            result, page = "same", None
            if not probe and self.app.parameters:
                result, page = await self.choose(request_query(head), request_origin(headers))
            if page is not None:
                status, content_type, body = page
            else:
                if not probe and self.state == "stopped":
                    self.start_app()
                status, content_type, body = self.render(probe)
            response = [
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
                f"Content-Type: {content_type}",
                f"Content-Length: {len(body)}",
                f"{pages.STATE_HEADER}: {self.state}",
                "Cache-Control: no-store",
                "Connection: close",
            ]
            if status in (202, 503):
                response.append("Retry-After: 1")
            if result == "confirm":
                response.append(": ".join(pages.FRAME_POLICY))
            writer.write(("\r\n".join(response) + "\r\n\r\n").encode())
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def choose(
        self, query: dict[str, list[str]], origin: str
    ) -> tuple[str, tuple[int, str, bytes] | None]:
        """Apply the app's parameters in a request's query: "same" (nothing changes),
        "switching" (the app is relaunched with them), "error" with a page, or "confirm"
        with a page that asks the user first: a new value from a request whose
        ``origin`` is not in ``MAY_RELAUNCH`` (a link on another site) changes nothing,
        so such a link can neither restart the app nor pick what it starts with."""
        resolved = {}
        for param in self.app.parameters:
            if not query.get(param.name):
                continue
            value = query[param.name][-1]
            try:
                resolved[param.name] = await asyncio.to_thread(param.resolve, value)
            except ValueError as err:
                heading, paragraphs, status = self.parameter_problem(param, value, str(err))
                html = pages.error_page(
                    self.title,
                    f"{self.title} {heading}",
                    paragraphs,
                    retry=False,
                    home=self.home_url,
                )
                return "error", (status, "text/html; charset=utf-8", html.encode())
        if not resolved:
            return "same", None
        wanted = {**self.current, **self.chosen}  # what the app runs or is about to run with
        changed = {k: v for k, v in resolved.items() if wanted.get(k) != v}
        if changed and origin not in MAY_RELAUNCH:
            self.log(
                "asking the user to confirm "
                + ", ".join(f"{k}={v}" for k, v in changed.items())
                + f" (request: {origin})"
            )
            return "confirm", (409, "text/html; charset=utf-8", self.confirmation(changed, wanted))
        self.chosen.update(resolved)
        if not changed or self.state not in ("starting", "running"):
            return "same", None
        self.log(
            "relaunching with "
            + ", ".join(f"{k}={v}" for k, v in changed.items())
            + f" (request: {origin})"
        )
        await self.restart()
        return "switching", None

    def confirmation(self, changed: Mapping[str, str], wanted: Mapping[str, str]) -> bytes:
        """The page that asks before ``changed`` values relaunch the app; ``wanted`` are
        the values it runs (or is about to run) with."""
        labels = {param.name: param.label for param in self.app.parameters}
        html = pages.confirm_page(
            self.title,
            [(labels[name], value, wanted.get(name, "")) for name, value in changed.items()],
            keep_url=self.prefix,
            running=self.state in ("starting", "running"),
        )
        return html.encode()

    async def restart(self) -> None:
        """Stop the app now and start it again: the socket is ours again before this
        returns, so the next request already sees the progress page."""
        self.generation += 1  # a start under way gives up
        if self.cleaning:
            self.start_wanted = True  # the start after the cleanup takes the new values
            return
        if self.state == "running":
            await self.listen()
        self.state = "stopped"
        self.cleanup_after_app()
        self.start_app()

    async def handle_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One request from the Jupyter server: ``{"params": {...}, "origin": ...}`` in
        (``origin`` is ``request_origin`` of the browser's request; without it, the
        request counts as one from another site), the result of :meth:`choose` out (with
        the page and our state, for "error" and "confirm"), each as one JSON line."""
        try:
            request = json.loads(await asyncio.wait_for(reader.readline(), 5))
            params = request["params"]
            query = {str(k): [str(v)] for k, v in params.items()}
            result, page = await self.choose(query, str(request.get("origin", "unknown")))
            reply: dict[str, object] = {"result": result}
            if page is not None:
                reply.update(status=page[0], page=page[2].decode(), state=self.state)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            self.log(f"ignored a control request that is not ours ({type(err).__name__})")
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def render(self, probe: bool) -> tuple[int, str, bytes]:
        elapsed = time.monotonic() - self.started_at if self.state == "starting" else 0.0
        if probe:
            body = pages.status_json(
                app=self.app.name,
                state=self.state,
                elapsed=elapsed,
                timeout=self.timeout,
                tail=list(self.tail)[-15:],
            )
            return 200, "application/json", body.encode()
        if self.state == "failed" and self.failure is not None:
            failure = self.failure
            if not failure.permanent:
                self.state = "stopped"  # shown once: the next request tries again
            html = pages.error_page(
                self.title,
                f"{self.title} {failure.heading}",
                failure.paragraphs,
                failure.tail,
                retry=not failure.permanent,
                home=self.home_url,
            )
            return failure.status, "text/html; charset=utf-8", html.encode()
        html = pages.progress_page(
            self.title, elapsed, self.timeout, list(self.tail)[-15:], self.note
        )
        # 202 Accepted: the start is under way. (A 5xx would also have the Jupyter server
        # log every progress page as an error, with the request's headers.)
        return 202, "text/html; charset=utf-8", html.encode()

    # ---------------------------------------------------------------- process-wide
    def on_sigchld(self) -> None:
        for pid, status in procs.reap_children().items():
            for proc in (self.proc, *self.companions):
                if proc is not None and pid == proc.pid:
                    proc.returncode = procs.exit_code(status)
                    self.on_app_exit(proc.returncode)

    def request_shutdown(self, signum: int) -> None:
        if self.state != "stopping":
            self.log(f"stopping on signal {signal.Signals(signum).name}")
            self.exit_status = 128 + signum
            self._spawn(self.shutdown())

    async def shutdown(self) -> None:
        self.state = "stopping"
        self.stop_listening()
        if self.control is not None:
            self.control.close()
        await self.stop_app()
        remove_tree(self.runtime_dir)
        self.done.set()

    async def watch_parent(self) -> None:
        """Fallback for PR_SET_PDEATHSIG: stop when the Jupyter server is gone."""
        while self.parent_pid is not None and not self.done.is_set():
            if os.getppid() != self.parent_pid:
                self.request_shutdown(signal.SIGTERM)
                return
            await asyncio.sleep(2)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self.request_shutdown, signum)
        loop.add_signal_handler(signal.SIGCHLD, self.on_sigchld)
        await self.listen()
        if self.app.parameters:
            control = self.runtime_dir / CONTROL_SOCKET
            control.unlink(missing_ok=True)
            self.control = await asyncio.start_unix_server(self.handle_control, path=str(control))
            os.chmod(control, 0o600)
        self._spawn(self.watch_parent())
        if not self.refuse_by_configuration():
            self.start_app()
        await self.done.wait()
        return self.exit_status


def prepare_start(
    app: AppSpec,
    runtime_dir: Path,
    app_dir: Path,
    prefix: str,
    settings: Mapping[str, object],
    executables: dict[str, str],
    params: Mapping[str, str] | None = None,
    flags: frozenset[str] = frozenset(),
) -> Launch:
    """Everything one start of ``app`` needs before its processes run, in a fresh
    private ``app_dir``: the secret, the X authority file, the app's own files.
    (The benchmarks' direct path uses it too, so both paths start the same app; there
    ``params`` are the defaults, and a bad one raises ValueError.)"""
    if params is None:
        params = {p.name: p.resolve(p.default(settings)) for p in app.parameters}
    fresh_private_dir(app_dir)
    launch = Launch(
        name=app.name,
        runtime_dir=runtime_dir,
        app_dir=app_dir,
        socket=app_dir / APP_SOCKET,
        secret_file=write_secret(app_dir, nbytes=app.secret_bytes) if app.secret else None,
        executables=executables,
        prefix=prefix,
        settings=settings,
        params=params,
        flags=flags,
    )
    if app.x_display:
        write_private_file(launch.xauthority, b"")
    if app.prepare is not None:
        app.prepare(launch)
    return launch


def start_env(app: AppSpec, launch: Launch, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus what the start adds: the private X authority, the app's variables."""
    env = dict(env)
    if app.x_display:
        env["XAUTHORITY"] = str(launch.xauthority)
    env.update(app.environment(launch))
    return env


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """The method and lower-cased headers of an HTTP request head."""
    lines = head.decode("latin-1").split("\r\n")
    method = lines[0].split(" ", 1)[0]
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return method, headers


def request_origin(headers: Mapping[str, str]) -> str:
    """Where a request that chooses URL parameters comes from, as far as relaunching the
    app goes (``MAY_RELAUNCH``): "token" (``Authorization: token …`` or ``Bearer``, from
    scripts), "confirmed" (our confirmation page's ``CONFIRM_HEADER``), else the
    browser's ``Sec-Fetch-Site`` ("same-origin", "none" for the address bar or a
    bookmark, "same-site", "cross-site"), or "unknown" without one (an old browser, a
    client with only the cookie). A page on another site can add neither header to a
    request that carries the user's cookie (that needs a CORS preflight, which Jupyter's
    login refuses), and browsers set ``Sec-Fetch-Site`` themselves. (A ``Basic`` login
    counts for nothing: browsers add a cached one to links from any site.) ``headers``:
    lower-case names, or case-insensitive (tornado's)."""
    scheme = headers.get("authorization", "").strip().split(" ", 1)[0].lower()
    if scheme in ("token", "bearer"):
        return "token"
    if headers.get(pages.CONFIRM_HEADER.lower()):
        return "confirmed"
    site = headers.get("sec-fetch-site", "").strip().lower()
    return site if site in ("same-origin", "none", "same-site", "cross-site") else "unknown"


def request_query(head: bytes) -> dict[str, list[str]]:
    """The query of an HTTP request head's target, as ``parse_qs`` gives it."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    return parse_qs(urlsplit(parts[1]).query) if len(parts) >= 2 else {}


async def http_answers(socket_path: Path, path: str, timeout: float) -> bool:
    """True once something answers an HTTP request on ``socket_path`` (any status)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket_path)), 1)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        return line.startswith(b"HTTP/")
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        writer.close()


async def greets(socket_path: Path, banner: bytes, timeout: float) -> bool:
    """True once a connection to ``socket_path`` is greeted with ``banner`` (e.g. b"RFB ")."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket_path)), 1)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        return (await asyncio.wait_for(reader.readexactly(len(banner)), timeout)) == banner
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc_proxies.launcher", description=__doc__)
    parser.add_argument("--app", required=True, help="app name, as in the entry point")
    parser.add_argument("--socket", required=True, type=Path, help="socket to serve on")
    parser.add_argument("--prefix", default="/", help="public URL prefix of the app")
    parser.add_argument("--parent-pid", type=int, default=None, help="the Jupyter server's pid")
    args = parser.parse_args(argv)

    procs.become_subreaper()
    procs.signal_on_parent_death(signal.SIGTERM)
    try:
        ensure_private_dir(args.socket.parent)
    except UnsafeRuntimeDir as err:
        sys.stderr.write(f"[hpc-proxies {args.app}] refusing to start: {err}\n")
        time.sleep(2)  # jupyter-server-proxy restarts failed children at once
        return 1
    launcher = Launcher(load_app(args.app), args.socket, args.prefix, args.parent_pid)
    if args.parent_pid is not None and os.getppid() != args.parent_pid:
        return 0  # the Jupyter server is already gone
    return asyncio.run(launcher.run())


if __name__ == "__main__":
    sys.exit(main())
