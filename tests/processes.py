"""Helpers the tests use to look at processes: what runs, as whom, and what is left."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from hpc_proxies import procs


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def find_process(pids: set[int], needle: str) -> int:
    for pid in pids:
        if any(needle in arg for arg in cmdline(pid)[:2]):
            return pid
    raise AssertionError(f"no {needle} among {sorted(pids)}")


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    """Run ``argv`` as another local user: what any user of a shared node could do."""
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if (info := procs.proc_info(pid)) and info.state != "Z"}


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait until none of ``pids`` runs any more; return those still running."""
    deadline = time.monotonic() + timeout
    left = alive(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = alive(left)
    return left


def assert_stopping_leaves_nothing(server, app: str, signum: int = signal.SIGTERM) -> set[int]:
    """Signal the Jupyter server: every process below it ends within 10 s and the app's
    runtime directory is removed. Returns the processes that were running before."""
    runtime = server.runtime_dir(app)
    everything = server.descendants()
    server.proc.send_signal(signum)
    server.proc.wait(15)
    left = wait_gone(everything, 10)
    assert not left, [cmdline(pid) for pid in left]
    assert not runtime.exists(), f"{runtime} left behind"
    return everything
