"""The processes of one launch: start them, read their output, learn of their exit,
and stop their whole tree.

A :class:`ProcessGroup` is what the per-launch supervisor runs an app with (its main
process and companions), and what the ParaView service runs each pvserver with. How a
process is started is a :class:`~hpc_proxies.launcher.engines.LaunchEngine`'s job; the
group watches what the engine started:

* each process has its own :class:`OutputTail` (its own partial line), so output of
  two processes never mixes inside a line;
* each process's exit is learnt from a pidfd and collected with ``waitpid(pid)``: the
  group never waits for "any child", so a helper that a worker thread runs (the setup
  snippet, ``--help``) keeps its exit status;
* orphans that the kernel re-parents to a subreaper are collected by the group that
  ``adopts_orphans``, and only those in another session than ours (helpers run in
  ours; every app process starts a session of its own);
* :meth:`ProcessGroup.stop` signals everything in the sessions it started and below
  it: SIGTERM, then SIGHUP+SIGTERM to what is left, then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .. import procs
from .engines import LaunchEngine, LocalEngine

TAIL_LINES = 40
#: How often stopping checks whether the processes are gone.
STOP_POLL = 0.05


class OutputTail:
    """The last lines one process printed, assembled from chunks as they arrive."""

    def __init__(self, keep: int = TAIL_LINES) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._partial = b""

    def feed(self, chunk: bytes) -> list[str]:
        """Add ``chunk`` (b"" at end of output); return the lines it completed."""
        if not chunk:
            rest, self._partial = self._partial, b""
            raw_lines = [rest] if rest.strip() else []
        else:
            raw_lines = (self._partial + chunk).split(b"\n")
            self._partial = raw_lines.pop()
        lines = [raw.decode(errors="replace").rstrip("\r") for raw in raw_lines]
        self.lines.extend(lines)
        return lines


@dataclass
class ManagedProcess:
    """One process a group started: its name in logs, its output and its exit."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    tail: OutputTail = field(default_factory=OutputTail)
    exited: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    async def wait(self) -> int:
        """Its exit code, shell style (negative for a signal), once it has exited."""
        return await asyncio.shield(self.exited)


LineHandler = Callable[[ManagedProcess, str], None]
ExitHandler = Callable[[ManagedProcess, int], None]


