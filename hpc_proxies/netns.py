"""A TCP-only server that no other host can reach: its own network namespace.

    python -m hpc_proxies.netns --connector SOCK -- COMMAND [ARG ...]

Some apps can only listen on TCP, and on every interface (ParaView 5.11's pvserver has
no bind address). This module runs such a server where "every interface" means one
loopback nobody else shares:

* the *keeper* (this module's ``main``) moves itself into new user and network
  namespaces (unprivileged: it maps only its own uid and gid, so nothing gains a
  privilege), brings the namespace's loopback up, and starts COMMAND there, which dies
  with it;
* COMMAND listens on its port inside the namespace: no host, and no other user of this
  one, can connect to it;
* the keeper answers on ``SOCK``, a unix socket in a private directory (unix sockets
  with a path cross network namespaces; TCP does not): each request names a port and
  gets back a TCP socket already connected to it inside the namespace, passed as a file
  descriptor;
* :class:`LoopbackRelay`, in the service on the host, listens on 127.0.0.1 and joins
  each client that connects to one such socket. The client's connection goes forward,
  as with a direct connection, so protocols whose roles follow the TCP direction
  (ParaView's handshake does) work unchanged.

Where the kernel does not allow unprivileged namespaces (``user.max_user_namespaces``
is 0, an AppArmor or SELinux policy forbids them, a container without them), the keeper
prints :data:`MARK` ``unavailable <reason>`` and exits with :data:`EXIT_UNAVAILABLE`;
the caller decides whether to run without isolation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

from .procs import signal_on_parent_death

MARK = "HPC-PROXIES-NETNS"
EXIT_UNAVAILABLE = 5
CHUNK = 256 * 1024
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
HOW_TO_ENABLE = (
    "unprivileged user namespaces are not allowed here; an administrator enables them "
    "(sysctl user.max_user_namespaces=10000; on Ubuntu also "
    "kernel.apparmor_restrict_unprivileged_userns=0; on old Debian kernels "
    "kernel.unprivileged_userns_clone=1)"
)


class NamespaceUnavailable(OSError):
    """This kernel, or its policy, does not let this user make the namespaces."""


# ------------------------------------------------------------------ in the namespace
def enter_private_network() -> None:
    """Move this process into new user and network namespaces, as the same uid and gid,
    with the loopback up. The process must be single-threaded (a kernel rule)."""
    uid, gid = os.getuid(), os.getgid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NamespaceUnavailable(errno, f"unshare: {os.strerror(errno)}; {HOW_TO_ENABLE}")
    # An unprivileged process may map only itself, and only with setgroups denied.
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    _loopback_up()


def _loopback_up() -> None:
    """``ip link set lo up``, without needing iproute2: SIOCSIFFLAGS on ``lo``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _answer(conn: socket.socket) -> None:
    """One connector request: ``PORT\\n`` in, a connected socket (or an error line) out."""
    with conn:
        try:
            port = int(conn.recv(16).split(b"\n")[0])
            if not 0 < port < 65536:
                raise ValueError(port)
            inner = socket.create_connection(("127.0.0.1", port), timeout=5)
        except (OSError, ValueError) as err:
            conn.sendall(f"error {err}\n".encode())
            return
        with inner:
            socket.send_fds(conn, [b"ok\n"], [inner.fileno()])


async def _keep(connector: Path, command: list[str]) -> int:
    """Serve the connector until COMMAND ends; pass on SIGTERM, SIGINT and SIGHUP."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        connector.unlink()
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(connector))
    finally:
        os.umask(old_umask)
    listener.listen(16)
    listener.setblocking(False)
    child = subprocess.Popen(command, preexec_fn=signal_on_parent_death)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, child.send_signal, signum)

    async def serve() -> None:
        while True:
            conn, _ = await loop.sock_accept(listener)
            conn.setblocking(True)
            conn.settimeout(5)
            await asyncio.to_thread(_answer, conn)

    server = loop.create_task(serve())
    try:
        status = await asyncio.to_thread(child.wait)
    finally:
        server.cancel()
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            connector.unlink()
    return status if status >= 0 else 128 - status  # a signal's number, as a shell says


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc_proxies.netns", description=__doc__)
    parser.add_argument("--connector", required=True, type=Path, help="unix socket to make")
    parser.add_argument("command", nargs="+", help="the server to run inside")
    args = parser.parse_args(argv)
    try:
        enter_private_network()
    except OSError as err:
        print(MARK, "unavailable", err, flush=True)
        return EXIT_UNAVAILABLE
    print(MARK, "ready", flush=True)
    return asyncio.run(_keep(args.connector, args.command))


# ------------------------------------------------------------------ on the host
def keeper_argv(connector: Path, command: list[str]) -> list[str]:
    """The argv that runs ``command`` in a private network namespace."""
    return [
        sys.executable,
        "-m",
        "hpc_proxies.netns",
        "--connector",
        str(connector),
        "--",
        *command,
    ]


def connect_inside(connector: Path, port: int) -> socket.socket:
    """A TCP socket connected to ``port`` inside the namespace (blocking)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as request:
        request.settimeout(10)
        request.connect(str(connector))
        request.sendall(f"{port}\n".encode())
        message, fds, _, _ = socket.recv_fds(request, 256, 1)
    if not fds:
        raise ConnectionRefusedError(message.decode(errors="replace").strip() or "no answer")
    return socket.socket(fileno=fds[0])


class LoopbackRelay:
    """A TCP port on the host's 127.0.0.1 whose connections go on to ``inner_port``
    inside the namespace, both ways, with backpressure."""

    def __init__(self, connector: Path, inner_port: int):
        self.connector = connector
        self.inner_port = inner_port
        self.server: asyncio.base_events.Server | None = None
        self.port: int | None = None
        self.joins: set[asyncio.Task[None]] = set()

    async def start(self) -> LoopbackRelay:
        self.server = await asyncio.start_server(self._join, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.joins):
            task.cancel()
        if self.server is not None:
            await self.server.wait_closed()

    async def _join(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.joins.add(task)
        try:
            try:
                inner = await asyncio.to_thread(connect_inside, self.connector, self.inner_port)
            except OSError:
                return  # the client sees its connection closed, as with no server
            inner.setblocking(False)
            inner_reader, inner_writer = await asyncio.open_connection(sock=inner)
            directions = [
                asyncio.ensure_future(_pipe(reader, inner_writer)),
                asyncio.ensure_future(_pipe(inner_reader, writer)),
            ]
            try:
                # Each direction ends at its EOF (passed on as a half-close); a reset or
                # an error ends both.
                await asyncio.wait(directions, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for direction in directions:
                    direction.cancel()
                inner_writer.close()
        finally:
            writer.close()
            self.joins.discard(task)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while chunk := await source.read(CHUNK):
        sink.write(chunk)
        await sink.drain()  # waits while the other side is slow: backpressure
    if sink.can_write_eof():
        sink.write_eof()


if __name__ == "__main__":
    sys.exit(main())
