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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from errno import ENOSPC
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
    "(sysctl user.max_user_namespaces=10000 and user.max_net_namespaces=10000; on Ubuntu "
    "also kernel.apparmor_restrict_unprivileged_userns=0; on old Debian kernels "
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
        code = ctypes.get_errno()
        why = os.strerror(code) + (": the user.max_user_namespaces limit" if code == ENOSPC else "")
        raise NamespaceUnavailable(code, f"unshare: {why}; {HOW_TO_ENABLE}")
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
    try:
        child = subprocess.Popen(command, preexec_fn=signal_on_parent_death)
    except OSError as err:
        print(f"cannot start {command[0]}: {err}", file=sys.stderr, flush=True)
        return 127
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
    parser.add_argument("--check", action="store_true", help="only say whether it works here")
    parser.add_argument("--connector", type=Path, help="unix socket to make")
    parser.add_argument("command", nargs="*", help="the server to run inside")
    args = parser.parse_args(argv)
    if not args.check and (args.connector is None or not args.command):
        parser.error("--connector and a command are needed (or --check)")
    try:
        enter_private_network()
    except NamespaceUnavailable as err:
        print(MARK, "unavailable", err.strerror, flush=True)
        return EXIT_UNAVAILABLE
    except OSError as err:  # mapping the ids or the loopback was refused
        print(MARK, "unavailable", f"{err}; {HOW_TO_ENABLE}", flush=True)
        return EXIT_UNAVAILABLE
    print(MARK, "ready", flush=True)
    if args.check:
        return 0
    return asyncio.run(_keep(args.connector, args.command))


