"""When the Jupyter server runs inside a Slurm job: when does that job end, and where
does it run?

A user whose desktop or ParaView session lives in a batch job loses it, unsaved, at the
job's time limit; the pages can only warn them if something knows the end. Slurm knows
it, and an admin may move it (``scontrol update TimeLimit=``), so it is asked again now
and then (:class:`JobClock`), never computed once from the start time.

Slurm is asked with ``scontrol show job -o ID``, run with ``TZ=UTC0`` and
``SLURM_TIME_FORMAT=standard`` so its times are ``YYYY-MM-DDTHH:MM:SS`` in UTC whatever
the node's or the user's time zone and time format are. Every failure (no ``scontrol``,
a job Slurm no longer knows, no answer within 2 s) gives ``None`` and a reason, never an
exception: the end of the job is a courtesy, the server must run without it.

:func:`ask_slurm` and :func:`job_end` are coroutines: they run ``scontrol`` as a
subprocess of the server's event loop, which they never block. :func:`placement` (for
``hpc-proxies status``) says which job, step and node a process runs in, and whether
Slurm's process tracking (``ProctrackType``) keeps the apps inside the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo

log = logging.getLogger(__name__)

ENV_JOB_ID = "SLURM_JOB_ID"
# Older Slurm (and some wrappers) set only this one.
ENV_JOB_ID_OLD = "SLURM_JOBID"
TIMEOUT = 2.0
# How often JobClock asks Slurm again: an admin can extend the job meanwhile.
INTERVAL = 60.0
# What Slurm prints where a time or a limit is not known or does not exist.
NO_TIME = frozenset({"", "unknown", "none", "n/a", "(null)", "infinite", "unlimited"})
_JOB_ID = re.compile(r"\d+")
_SLURM_TIME = "%Y-%m-%dT%H:%M:%S"


@dataclass(frozen=True)
class JobTime:
    """When job ``job_id`` ends (an aware datetime)."""

    job_id: str
    end: datetime

    def remaining(self, now: datetime | None = None) -> float:
        """Seconds until the end, never below 0 (a job may outlive its end by ``KillWait``)."""
        now = now or datetime.now(timezone.utc)
        return max(0.0, (self.end - now).total_seconds())

    def to_json(self, now: datetime | None = None) -> dict[str, object]:
        """``{"id": "42", "end": ISO 8601 with offset, "remaining": seconds}``."""
        return {"id": self.job_id, "end": self.end.isoformat(), "remaining": self.remaining(now)}


def job_from_env(env: Mapping[str, str]) -> str | None:
    """The id of the Slurm job this environment is inside, or None outside a job."""
    for name in (ENV_JOB_ID, ENV_JOB_ID_OLD):
        value = env.get(name, "").strip()
        if _JOB_ID.fullmatch(value):
            return value
    return None


def parse_time(text: str, tz: tzinfo = timezone.utc) -> datetime | None:
    """A Slurm time (``2026-12-01T11:20:00``, in ``tz``) as an aware datetime; None for
    ``Unknown``, ``NONE``, ``N/A``, unlimited and anything else that is not a time."""
    text = text.strip()
    if text.lower() in NO_TIME:
        return None
    try:
        return datetime.strptime(text, _SLURM_TIME).replace(tzinfo=tz)
    except ValueError:
        return None


def parse_record(line: str) -> dict[str, str]:
    """One ``scontrol show job -o`` line as ``{key: value}``. Values of some keys (e.g.
    ``Command=``, ``Reason=``) may hold spaces: a word without ``=`` continues the
    previous value."""
    record: dict[str, str] = {}
    key: str | None = None
    for word in line.strip().split(" "):
        name, eq, value = word.partition("=")
        if eq and re.fullmatch(r"[A-Za-z][\w:/]*", name):
            key = name
            record[key] = value
        elif key is not None and word:
            record[key] += " " + word
    return record


#: What ``scontrol`` is run with, so that its times read as :func:`parse_time` takes them.
SCONTROL_ENV = {"TZ": "UTC0", "SLURM_TIME_FORMAT": "standard"}


def find_record(output: str, job_id: str) -> dict[str, str] | None:
    """``job_id``'s record in ``scontrol show job -o`` output, or None."""
    for line in output.splitlines():
        record = parse_record(line)
        if record.get("JobId") == job_id:
            return record
    return None


def end_from_show_job(
    output: str, job_id: str, tz: tzinfo = timezone.utc
) -> tuple[JobTime | None, str]:
    """The end of ``job_id`` from ``scontrol show job -o`` output; else None and why."""
    record = find_record(output, job_id)
    if record is None:
        return None, f"Slurm said nothing about job {job_id}"
    if record.get("TimeLimit", "").strip().lower() in NO_TIME:
        return None, f"job {job_id} has no time limit"
    end = parse_time(record.get("EndTime", ""), tz)
    if end is None:
        state = record.get("JobState", "?")
        return None, f"Slurm does not know when job {job_id} ends ({state})"
    return JobTime(job_id, end), ""


async def ask_slurm(
    job_id: str, env: Mapping[str, str] | None = None, timeout: float = TIMEOUT
) -> tuple[JobTime | None, str]:
    """When job ``job_id`` ends, asked of Slurm now (run with ``env``, this process's
    environment if None); or None and the reason (empty when there is an end)."""
    run_env = {**(os.environ if env is None else env), **SCONTROL_ENV}
    argv = ["scontrol", "show", "job", "-o", job_id]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=run_env,
        )
    except OSError as e:  # FileNotFoundError: Slurm's commands are not on PATH
        return None, f"cannot run scontrol: {e}"
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return None, f"scontrol gave no answer within {timeout:g} s"
    if proc.returncode != 0:
        why = err.decode(errors="replace").strip() or f"exit code {proc.returncode}"
        return None, f"scontrol show job {job_id}: {why}"
    return end_from_show_job(out.decode(errors="replace"), job_id)


