"""A private X display: Xvfb with no TCP listener and a cookie only its owner can read.

Programs that render with GLX (ParaView 5.11's Debian build) need an X display even
when nobody looks at it. On a shared login node a display is reachable by every user
through ``/tmp/.X11-unix``, so it is protected by an MIT-MAGIC-COOKIE-1 in a 0600
authority file that both the X server (``-auth``) and its clients (``XAUTHORITY``)
read. The one entry in that file has an empty display number, which libXau treats as
"any display": the file can be written before ``-displayfd`` tells which number the
server took.

Standard library only (with the core's ``runtime`` and ``procs``): the ParaView
kernel imports this too.
"""

from __future__ import annotations

import os
import secrets
import select
import signal
import struct
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .procs import signal_on_parent_death
from .runtime import write_private_file

FAMILY_WILD = 0xFFFF
COOKIE_NAME = b"MIT-MAGIC-COOKIE-1"
DEFAULT_SCREEN = "1920x1200x24"


def xauthority_entry(cookie: bytes, number: str = "") -> bytes:
    """One Xauthority record (libXau's format): any host, display ``number`` ("" = any)."""

    def counted(data: bytes) -> bytes:
        return struct.pack(">H", len(data)) + data

    return (
        struct.pack(">H", FAMILY_WILD)
        + counted(b"")
        + counted(number.encode())
        + counted(COOKIE_NAME)
        + counted(cookie)
    )


def desktop_script() -> Path:
    """``x-desktop.sh``: an X server on a free display (``-displayfd``), then a session
    on it, in sh; what a VNC server's wrapper script does, without its interpreter."""
    return Path(str(resources.files("hpc_proxies.static") / "x-desktop.sh"))


def write_xauthority(path: str | os.PathLike[str]) -> Path:
    """A new 0600 authority file holding a fresh 128-bit cookie from ``secrets``."""
    return write_private_file(path, xauthority_entry(secrets.token_bytes(16)))


class XServerError(RuntimeError):
    """The X server did not come up; the message carries its output."""


@dataclass
class XServer:
    """A running private X server."""

    proc: subprocess.Popen[bytes]
    display: str
    xauthority: Path

    def environ(self) -> dict[str, str]:
        """What a client needs to open this display."""
        return {"DISPLAY": self.display, "XAUTHORITY": str(self.xauthority)}

    def stop(self, grace: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def xvfb_argv(xvfb: str, xauthority: Path, displayfd: int, screen: str = DEFAULT_SCREEN) -> list:
    """No TCP, cookie authentication, the display number reported on ``displayfd``."""
    return [
        xvfb,
        "-displayfd",
        str(displayfd),
        "-nolisten",
        "tcp",
        "-auth",
        str(xauthority),
        "-screen",
        "0",
        screen,
        "-nocursor",
        # Without it the server resets when its last client leaves, and a client that
        # connects during the reset is refused (pvserver opens and closes a test
        # connection before its real one).
        "-noreset",
    ]


def _die_with_parent() -> None:
    """In the child: SIGTERM when the thread that started us ends (Linux)."""
    signal_on_parent_death(signal.SIGTERM)


def start_xvfb(
    directory: str | os.PathLike[str],
    xvfb: str = "Xvfb",
    screen: str = DEFAULT_SCREEN,
    timeout: float = 20.0,
    die_with_parent: bool = False,
    new_session: bool = True,
) -> XServer:
    """Start Xvfb with a new cookie in ``directory`` (which must be private) and wait
    until it has taken a display number."""
    xauthority = Path(directory) / "Xauthority"
    xauthority.unlink(missing_ok=True)
    write_xauthority(xauthority)
    log_path = Path(directory) / "Xvfb.log"
    read_end, write_end = os.pipe()
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                xvfb_argv(xvfb, xauthority, write_end, screen),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_end,),
                start_new_session=new_session,
                preexec_fn=_die_with_parent if die_with_parent else None,
            )
    finally:
        os.close(write_end)
    try:
        number = _read_display_number(read_end, proc, timeout)
    finally:
        os.close(read_end)
    if number is None:
        proc.kill()
        proc.wait()
        output = log_path.read_text(errors="replace").strip()
        raise XServerError(f"{xvfb} did not start within {timeout:.0f} s: {output[-2000:]}")
    return XServer(proc, f":{number}", xauthority)


def _read_display_number(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
        if ready:
            chunk = os.read(fd, 64)
            if not chunk:
                return None  # Xvfb closed the pipe without a number: it failed
            data += chunk
        elif proc.poll() is not None:
            return None
    number = data.split(b"\n", 1)[0].strip().decode()
    return number if number.isdigit() else None


def run_with_display(command: list[str], xvfb: str = "Xvfb") -> int:
    """Run ``command`` with a private Xvfb of its own (in a fresh 0700 directory on this
    node), passing on SIGTERM, SIGINT and SIGHUP; the Xvfb and the directory go with
    it. Each rank of a pvserver job runs under this on its node (``main``)."""
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="hpc-proxies-x-")  # 0700, on this node
    server = None
    try:
        server = start_xvfb(directory, xvfb, die_with_parent=True)
        child = subprocess.Popen(command, env={**os.environ, **server.environ()})
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda number, _frame: child.send_signal(number))
        code = child.wait()
        return code if code >= 0 else 128 - code
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m hpc_proxies.xdisplay [--xvfb XVFB] -- COMMAND ...``"""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m hpc_proxies.xdisplay",
        description="Run COMMAND with a private Xvfb of its own.",
    )
    parser.add_argument("--xvfb", default="Xvfb")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    try:
        return run_with_display(args.command, args.xvfb)
    except (XServerError, OSError) as err:
        print(f"hpc_proxies.xdisplay: {err}", flush=True)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
