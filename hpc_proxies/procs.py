"""Finding and stopping every process an app started, on Linux.

jupyter-server-proxy only signals its direct child, and apps such as Xpra put their
X server in a process group of its own, so neither "kill the child" nor "kill the
group" is enough. The launcher makes itself a child subreaper (orphans come back
to it), starts the app in a new session, and stops everything that is in that
session or below the launcher.
"""

from __future__ import annotations

import ctypes
import os
import signal
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    return libc.prctl(option, value, 0, 0, 0) == 0


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to us instead of to init."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def signal_on_parent_death(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send us ``signum`` when our parent dies, even by SIGKILL."""
    return _prctl(PR_SET_PDEATHSIG, int(signum))


def proc_info(pid: int) -> ProcInfo | None:
    """Parse /proc/PID/stat; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return ProcInfo(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0])


def start_time(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch; None if it is gone. A file that
    names a pid but is older than the process with that pid was not written by it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    ticks = int(raw[raw.rindex(")") + 2 :].split()[19])
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def all_processes() -> list[ProcInfo]:
    """Every process we can see, skipping ones that vanish while we look."""
    infos = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = proc_info(int(entry))
            if info is not None:
                infos.append(info)
    return infos


def descendants(root: int, procs: list[ProcInfo] | None = None) -> set[int]:
    """PIDs of all live processes below ``root`` (not ``root`` itself)."""
    procs = all_processes() if procs is None else procs
    children: dict[int, list[int]] = {}
    for p in procs:
        if p.state != "Z":
            children.setdefault(p.ppid, []).append(p.pid)
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def session_members(sid: int, procs: list[ProcInfo] | None = None) -> set[int]:
    """PIDs of all live processes in session ``sid``."""
    procs = all_processes() if procs is None else procs
    return {p.pid for p in procs if p.sid == sid and p.state != "Z"}


def send(pids: set[int], signum: int) -> None:
    """Signal each pid, ignoring the ones that already exited."""
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def reap_children() -> dict[int, int]:
    """Collect every exited child without blocking; return {pid: wait status}."""
    reaped = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped[pid] = status
    return reaped


def exit_code(status: int) -> int:
    """A wait status as a shell-style exit code (negative for a signal)."""
    return os.waitstatus_to_exitcode(status)
