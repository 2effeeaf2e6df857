"""The supervisor of one launch: it feeds the lifecycle its events and carries out
the effects (see :mod:`hpc_proxies.launcher` for what it does and why)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from .. import config, pages, procs
from ..bridge import RunningBridge, serve_bridge
from ..executables import MissingExecutables, setup_argv
from ..layout import LaunchLayout
from ..problems import CannotStart, Problem
from ..runtime import remove_tree
from ..spec import AppSpec, Launch
from . import failures
from . import lifecycle as lc
from .engines import LaunchEngine
from .handover import OwnedListener
from .logbook import LogBook
from .params import ParameterChoices
from .prepare import prepare_run
from .processes import TAIL_LINES, ManagedProcess, ProcessGroup
from .readiness import wait_until_ready

#: Longer log lines (an app's output, a value from a URL) are cut: one request or one
#: runaway line must not write kilobytes into the Jupyter server's log.
LOG_LINE_MAX = 2000
#: How often the supervisor checks that the Jupyter server is still its parent.
PARENT_POLL = 2.0


class Launcher:
    """Supervises one app for one Jupyter server.

    Everything runs on one event loop. The lifecycle (``self.lifecycle``) changes only
    in :meth:`dispatch`; the processes belong to ``self.group``; the web layer
    (:mod:`.web`) reads the state and dispatches the events requests cause.
    """

    def __init__(
        self,
        app: AppSpec,
        layout: LaunchLayout,
        prefix: str,
        site: config.SiteConfig,
        parent_pid: int | None = None,
        engine: LaunchEngine | None = None,
        bound: socket.socket | None = None,
        note: str = "",
    ) -> None:
        self.app = app
        self.bound = bound  # the launch socket, already listening (see __main__)
        self.site = site
        # An app outside the registry (a site's own AppSpec) runs with its defaults.
        self.settings = site.apps.get(app.name) or config.AppSettings(
            app.name, config.app_defaults(app)
        )
        self.layout = layout
        self.prefix = prefix
        self.parent_pid = parent_pid
        # ``note``: why this launch happens (the Jupyter side knows: "stopped after
        # 30 min idle"), shown on the progress page of the first start.
        self.lifecycle = lc.State(note=note)
        self.started_at = 0.0
        self.started_wall: float | None = None
        self.ready_wall: float | None = None
        self.last_exit: dict[str, object] | None = None
        #: What the Running panel's log shows: app output and our messages, numbered.
        self.logbook = LogBook()
        #: The current run's output lines, every process's lines kept whole.
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.group = ProcessGroup(
            engine,
            on_line=self._on_line,
            on_exit=self._on_exit,
            stop_grace=app.stop_grace,
            adopts_orphans=True,
            log=self.log,
        )
        self.main: ManagedProcess | None = None
        #: The current run's web bridge (``AppSpec.bridge``), served on this loop.
        self.bridge: RunningBridge | None = None
        self.launch: Launch | None = None
        self.params = ParameterChoices(app, self.settings.values, prefix, self.log)
        self.listener: OwnedListener | None = None
        self.done: asyncio.Event | None = None
        self.exit_status = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._runners: list[web.AppRunner] = []
        #: Set (and replaced) whenever the phase changes: what a held probe waits for.
        self._phase_changed = asyncio.Event()

    # ---------------------------------------------------------------- views
    @property
    def state(self) -> str:
        return self.lifecycle.phase.value

    @property
    def active(self) -> bool:
        return self.lifecycle.phase in (lc.Phase.STARTING, lc.Phase.RUNNING)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The current run's main process, if one runs."""
        return self.main.popen if self.main is not None else None

    @property
    def title(self) -> str:
        return str(self.settings["title"])

    @property
    def timeout(self) -> float:
        return float(self.settings["timeout"])  # type: ignore[arg-type]

    @property
    def home_url(self) -> str:
        return pages.home_url(self.prefix)

    def elapsed(self) -> float:
        starting = self.lifecycle.phase == lc.Phase.STARTING
        return time.monotonic() - self.started_at if starting else 0.0

    def log(self, message: str) -> None:
        message = pages.shorten(message, LOG_LINE_MAX)
        self.logbook.append(message)
        sys.stderr.write(f"[hpc-proxies {self.app.name}] {message}\n")
        sys.stderr.flush()

    # ---------------------------------------------------------------- lifecycle
    def dispatch(self, event: lc.Event) -> None:
        """Apply ``event`` to the lifecycle and carry out what it asks for."""
        before = self.lifecycle
        self.lifecycle, effects = lc.step(before, event)
        if self.lifecycle.phase == lc.Phase.STARTING and before.phase != lc.Phase.STARTING:
            self.started_at = time.monotonic()
            self.started_wall = time.time()
            self.ready_wall = None
            self.tail.clear()
        if self.lifecycle.phase == lc.Phase.RUNNING and before.phase != lc.Phase.RUNNING:
            self.ready_wall = time.time()
        for effect in effects:
            self._apply(effect)
        if self.lifecycle.phase != before.phase:
            changed, self._phase_changed = self._phase_changed, asyncio.Event()
            changed.set()

    async def while_starting(self, longest: float) -> None:
        """Return when a start in progress ends (ready or failed), or after ``longest``
        seconds: the progress page's probe is held, so the page learns at once."""
        if self.lifecycle.phase != lc.Phase.STARTING:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._phase_changed.wait(), longest)

    def _apply(self, effect: lc.Effect) -> None:
        if isinstance(effect, lc.StartRun):
            self._spawn(self._start_run(effect.generation))
        elif isinstance(effect, lc.HandOver):
            assert self.listener is not None and self.launch is not None
            self.listener.hand_over(self.launch.socket)
            self.log(f"ready after {time.monotonic() - self.started_at:.2f} s")
        elif isinstance(effect, lc.TakeSocketBack):
            assert self.listener is not None
            self.listener.listen()
        elif isinstance(effect, lc.StopProcesses):
            self._spawn(self._stop_processes())
        elif isinstance(effect, lc.Exit):
            self._spawn(self._exit())
        elif isinstance(effect, lc.Log):
            self.log(f"{self.title} {effect.message}")  # "Xpra Desktop exited (…)"

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _is_current(self, generation: int) -> bool:
        state = self.lifecycle
        return state.phase == lc.Phase.STARTING and state.generation == generation

    # ---------------------------------------------------------------- one start
    async def _start_run(self, generation: int) -> None:
        """Look up, prepare and spawn the app, then wait until it answers."""
        program = self.app.name
        try:
            launch, env = await self._prepare()
            if not self._is_current(generation):
                return
            self.launch = launch
            argv = self.app.command(launch)
            program = argv[0]
            self.main = self.group.spawn("app", setup_argv(str(self.settings["setup"]), argv), env)
            for companion in self.app.companions(launch) if self.app.companions else []:
                program = companion[0]
                self.group.spawn("companion", companion, env)
            if self.app.bridge is not None:
                bridge = await serve_bridge(self.app.bridge(launch), launch.socket)
                if not self._is_current(generation):  # stopped while it started
                    await bridge.stop()
                    return
                self.bridge = bridge
            problem = await self._wait_ready(launch, generation)
        except MissingExecutables as missing:
            problem = failures.not_installed(self.title, missing)
        except CannotStart as cannot:
            problem = cannot.problem
        except (OSError, subprocess.SubprocessError) as err:
            problem = failures.could_not_start(program, str(err))
        except Exception as err:  # noqa: BLE001 (a bug of ours: say so, never hang in "starting")
            self.log("".join(traceback.format_exception(err)))
            problem = failures.could_not_start(program, f"{type(err).__name__}: {err}")
        if problem is not None and self._is_current(generation):
            self.dispatch(lc.StartFailed(generation, problem.with_tail(problem.tail or self.tail)))

    async def _prepare(self) -> tuple[Launch, dict[str, str]]:
        return await prepare_run(
            self.app, self.settings.values, self.layout, self.prefix, self.params, self.log
        )

    async def _wait_ready(self, launch: Launch, generation: int) -> Problem | None:
        """Wait until the app answers (Ready), time runs out (a problem), or the start is
        no longer wanted (None)."""
        deadline = self.started_at + self.timeout
        ready = await wait_until_ready(
            self.app, launch, deadline, lambda: self._is_current(generation)
        )
        if ready is False:
            return failures.start_timeout(self.title, self.timeout)
        if ready and self._is_current(generation):
            self.dispatch(lc.Ready(generation))
        return None

    def _on_line(self, process: ManagedProcess, line: str) -> None:
        self.tail.append(line)
        self.log(line)

    def _on_exit(self, process: ManagedProcess, code: int) -> None:
        """A process of the current run ended (the app, or a companion it needs)."""
        if process not in self.group.members:
            return  # a run being stopped
        description = f"exit code {code}" if code >= 0 else f"signal {-code}"
        self.last_exit = {
            "at": time.time(),
            "code": code if code >= 0 else None,
            "signal": -code if code < 0 else None,
            "description": description,
        }
        problem = failures.exited_during_start(self.title, description)
        self.dispatch(lc.Exited(description, problem.with_tail(self.tail)))

    async def _stop_processes(self) -> None:
        """Stop the run's whole tree and remove its files; then the lifecycle goes on."""
        self.main = None
        try:
            await self.group.stop()
            await self._stop_bridge()
            remove_tree(self.layout.app_dir)
        finally:
            self.dispatch(lc.Cleaned())

    async def _stop_bridge(self) -> None:
        bridge, self.bridge = self.bridge, None
        if bridge is not None:
            await bridge.stop()

    def restart(self) -> None:
        """Stop the app if it runs and start it again (a new app directory, secret and
        processes); start it if it is stopped or failed. A refusal stays a refusal."""
        phase = self.lifecycle.phase
        if phase in (lc.Phase.STARTING, lc.Phase.RUNNING):
            self.log("restarting, as the user asked")
            self.dispatch(lc.Relaunch())
        elif phase in (lc.Phase.STOPPED, lc.Phase.FAILED) and not self.lifecycle.refused:
            if phase == lc.Phase.FAILED:
                self.dispatch(lc.ProblemShown())
            self.log("starting, as the user asked")
            self.dispatch(lc.Requested())

    def status(self) -> dict[str, object]:
        """What the Running panel shows of this launch (the control API's ``/status``)."""
        state = self.lifecycle
        pids, memory = procs.tree_memory(os.getpid())
        connections = 0
        if state.phase == lc.Phase.RUNNING and self.launch is not None:
            connections = procs.unix_connections(self.launch.socket)
        problem = state.problem
        # A failed start's problem stays until the next start: after its page was shown
        # the phase is "stopped" again, but for the Running panel it is still a failure.
        shown = "failed" if state.phase == lc.Phase.STOPPED and problem is not None else self.state
        return {
            "state": shown,
            "title": self.title,
            "started": self.started_wall,
            "ready": self.ready_wall,
            "pids": pids,
            "memory": memory,
            "connections": connections,
            "last_exit": self.last_exit,
            "problem": (
                {
                    "code": problem.code,
                    "title": f"{self.title} {problem.summary}",
                    "summary": f"{self.title} {problem.text()}",
                }
                if problem is not None
                else None
            ),
            "note": state.note,
            "log_next": self.logbook.next_seq,
        }

    # ---------------------------------------------------------------- process-wide
    def request_shutdown(self, signum: int) -> None:
        if self.lifecycle.phase != lc.Phase.STOPPING:
            self.log(f"stopping on signal {signal.Signals(signum).name}")
            self.exit_status = 128 + signum
            self.dispatch(lc.Shutdown())

    async def _exit(self) -> None:
        """Stop everything and remove the runtime directory. The signal handlers stay
        until the end: Jupyter's own SIGTERM and the parent-death signal often follow
        the first one, and the default action would cut the clean-up short."""
        if self.listener is not None:
            self.listener.stop_listening()
        await self.group.stop()
        await self._stop_bridge()
        self.group.close()
        for runner in self._runners:
            await runner.cleanup()
        remove_tree(self.layout.runtime_dir)
        assert self.done is not None
        self.done.set()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)

    async def _watch_parent(self) -> None:
        """Fallback for PR_SET_PDEATHSIG: stop when the Jupyter server is gone."""
        assert self.done is not None
        while self.parent_pid is not None and not self.done.is_set():
            if os.getppid() != self.parent_pid:
                self.request_shutdown(signal.SIGTERM)
                return
            await asyncio.sleep(PARENT_POLL)

    async def serve(self) -> None:
        """Listen on the launch socket (and the control socket) and start the app,
        unless site policy refuses it; return at once."""
        from .web import serve_web  # the web layer reads this class

        self.done = asyncio.Event()
        self.listener, self._runners = await serve_web(self)
        self._spawn(self._watch_parent())
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self.request_shutdown, signum)
        problem = failures.site_problem(self.site, self.app.name, self.title)
        self.dispatch(lc.Refused(problem) if problem is not None else lc.Requested())

    async def run(self) -> int:
        """Serve until a signal or the Jupyter server's end; the exit status."""
        await self.serve()
        assert self.done is not None
        await self.done.wait()
        return self.exit_status