async def job_end(
    job_id: str, env: Mapping[str, str] | None = None, timeout: float = TIMEOUT
) -> JobTime | None:
    """When job ``job_id`` ends, or None (the reason is logged; :func:`ask_slurm` returns it)."""
    found, why = await ask_slurm(job_id, env, timeout)
    if found is None:
        log.debug("no end for Slurm job %s: %s", job_id, why)
    return found


class JobClock:
    """The end of one job, asked of Slurm at most once per ``interval`` seconds (a page
    polling it must not run ``scontrol`` each time, and Slurm's controller is shared),
    but again after that, since an admin can extend the job. Failures are cached for
    the same interval; :attr:`reason` says why there is no end."""

    def __init__(
        self,
        job_id: str,
        env: Mapping[str, str] | None = None,
        *,
        interval: float = INTERVAL,
        timeout: float = TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id = job_id
        self.env = dict(os.environ if env is None else env)
        self.interval = interval
        self.timeout = timeout
        self.reason = "not asked yet"
        self._clock = clock
        self._time: JobTime | None = None
        self._asked: float | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs) -> JobClock | None:
        """A clock for the job this environment is inside; None outside any job."""
        env = os.environ if env is None else env
        job_id = job_from_env(env)
        return None if job_id is None else cls(job_id, env, **kwargs)

    async def time(self) -> JobTime | None:
        """The job's end: Slurm's last answer, asked again when it is older than
        ``interval``. Callers at the same time share one ``scontrol``."""
        async with self._lock:
            now = self._clock()
            if self._asked is None or now - self._asked >= self.interval:
                self._time, self.reason = await ask_slurm(self.job_id, self.env, self.timeout)
                self._asked = self._clock()
        return self._time

    async def get(self, now: datetime | None = None) -> dict[str, object] | None:
        """``JobTime.to_json`` of the job's end (remaining counted from ``now``), or None."""
        found = await self.time()
        return None if found is None else found.to_json(now)


# -- where a server runs: the job, the node, and whether Slurm keeps the apps inside it --

#: What Slurm's process tracking means for the apps, by ``ProctrackType``: what escapes
#: the job (and outlives its end or ``scancel``). None: nothing does.
TRACKING_WARNINGS: dict[str, str | None] = {
    "proctrack/cgroup": None,
    "proctrack/linuxproc": (
        "Slurm tracks the job's processes by their parent process ids: the apps hpc-proxies "
        "starts stay inside the job (their launcher adopts what they orphan), but a program "
        "that daemonises from elsewhere (a notebook kernel, a terminal) leaves it and "
        "outlives the job. Sites that can should use ProctrackType=proctrack/cgroup."
    ),
    "proctrack/pgid": (
        "Slurm tracks the job's processes by their process group, and hpc-proxies starts "
        "each app in a session (and group) of its own, so scancel and the job's end do not "
        "reach the apps: their launcher stops them only when the Jupyter server ends "
        "cleanly. Use ProctrackType=proctrack/cgroup."
    ),
}


@dataclass(frozen=True)
class Placement:
    """The Slurm job (and step, and node) a process runs in, and Slurm's process
    tracking there (``proctrack``: None if Slurm did not say, with ``why``)."""

    job_id: str
    node: str
    step: str | None
    proctrack: str | None
    why: str = ""

    @property
    def warning(self) -> str | None:
        """What escapes the job under this tracking, if anything (unknown types too)."""
        if self.proctrack is None:
            return None
        if self.proctrack in TRACKING_WARNINGS:
            return TRACKING_WARNINGS[self.proctrack]
        return (
            f"Slurm's process tracking here is {self.proctrack}, which hpc-proxies does not "
            "know: check that a process that daemonises stays in the job."
        )

    def to_json(self) -> dict[str, object]:
        return {
            "job": self.job_id,
            "node": self.node,
            "step": self.step,
            "proctrack": self.proctrack,
            "proctrack_unknown_because": self.why or None,
            "warning": self.warning,
        }


def proctrack_from_config(output: str) -> str | None:
    """``ProctrackType`` from ``scontrol show config`` output (``Key = value`` lines)."""
    for line in output.splitlines():
        key, eq, value = line.partition("=")
        if eq and key.strip() == "ProctrackType":
            return value.strip() or None
    return None


def process_tracking(
    env: Mapping[str, str] | None = None, timeout: float = TIMEOUT
) -> tuple[str | None, str]:
    """Slurm's ``ProctrackType`` as ``scontrol show config`` tells it; else None and why."""
    try:
        done = subprocess.run(
            ["scontrol", "show", "config"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(os.environ if env is None else env),
        )
    except OSError as e:
        return None, f"cannot run scontrol: {e}"
    except subprocess.TimeoutExpired:
        return None, f"scontrol gave no answer within {timeout:g} s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return None, f"scontrol show config: {last[-300:]}"
    found = proctrack_from_config(done.stdout)
    return (found, "") if found else (None, "scontrol show config names no ProctrackType")


def placement(env: Mapping[str, str] | None = None) -> Placement | None:
    """Where this process runs if it is inside a Slurm job (None outside one): the job,
    its step, the node (Slurm's name for it), and the process tracking."""
    env = os.environ if env is None else env
    job_id = job_from_env(env)
    if job_id is None:
        return None
    node = env.get("SLURMD_NODENAME") or socket.gethostname()
    step = env.get("SLURM_STEP_ID") or None
    proctrack, why = process_tracking(env)
    return Placement(job_id, node, step, proctrack, why)