# ------------------------------------------------------------------ on the host
def unavailable_reason() -> str | None:
    """None if this user may make the namespaces here; otherwise why not (a child
    process tries, since making them changes the process that does)."""
    done = subprocess.run(
        [sys.executable, "-m", "hpc_proxies.netns", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode == 0:
        return None
    line = done.stdout.strip().removeprefix(f"{MARK} unavailable").strip()
    return line or done.stderr.strip() or f"the check exited with code {done.returncode}"


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
    inner = socket.socket(fileno=fds[0])
    inner.setblocking(True)  # the keeper's side had a timeout, so O_NONBLOCK came along
    no_delay(inner)
    return inner


#: The kernel's tables of TCP sockets (of the reader's network namespace), with owners.
PROC_NET_TCP = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def _proc_net_address(field: str) -> tuple[str, int]:
    """``0100007F:1F90`` (the address as 32-bit words in host order, the port in hex)."""
    hex_address, hex_port = field.split(":")
    words = [int(hex_address[i : i + 8], 16) for i in range(0, len(hex_address), 8)]
    packed = struct.pack(f"={len(words)}I", *words)
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    address = socket.inet_ntop(family, packed)
    if address.startswith("::ffff:") and "." in address:
        address = address.removeprefix("::ffff:")
    return address, int(hex_port, 16)


def loopback_peer_uid(conn: socket.socket) -> int | None:
    """Who owns the other end of ``conn``, an accepted TCP connection from this host: its
    socket is in the kernel's table with the two addresses swapped, and its uid beside
    it. None if that socket is gone (or not of this host): treat it as a stranger."""
    try:
        peer = conn.getpeername()[:2]
    except OSError:  # it has already gone: nobody to let in
        return None
    own = conn.getsockname()[:2]
    for table in PROC_NET_TCP:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue  # no IPv6 on this host
        for line in lines:
            fields = line.split()
            if _proc_net_address(fields[1]) == peer and _proc_net_address(fields[2]) == own:
                return int(fields[7])
    return None


@dataclass(frozen=True)
class Refusal:
    """A connection the relay refused because another user (or nobody known) owned it."""

    when: float  # time.time()
    uid: int | None  # None: its owner could not be found
    #: The address it came from, when not from this host (no owner to look up there).
    address: str = ""


class LoopbackRelay:
    """A TCP port on the host's 127.0.0.1 whose connections go on to ``inner_port``
    inside the namespace. The bytes move in the kernel (``splice`` through a pipe, a
    thread per direction), with backpressure: twice the throughput of an asyncio copy
    (``bench/netns_bench.py``). Accepting is async, in the caller's event loop.

    Any user of the host can connect to a port on 127.0.0.1, so the relay first looks up
    who owns the connecting socket (:func:`loopback_peer_uid`) and closes it, before a
    byte is forwarded, unless it is ``allowed_uid`` (by default this process's user).
    Another user then cannot even reach the server's handshake, let alone stall it;
    ``on_refusal`` hears of each attempt. ``on_join`` gets, for each connection let
    through, an event set when that connection has ended (so the caller can time a
    handshake).

    ``open_inner``, when given, replaces the connector: it gets each client let through
    (blocking, in a thread of its own) and returns the socket to join it to, or raises
    OSError (e.g. a server that connects back to us, :mod:`hpc_proxies.paraview.rendezvous`)."""

    def __init__(
        self,
        connector: Path | None,
        inner_port: int = 0,
        allowed_uid: int | None = None,
        on_refusal: Callable[[Refusal], None] | None = None,
        on_join: Callable[[asyncio.Event], None] | None = None,
        log: Callable[[str], None] | None = None,
        open_inner: Callable[[socket.socket], socket.socket] | None = None,
    ):
        if open_inner is None and connector is None:
            raise ValueError("a relay needs a connector or open_inner")
        self.connector = connector
        self.open_inner = open_inner
        self.log = log
        self.inner_port = inner_port
        self.allowed_uid = os.getuid() if allowed_uid is None else allowed_uid
        self.on_refusal = on_refusal
        self.on_join = on_join
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port: int | None = None
        self.listener: socket.socket | None = None
        self.accepting: asyncio.Task[None] | None = None
        self.open: set[socket.socket] = set()

    async def start(self) -> LoopbackRelay:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.loop = asyncio.get_running_loop()
        self.accepting = self.loop.create_task(self._accept())
        return self

    async def close(self) -> None:
        """Stop accepting and end every joined connection."""
        if self.accepting is not None:
            self.accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.accepting
        if self.listener is not None:
            self.listener.close()
        for sock in list(self.open):
            shut(sock)

    async def _accept(self) -> None:
        assert self.listener is not None
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(self.listener)
            uid = loopback_peer_uid(client)
            if uid != self.allowed_uid:
                shut(client)
                client.close()
                if self.on_refusal is not None:
                    self.on_refusal(Refusal(time.time(), uid))
                continue
            client.setblocking(True)
            no_delay(client)
            try:
                inner = await asyncio.to_thread(self._inner, client)
            except OSError as err:
                client.close()  # the client sees its connection closed, as with no server
                if self.log is not None:
                    self.log(f"a client's connection was closed: pvserver is unreachable ({err})")
                continue
            self.open.update((client, inner))
            ended = asyncio.Event()
            other = threading.Thread(target=_splice, args=(inner, client), daemon=True)
            other.start()
            threading.Thread(
                target=self._forward_then_close,
                args=(client, inner, other, ended),
                daemon=True,
            ).start()
            if self.on_join is not None:
                self.on_join(ended)

    def _inner(self, client: socket.socket) -> socket.socket:
        if self.open_inner is not None:
            return self.open_inner(client)
        assert self.connector is not None
        return connect_inside(self.connector, self.inner_port)

    def _forward_then_close(
        self,
        client: socket.socket,
        inner: socket.socket,
        other: threading.Thread,
        ended: asyncio.Event,
    ) -> None:
        _splice(client, inner)
        other.join()
        for sock in (client, inner):
            self.open.discard(sock)
            sock.close()
        assert self.loop is not None
        # Once the event loop has closed (the service is gone), nobody waits for this.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(ended.set)


def _splice(source: socket.socket, sink: socket.socket) -> None:
    """Move bytes until the source's EOF (passed on as a half-close); on an error, end
    the connection both ways."""
    pipe_out, pipe_in = os.pipe()
    try:
        while moved := os.splice(source.fileno(), pipe_in, CHUNK):
            while moved:
                moved -= os.splice(pipe_out, sink.fileno(), moved)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        shut(source)
        shut(sink)
    finally:
        os.close(pipe_out)
        os.close(pipe_in)


def no_delay(sock: socket.socket) -> None:
    """A relay must not hold back a small write for the next one (Nagle): a request
    and its reply would each wait for a delayed ACK, 40 ms a round trip."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


if __name__ == "__main__":
    sys.exit(main())