class ProcessGroup:
    """The processes of one app (or one pvserver run), from start to a full stop.

    All methods run on one event loop thread: ``members`` is changed only by ``spawn``
    and ``stop``, with no await in between. The one lock, ``_stopping``, spans the
    awaits of a stop: a second stop waits until the first has ended every process.
    ``on_line`` gets every output line (with its process), ``on_exit`` every exit, both
    on the loop.
    """

    def __init__(
        self,
        engine: LaunchEngine | None = None,
        on_line: LineHandler | None = None,
        on_exit: ExitHandler | None = None,
        stop_grace: float = 5.0,
        adopts_orphans: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine or LocalEngine()
        self.on_line = on_line
        self.on_exit = on_exit
        self.stop_grace = stop_grace
        self.adopts_orphans = adopts_orphans
        self.log = log or (lambda message: None)
        self.members: list[ManagedProcess] = []
        #: Pids the group started and has not collected yet (still members or not:
        #: ``stop`` forgets members before their exit is collected).
        self._uncollected: set[int] = set()
        self._orphan_handler = False
        self._orphan_scan_due = False
        #: When the current run's first process started: an adopted orphan is younger.
        #: A process of ours that is older (a daemon a host process started in a
        #: session of its own before the app, as a test suite's cluster) is not the
        #: app's, and a stop must never touch it.
        self._run_started: float | None = None
        #: Held while the group stops: a second stop() (a shutdown during a clean-up)
        #: waits for the first, so when any stop() returns nothing it stopped runs.
        self._stopping = asyncio.Lock()

    # ---------------------------------------------------------------- start
    def spawn(
        self, name: str, argv: list[str], env: dict[str, str], cwd: str | None = None
    ) -> ManagedProcess:
        """Start ``argv`` through the engine and watch its output and exit."""
        loop = asyncio.get_running_loop()
        popen = self.engine.start(argv, env, cwd)
        process = ManagedProcess(name, list(argv), popen)
        self.members.append(process)
        self._uncollected.add(popen.pid)
        born = procs.start_time(popen.pid)
        if born is not None and (self._run_started is None or born < self._run_started):
            self._run_started = born
        self.log(f"started pid {popen.pid}: {' '.join(argv)}")
        assert popen.stdout is not None
        os.set_blocking(popen.stdout.fileno(), False)
        loop.add_reader(popen.stdout.fileno(), self._read_output, process)
        pidfd = os.pidfd_open(popen.pid)
        loop.add_reader(pidfd, self._collect, process, pidfd)
        if self.adopts_orphans and not self._orphan_handler:
            loop.add_signal_handler(signal.SIGCHLD, self._child_exited)
            self._orphan_handler = True
        return process

    def _read_output(self, process: ManagedProcess) -> None:
        stdout = process.popen.stdout
        assert stdout is not None
        try:
            chunk = os.read(stdout.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            asyncio.get_running_loop().remove_reader(stdout.fileno())
            stdout.close()
        for line in process.tail.feed(chunk):
            if self.on_line is not None:
                self.on_line(process, line)

    def _collect(self, process: ManagedProcess, pidfd: int) -> None:
        """The process has exited: collect its status (only its own) and report it."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(pidfd)
        os.close(pidfd)
        try:
            _, status = os.waitpid(process.pid, 0)
            code = procs.exit_code(status)
        except ChildProcessError:  # collected elsewhere: Popen.poll in a test
            code = process.popen.returncode if process.popen.returncode is not None else -1
        self._uncollected.discard(process.pid)
        process.popen.returncode = code
        if process.popen.stdout is not None and not process.popen.stdout.closed:
            self._read_output(process)  # what it printed last, before its exit is told
        if not process.exited.done():
            process.exited.set_result(code)
        if self.on_exit is not None:
            self.on_exit(process, code)

    def _child_exited(self) -> None:
        """SIGCHLD: one look at /proc for all the signals that came meanwhile (a look
        per signal falls behind an app that keeps forking, and the loop with it)."""
        if not self._orphan_scan_due:
            self._orphan_scan_due = True
            asyncio.get_running_loop().call_soon(self._scan_for_orphans)

    def _scan_for_orphans(self) -> None:
        self._orphan_scan_due = False
        if self._orphan_handler:  # not after close(): another group may reap now
            self.collect_orphans()

    def collect_orphans(self) -> None:
        """Collect exited orphans re-parented to us (we are a subreaper). Our own
        helpers are in our session and are left to whoever waits for them."""
        ours = os.getsid(0)
        mine = self._uncollected  # collected by _collect, with their exit code
        for info in procs.all_processes():
            if info.ppid == os.getpid() and info.state == "Z" and info.sid != ours:
                if info.pid not in mine:
                    try:
                        os.waitpid(info.pid, os.WNOHANG)
                    except ChildProcessError:
                        continue

    # ---------------------------------------------------------------- stop
    def tree(self, leaders: Iterable[int]) -> set[int]:
        """Live processes in the leaders' sessions, below them, and (for the group that
        adopts orphans) below this process."""
        snapshot = procs.all_processes()
        alive = set(leaders) & {p.pid for p in snapshot if p.state != "Z"}
        for leader in leaders:
            alive |= procs.session_members(leader, snapshot)
            alive |= procs.descendants(leader, snapshot)
        if self.adopts_orphans:
            orphans = procs.descendants(os.getpid(), snapshot) - self._helpers(snapshot)
            alive |= {pid for pid in orphans if self._started_in_this_run(pid)}
        return alive - {os.getpid()}

    def _started_in_this_run(self, pid: int) -> bool:
        """``pid`` started no earlier than the run's first process (None: no run yet)."""
        born = procs.start_time(pid)
        return self._run_started is not None and born is not None and born >= self._run_started

    @staticmethod
    def _helpers(snapshot: list[procs.ProcInfo]) -> set[int]:
        """Processes in our own session: helpers that worker threads wait for, and what
        they started (an app's processes are all in sessions of their own)."""
        ours = os.getsid(0)
        return {p.pid for p in snapshot if p.sid == ours}

    async def stop(self) -> None:
        """Stop every process of the group and everything they started; then forget them."""
        async with self._stopping:
            await self._stop()

    async def _stop(self) -> None:
        members, self.members = self.members, []
        leaders = {member.pid for member in members}
        if leaders:
            procs.send(leaders, signal.SIGTERM)
            await until(lambda: not (leaders & self.tree(leaders)), self.stop_grace / 2)
            left = self.tree(leaders)
            procs.send(left, signal.SIGHUP)  # what interactive shells in the session honour
            procs.send(left, signal.SIGTERM)
            if not await until(lambda: not self.tree(leaders), self.stop_grace / 2):
                left = self.tree(leaders)
                self.log(f"still running after {self.stop_grace:.0f} s, killing: {sorted(left)}")
                procs.send(left, signal.SIGKILL)
                await until(lambda: not self.tree(leaders), 2.0)
        self._run_started = None
        for member in members:
            # Its exit is collected from its pidfd; wait for that, briefly, so the
            # caller sees every exit reported before the group is gone.
            if not member.exited.done():
                await asyncio.wait([member.exited], timeout=2.0)

    def close(self) -> None:
        """Stop handling SIGCHLD (the group is no longer this process's reaper)."""
        if self._orphan_handler:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)
            self._orphan_handler = False


async def until(condition: Callable[[], bool], timeout: float) -> bool:
    """Wait until ``condition()`` holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(STOP_POLL)
    return True
