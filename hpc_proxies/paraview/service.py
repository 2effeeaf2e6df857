"""The ParaView tile's service: this user's pvserver, and the state its page shows.

    python -m hpc_proxies.paraview.service --socket SOCK --dir DIR --prefix URL ...

It is the "app" the hpc-proxies launcher runs for the ``paraview`` entry point, on the
launch's private unix socket, so everything it serves (:mod:`.web`) is reached only
through the user's authenticated Jupyter URL.

This module keeps what is ParaView's own: each start's connect-id (in a 0600 file),
the loopback relay into pvserver's network namespace, and what the status page shows
(refused connections, stalled handshakes, ranks, port). pvserver is started by a
:class:`~.starter.PvserverStarter`; :class:`~.starter.LocalPvserver` runs one serial
server on this node. Its processes are a :class:`~hpc_proxies.launcher.processes.ProcessGroup`
per run, which reads their output, learns of their exit and stops their whole tree.
pvserver exits when its client disconnects; the next ``api/start`` starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pwd
import re
import secrets
import socket
import sys
import time
from collections import deque
from collections.abc import Coroutine
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import batchjob, netns
from ..runtime import ensure_private_dir, fresh_private_dir, remove_tree, write_private_file
from ..slurmjob import parse_time
from . import HANDSHAKE_TIMEOUT
from .rendezvous import Rendezvous
from .server import EXIT_NO_PARAVIEW, MARK
from .starter import Options, PvserverStarter, Run, StartFailed, callback_host, starter_for

__all__ = ["HANDSHAKE_TIMEOUT", "MAX_REFUSALS", "PvserverService", "StartFailed", "main"]

#: A client that presents a wrong connect-id is refused; after this many refusals the
#: server is restarted on a new port with a new id, so the id cannot be guessed.
MAX_REFUSALS = 3
#: Connections from other users refused by the relay, kept across restarts and new ids
#: so that the user sees them on the status page.
REFUSED_KEPT = 20
#: Lines of pvserver's output on the status page.
TAIL_SHOWN = 15
INNER_ADDRESS_LINES = ("Connection URL:", "Accepting connection(s):")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class RanksRefused(ValueError):
    """A rank count this system or this moment does not allow; the message says why."""


class PvserverService:
    """State of this user's pvserver, and the start/stop operations on it."""

    def __init__(self, options: Options, starter: PvserverStarter | None = None) -> None:
        self.options = options
        self.starter: PvserverStarter = starter or starter_for(options)
        self.run: Run | None = None
        #: The latest run, also once it has ended: the status page shows its output.
        self.latest: Run | None = None
        self.state = "stopped"  # stopped | starting | running | failed | stopping
        self.message = "Not started yet."
        self.user_stopped = False
        self.starts = 0
        self.refused: deque[netns.Refusal] = deque(maxlen=REFUSED_KEPT)
        self.refused_total = 0
        self.stalls = 0  # handshakes that timed out
        #: Held while pvserver is started or stopped, so that each start or stop sees the
        #: state the previous one left (never a half-stopped run).
        self.lock = asyncio.Lock()
        self.views = ensure_private_dir(options.directory / "views")
        #: Restarts and handshake deadlines under way (held, so none is collected early).
        self.tasks: set[asyncio.Task[Any]] = set()

    # ---------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """What the status page and ``connect()`` show; nothing secret (the id's file)."""
        run = self.run
        running = self.state == "running" and run is not None
        return {
            "state": self.state,
            "message": self.message,
            "ranks": self.starter.ranks if running else 0,
            # What the status page offers: the engine, the count the next start uses,
            # and the most a user may ask for.
            "engine": self.options.engine,
            "ranks_next": self.starter.ranks,
            "max_ranks": self.max_ranks,
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
            # engine = slurm: where the job's pvserver connects back to (no secret).
            "callback": _callback(self.latest),
            "stalled_handshakes": self.stalls,
            "refused": {
                "total": self.refused_total,
                "latest": [
                    {"time": r.when, "uid": r.uid, "user": _user_name(r.uid)}
                    for r in reversed(self.refused)
                ],
            },
            "tail": _last_lines(self.latest),
            "job": _job_status(self.latest, live=self.latest is self.run),
        }

    def note_refusal(self, refusal: netns.Refusal) -> None:
        """The relay refused another user's connection: keep it and say so."""
        self.refused.append(refusal)
        self.refused_total += 1
        who = _user_name(refusal.uid) or (refusal.address or "an unknown owner")
        uid = "" if refusal.uid is None else f" (uid {refusal.uid})"
        self.log(
            f"refused a connection from {who}{uid}: only your own processes may "
            "connect to your pvserver"
        )

    def log(self, line: str) -> None:
        """Into the service's log (stderr), which the launcher prefixes and forwards."""
        sys.stderr.write(f"{ANSI_ESCAPE.sub('', line)}\n")
        sys.stderr.flush()

    def start_soon(self) -> None:
        """Start pvserver without waiting for it (opening the status page does): the
        page polls the status, which says how the start goes."""
        self._background(self.ensure_started())

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` (a start or restart) as a task of its own: the line reader must not
        wait for a restart, which stops the run whose lines it reads."""
        task = asyncio.get_running_loop().create_task(_quietly(work))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ---------------------------------------------------------------- start
    @property
    def max_ranks(self) -> int:
        """The most ranks a user may ask for: the site's max_ranks, or 1 for one process."""
        return self.options.max_ranks if self.options.engine != "local" else 1

    def _check_ranks(self, ranks: int, restarting: bool = False) -> None:
        """Raise :class:`RanksRefused` unless pvserver may run on ``ranks`` ranks now (a
        restart the user asked for may end a connected client: the page's Restart does)."""
        if not 1 <= ranks <= self.max_ranks:
            if self.options.engine == "local":
                raise RanksRefused(
                    f"{ranks} ranks: this system runs pvserver as one process (the site "
                    "configuration's [apps.paraview] engine is 'local'); ask your "
                    "administrators for engine = 'mpiexec' or 'slurm'."
                )
            raise RanksRefused(
                f"{ranks} ranks: this system allows 1 to {self.max_ranks} "
                "(the site configuration's [apps.paraview] max_ranks)."
            )
        run = self.run
        if not restarting and ranks != self.starter.ranks and run is not None and run.connected:
            raise RanksRefused(
                f"pvserver runs on {self.starter.ranks} ranks for a connected client: "
                "disconnect it first (Disconnect() in its notebook), or stop pvserver on "
                "the status page."
            )

    async def ensure_started(
        self, ranks: int | None = None, wait: float | None = None
    ) -> dict[str, Any]:
        """Start pvserver unless it runs (on ``ranks`` ranks if given: a running one on
        another count is restarted); wait until it listens (or fails), or for at most
        ``wait`` seconds while its job waits for Slurm (the status says how it goes)."""
        async with self.lock:
            if ranks is not None:
                self._check_ranks(ranks)
                if ranks != self.starter.ranks:
                    await self._stop(f"Restarting on {ranks} ranks…")
                    self.starter.ranks = ranks
            if self.state not in ("starting", "running") or self.run is None:
                await self._start()
            run = self.run
        return await self._until_listening(run, wait)

    async def _until_listening(self, run: Run | None, wait: float | None = None) -> dict[str, Any]:
        """The status once ``run`` listens. A job that Slurm has not started (or whose
        pvserver has not connected back yet) is no failure: after ``wait`` seconds the
        status says where it is (``state`` "starting"), and the caller asks again."""
        if run is None:
            raise StartFailed(self.message)
        queued = self.starter.connects_back
        limit = wait if queued and wait is not None else self.options.timeout
        try:
            await asyncio.wait_for(run.listening.wait(), limit)
        except asyncio.TimeoutError:
            if queued and self.run is run:
                return self.status()  # the job's own deadline is _arrival_deadline's
            await self.stop(f"pvserver did not listen within {self.options.timeout:.0f} s.")
            self.state = "failed"
            raise StartFailed(self.message) from None
        if self.run is not run or run.port is None:
            raise StartFailed(self.message)
        return self.status()

    async def _start(self) -> None:
        self.user_stopped = False
        self.state, self.message = "starting", "Starting pvserver…"
        # A directory per start: the previous run's clean-up must not touch this one.
        self.starts += 1
        try:
            workdir = fresh_private_dir(self._runs_directory() / f"pvserver-{self.starts}")
        except OSError as err:
            self.state, self.message = "failed", f"pvserver's job directory: {err}"
            self.log(self.message)
            return
        # ParaView's connect-id is a positive 32-bit int; it lives only in this file.
        connect_id = secrets.randbelow(2**31 - 2) + 1
        connect_id_file = write_private_file(workdir / "connect-id", str(connect_id))
        grace = self.starter.stop_grace
        run = Run(workdir, connect_id_file, self.starter.engine, self.log, stop_grace=grace)
        self.latest = run
        try:
            if self.starter.connects_back:
                run.rendezvous = await self._rendezvous(run, connect_id)
            await self.starter.start(self.options, run)
        except (StartFailed, OSError) as err:
            self.state = "failed"
            self.message = str(err) if isinstance(err, StartFailed) else f"pvserver: {err}"
            self.log(self.message)
            if run.rendezvous is not None:
                await run.rendezvous.close()
            remove_tree(workdir)
            return
        assert run.process is not None, "a starter that returns has started pvserver"
        self.run = run
        self.log(f"started pvserver (pid {run.process.pid})")
        run.follower = asyncio.get_running_loop().create_task(self._follow(run))

    def _runs_directory(self) -> Path:
        """Where each run's directory goes: the service's own, or for a job the site's
        ``job_directory`` (which every node must see), made private if it is new."""
        if not self.starter.connects_back:
            return self.options.directory
        root = Path(self.options.job_directory).expanduser()
        for parent in reversed(root.parents):
            if not parent.exists():
                ensure_private_dir(parent)
        return ensure_private_dir(root)

    async def _rendezvous(self, run: Run, connect_id: int) -> Rendezvous:
        """Where the run's pvserver connects back to (from the job's first node only)."""
        return await Rendezvous(
            connect_id,
            callback_host(self.options),
            self.options.handshake_timeout,
            allowed_hosts=lambda: _addresses(run.job.get("batch_host", "")),
            on_arrival=lambda: self._arrived(run),
            on_refusal=self.note_refusal,
            log=self.log,
            on_wrong_id=lambda count: self._guessed(run, count),
        ).start()

    def _guessed(self, run: Run, count: int) -> None:
        """Wrong connect-ids from the job's node: after MAX_REFUSALS, a new job and id, so
        that the id cannot be guessed (as pvserver's own refusals do for one process)."""
        if count == MAX_REFUSALS and self.run is run:
            self.log(f"{count} connections with a wrong id at the rendezvous: new job and id")
            self._background(self.restart())

    def _arrived(self, run: Run) -> None:
        """pvserver connected back (first, or again after a client left): clients may join."""
        if self.run is not run:
            return
        run.arrived = True
        if run.relay is None:
            self._background(self._listening(run, 0))
        else:
            self.state, self.message = "running", "Waiting for a client."

    def _job_event(self, run: Run, event: dict[str, Any]) -> None:
        """A change of the run's Slurm job, from :mod:`hpc_proxies.batchjob`."""
        kind = event.pop("event", "")
        run.job.update({k: str(v) for k, v in event.items() if k not in ("message", "ending")})
        job = run.job.get("id", "?")
        if kind == "refused":  # sbatch's own error, or why the job would never start
            message = event.get("message", "")
            run.ending = (
                message
                if message.startswith("Slurm ")
                else f"Slurm refused pvserver's job: {message}"
            )
        elif kind == "submitted":
            self.message = f"Submitted pvserver's job {job} to Slurm."
        elif kind == "ended":
            run.ending = f"pvserver's job {job} ended: {event.get('ending', '')}"
            if run.job.get("state"):
                run.ending += f" ({run.job['state']})"
        elif kind == "cancelled" and run.job.get("state") not in batchjob.FINISHED:
            run.job["state"] = "CANCELLED"  # stopped by us; Slurm has forgotten it already
        elif kind == "job" and self.run is run and not run.arrived:
            self.message = _queue_words(run.job, run.arrived)
            if run.job.get("state") == "RUNNING" and not run.timed:
                run.timed = True
                self._background(self._arrival_deadline(run))
        if kind in ("submitted", "job", "ended"):
            words = _queue_words(run.job, run.arrived) if kind == "job" else self.message
            self.log(f"Slurm: {words}")

    async def _arrival_deadline(self, run: Run) -> None:
        """Once the job runs, pvserver has ``pvserver_timeout`` seconds to connect back."""
        try:
            await asyncio.wait_for(run.listening.wait(), self.options.timeout)
        except asyncio.TimeoutError:
            if self.run is run:
                await self.stop(
                    f"pvserver did not connect back within {self.options.timeout:.0f} s of its "
                    f"job's start (job {run.job.get('id', '?')}); its output is below."
                )
                self.state = "failed"

    async def _follow(self, run: Run) -> None:
        """Read pvserver's lines: its state marks, refusals, and (None) its exit."""
        while (line := await run.lines.get()) is not None:
            if line.startswith(batchjob.MARK):
                with contextlib.suppress(ValueError):
                    self._job_event(run, json.loads(line.removeprefix(batchjob.MARK)))
                continue
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
            if not _for_the_user(run, line):
                continue
            self.log(line)
            if "connection ids do not match" in line:
                run.refusals += 1
                if run.refusals >= MAX_REFUSALS and self.run is run:
                    self.log(f"{run.refusals} clients with a wrong id: new port and id")
                    self._background(self.restart())
        assert run.process is not None
        await self._stopped(run, await run.process.wait())

    async def _listening(self, run: Run, port: int) -> None:
        """pvserver listens: clients reach it on ``port``, or through a loopback relay
        (to its namespace, or to its rendezvous when it connected back)."""
        if run.rendezvous is not None:
            rendezvous = run.rendezvous
            run.relay = await netns.LoopbackRelay(
                None,
                on_refusal=self.note_refusal,
                on_join=lambda ended: self._joined(run, ended),
                log=self.log,
                open_inner=rendezvous.join,
            ).start()
            port = run.relay.port or 0
        elif run.connector is not None:
            run.relay = await netns.LoopbackRelay(
                run.connector,
                port,
                on_refusal=self.note_refusal,
                on_join=lambda ended: self._watch_handshake(run, ended),
                log=self.log,
            ).start()
            port = run.relay.port
        run.port = port
        self.state, self.message = "running", "Waiting for a client."
        run.listening.set()
        self.log(f"listening on port {run.port}, reachable on {run.network}")

    def _joined(self, run: Run, ended: asyncio.Event) -> None:
        """A client was joined to the pvserver that connected back (the handshake is
        done): it is connected until its connection ends, then pvserver comes back."""
        run.connected = True
        run.connected_event.set()
        self.message = "A client is connected."
        self.log("client connected")
        self._background(self._client_left(run, ended))

    async def _client_left(self, run: Run, ended: asyncio.Event) -> None:
        await ended.wait()
        if self.run is run and run.connected:
            run.connected = False
            run.connected_event.clear()
            if self.state == "running":
                self.message = "The client left; pvserver starts again in its job."

    def _watch_handshake(self, run: Run, ended: asyncio.Event) -> None:
        """A client came through the relay: it must finish the handshake (pvserver says
        "connected") or leave within the site's ``handshake_timeout`` (by default
        HANDSHAKE_TIMEOUT), or pvserver starts anew."""
        if not run.connected:
            self._background(self._handshake_deadline(run, ended))

    async def _handshake_deadline(self, run: Run, ended: asyncio.Event) -> None:
        timeout = self.options.handshake_timeout
        waits = [asyncio.ensure_future(e.wait()) for e in (run.connected_event, ended)]
        _done, pending = await asyncio.wait(
            waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for wait in pending:
            wait.cancel()
        if run.connected or ended.is_set() or self.run is not run:
            return
        self.log(
            f"a connection to pvserver did not finish ParaView's handshake within "
            f"{timeout:g} s and held it; starting pvserver anew"
        )
        self.stalls += 1
        await self.restart()

    async def _stopped(self, run: Run, code: int) -> None:
        """The one clean-up of a run, however it ended: its relay, X server and files go."""
        if run.relay is not None:
            await run.relay.close()
        if run.rendezvous is not None:
            await run.rendezvous.close()
        if run.xserver is not None:
            await asyncio.to_thread(run.xserver.stop)
        remove_tree(run.workdir)
        if self.run is not run:
            return
        self.run = None
        run.listening.set()  # wake waiters: they see the failure
        if self.state == "stopping":
            return
        if run.ending:  # a Slurm job: refused, or ended (walltime, scancel, a failure)
            ran = run.arrived and code != batchjob.EXIT_REFUSED
            self.state = "stopped" if ran else "failed"
            if ran:
                self.message = run.ending + "; connect() starts a new one."
            else:
                self.message = run.ending + "."
                if code == batchjob.EXIT_REFUSED:
                    self.message += (
                        " Ask for fewer ranks, or ask your administrators to check the site "
                        "configuration's [apps.paraview] partition, account, time and "
                        "extra_args."
                    )
                if _last_lines(run):
                    self.message += " Its output is below."
        elif not run.connected:
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
        """Stop pvserver and everything it started (its group's whole tree)."""
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
        await run.group.stop()  # SIGTERM, SIGHUP, then SIGKILL after the grace
        if run.follower is not None:
            await run.follower  # it sees the exit and cleans up
        self.state, self.message = "stopped", message

    async def restart(self, ranks: int | None = None, wait: float | None = None) -> dict[str, Any]:
        """Stop and start as one step (on ``ranks`` ranks if given): a start asked for
        meanwhile waits for it, so it neither starts a second pvserver nor has its own
        marked stopped."""
        async with self.lock:
            if ranks is not None:
                self._check_ranks(ranks, restarting=True)
                self.starter.ranks = ranks
            await self._stop("Restarting…")
            await self._start()
            run = self.run
        return await self._until_listening(run, wait)


def _queue_words(job: dict[str, str], arrived: bool = False) -> str:
    """Where a job is, as its user says it: "pending: Resources", then where it starts
    (and, once pvserver has connected back, where it runs)."""
    job_id, state = job.get("id", "?"), job.get("state", "")
    if state == "PENDING":
        reason = job.get("reason", "")
        if reason in ("", "None"):  # just submitted: the scheduler has not looked yet
            reason = "waiting for the scheduler"
        words = f"pvserver's job {job_id} is pending: {reason}"
        start = parse_time(job.get("start", ""))
        if start is not None:
            words += f"; Slurm expects it to start at {start:%Y-%m-%d %H:%M} UTC"
        return words + "."
    if state in ("RUNNING", "CONFIGURING"):
        where = job.get("nodes") or "its node"
        if arrived:
            return f"pvserver's job {job_id} runs on {where}."
        return f"pvserver's job {job_id} is starting on {where}…"
    return f"pvserver's job {job_id} is {state.lower() or 'submitted'}."


def _job_status(run: Run | None, live: bool) -> dict[str, Any] | None:
    """The status page's job rows: id, state, nodes, ranks, the walltime left (only
    while ``live``: the run is the current one, not one that has ended)."""
    if run is None or not run.job:
        return None
    job = run.job
    running = live and job.get("state") == "RUNNING"
    end = parse_time(job.get("end", "")) if running else None
    now = datetime.now(timezone.utc)
    left = None if end is None else max(0, round((end - now).total_seconds()))
    return {
        "id": job.get("id"),
        "state": job.get("state"),
        "reason": job.get("reason"),
        "nodes": job.get("nodes"),
        "ranks": job.get("tasks"),
        "time_limit": job.get("time_limit"),
        "time_left": left,
        "words": _queue_words(job, run.arrived),
        "ending": run.ending or None,
    }


def _callback(run: Run | None) -> str | None:
    rendezvous = run.rendezvous if run is not None else None
    if rendezvous is None or rendezvous.port is None:
        return None
    return f"{rendezvous.host}:{rendezvous.port}"


def _addresses(host: str) -> set[str]:
    """The IPv4 and IPv6 addresses of ``host`` (a node's name), empty if unknown."""
    if not host:
        return set()
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return set()
    return {str(info[4][0]) for info in infos}


def _last_lines(run: Run | None) -> list[str]:
    """A run's last lines (also once it has ended), as its user should read them."""
    if run is None or run.process is None:
        return []
    lines = [ANSI_ESCAPE.sub("", line) for line in run.process.tail.lines]
    return [line for line in lines if _for_the_user(run, line)][-TAIL_SHOWN:]


def _for_the_user(run: Run, line: str) -> bool:
    """Whether a line of the run's output means something to its user: not the keeper's
    and pvserver's marks, and not pvserver's address inside its namespace."""
    if line.startswith((MARK, netns.MARK, batchjob.MARK)):
        return False
    return run.connector is None or not line.startswith(INNER_ADDRESS_LINES)


async def _quietly(work: Coroutine[Any, Any, Any]) -> None:
    """A background restart whose start fails: the status says why, to every client."""
    with contextlib.suppress(StartFailed):
        await work


def _user_name(uid: int | None) -> str | None:
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def main(argv: list[str] | None = None) -> None:
    """``python -m hpc_proxies.paraview.service``: the service, served by :mod:`.web`."""
    from .web import main as serve  # web imports this module, so only when run

    serve(argv)


if __name__ == "__main__":
    main()
