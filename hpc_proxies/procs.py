"""Finding and stopping every process an app started, on Linux.

jupyter-server-proxy only signals its direct child, and apps such as Xpra put their
X server in a process group of its own, so neither "kill the child" nor "kill the
group" is enough. The launcher makes itself a child subreaper (orphans come back
to it), starts the app in a new session, and stops everything that is in that
session or below the launcher. A process that may be killed before its ``atexit``
runs (the ParaView kernel) leaves its temporary directory to a ``DirectoryReaper``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
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


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from its third field (the state) on; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def proc_info(pid: int) -> ProcInfo | None:
    """Parse /proc/PID/stat; None if the process is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return ProcInfo(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0])


def start_time(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch; None if it is gone. A file that
    names a pid but is older than the process with that pid was not written by it."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


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


def smaps_bytes(pid: int, fields: tuple[str, ...]) -> int | None:
    """The sum of ``fields`` of ``pid``'s ``smaps_rollup`` (e.g. ``("Pss:",)``), in
    bytes; None if it is gone or not ours to read."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return 1024 * sum(int(line.split()[1]) for line in f if line.startswith(fields))
    except (OSError, ValueError):
        return None


def pss_bytes(pid: int) -> int | None:
    """The proportional set size of ``pid`` (its share of memory it shares with other
    processes); None if it is gone or not ours to read."""
    return smaps_bytes(pid, ("Pss:",))


def tree_memory(root: int) -> tuple[list[int], int]:
    """``root`` and every live process below it, and the sum of their PSS in bytes:
    what stopping that tree would give back."""
    pids = sorted({root} | descendants(root))
    return pids, sum(pss_bytes(pid) or 0 for pid in pids)


def unix_connections(path: str | os.PathLike[str]) -> int:
    """How many connections a listener bound at ``path`` has accepted and not yet
    closed. The kernel names an accepted socket after its listener's bind path, even
    after the socket file is renamed, so the app's own bind path is the one to ask for."""
    wanted = os.fspath(path)
    count = 0
    with open("/proc/net/unix") as f:
        next(f)  # the header
        for line in f:
            fields = line.split(None, 7)
            # Num RefCount Protocol Flags Type St Inode Path; St 03 is "connected".
            if len(fields) == 8 and fields[5] == "03" and fields[7].rstrip("\n") == wanted:
                count += 1
    return count


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


def reap(pids: set[int]) -> None:
    """Collect those of ``pids`` that are exited children of ours, without blocking.
    Never "any child" (``waitpid(-1)``): that takes the exit status of a helper that
    another thread waits for."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue


def exit_code(status: int) -> int:
    """A wait status as a shell-style exit code (negative for a signal)."""
    return os.waitstatus_to_exitcode(status)


#: The reaper's program (``python -I -S -c``): wait until no process holds the pipe's
#: write end any more (its holder has ended, however it ended: SIGKILL included), then
#: remove the directory.
_REAPER = """
import os, shutil, sys
while os.read(0, 4096):
    pass
try:
    shutil.rmtree(sys.argv[1])
except FileNotFoundError:
    pass  # its holder removed it on a clean exit
"""


class DirectoryReaper:
    """A tiny process that removes a directory once this process has ended.

    ``atexit`` does not run when a process is killed: the Jupyter server's kernel
    manager kills a kernel's process group on its way down, and a kernel orphaned by a
    SIGKILLed server ends itself with ``os._exit``. The reaper blocks on a pipe whose
    write end only this process holds (non-inheritable; inherited only by children
    forked without exec, whose end then counts too), so the kernel's end of the pipe
    closes on any death. It runs in a session of its own, so a kill of this process's
    group does not take it along before it has done its one job.
    """

    def __init__(self, directory: str | os.PathLike[str], python: str | None = None) -> None:
        read_end, self._write_end = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [python or sys.executable, "-I", "-S", "-c", _REAPER, os.fspath(directory)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            os.close(read_end)

    def remove_now(self, timeout: float = 10.0) -> None:
        """Let go of the pipe: the reaper removes the directory now and exits."""
        if self._write_end >= 0:
            os.close(self._write_end)
            self._write_end = -1
        self.proc.wait(timeout)
