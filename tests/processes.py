"""Helpers the tests use to look at processes: what runs, as whom, and what is left."""

from __future__ import annotations

import contextlib
import pwd
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from waiting import until

from hpc_proxies import procs


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def environ_of(pid: int) -> dict[str, str]:
    """The environment ``pid`` started with, from /proc."""
    return dict(
        item.split("=", 1)
        for item in Path(f"/proc/{pid}/environ").read_text(errors="replace").split("\0")
        if "=" in item
    )


def uids_of(pid: int) -> set[int]:
    """The real, effective, saved and filesystem uids of ``pid``, from /proc (none if
    it has ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return set()
    (line,) = (line for line in status.splitlines() if line.startswith("Uid:"))
    return {int(uid) for uid in line.split()[1:]}


def launchers(pids: set[int]) -> dict[str, int]:
    """The hpc-proxies launcher among ``pids`` of each app (``--app NAME``), by name."""
    found = {}
    for pid in pids:
        argv = cmdline(pid)
        if "hpc_proxies.launcher" in argv and "--app" in argv:
            found[argv[argv.index("--app") + 1]] = pid
    return found


def launcher_runtime_dir(launcher: int) -> Path:
    """The private runtime directory of a launcher: where its ``--socket`` is."""
    argv = cmdline(launcher)
    return Path(argv[argv.index("--socket") + 1]).parent


def tcp_listeners(pids: set[int]) -> list[str]:
    """The ``ss`` lines of TCP listeners (in this network namespace) owned by any of
    ``pids``."""
    lines = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
    return [line for line in lines.splitlines() if any(f"pid={pid}," in line for pid in pids)]


def tcp_ports(pids: set[int]) -> set[int]:
    """The ports those listeners listen on."""
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in tcp_listeners(pids)}


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


@dataclass(frozen=True)
class LocalUser:
    """An ordinary account of this machine, for running what another user of a shared
    node could run (``nobody`` owns nothing; this one has a home and a group)."""

    name: str
    uid: int
    gid: int

    def argv(self, *argv: str) -> list[str]:
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--init-groups",
            "--",
            *argv,
        ]

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(*argv), capture_output=True, text=True, timeout=timeout, env=self.env()
        )

    def popen(self, *argv: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.argv(*argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(),
        )

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "HOME": f"/home/{self.name}", "USER": self.name}


def ordinary_user(name: str) -> LocalUser:
    """The account ``name``, made (with a home directory) if this machine lacks it."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
        entry = pwd.getpwnam(name)
    return LocalUser(name, entry.pw_uid, entry.pw_gid)


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if (info := procs.proc_info(pid)) and info.state != "Z"}


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait until none of ``pids`` runs any more; return those still running (empty
    if all went), for the caller's assertion to name them."""
    left = set(pids)

    def gone() -> bool:
        nonlocal left
        left = alive(left)
        return not left

    with contextlib.suppress(AssertionError):
        until(gone, timeout, "the processes to end", interval=0.1)
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


def xdpyinfo(display: str, xauthority: str) -> str:
    """What ``xdpyinfo`` says of an X display, opened with the given cookie file (as a
    program in the desktop opens it)."""
    return subprocess.run(
        ["xdpyinfo", "-display", display],
        env={"PATH": "/usr/bin", "XAUTHORITY": xauthority},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def x_extensions(display: str, xauthority: str) -> list[str]:
    """The X server's extensions, as ``xdpyinfo`` lists them."""
    info = xdpyinfo(display, xauthority)
    listed = info.split("number of extensions:", 1)[1].split("default screen number")[0]
    return listed.split()[1:]


def status_bytes(pid: int, name: str) -> int:
    """``VmRSS``, ``VmHWM``... of ``pid`` in bytes, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {name} in /proc/{pid}/status")
