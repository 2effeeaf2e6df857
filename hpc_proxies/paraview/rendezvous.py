"""Where a pvserver on other nodes connects back to: nothing of it listens there.

ParaView 5.11 has no bind address: a pvserver that listens does so on every interface
of its node, where every user of the cluster can reach (and stall) it, and no network
namespace can hide it once its ranks span nodes. So a pvserver run as a Slurm job is
started in *reverse-connection* mode (``--rc``): rank 0 connects to this module's
:class:`Rendezvous`, a TCP listener of the ParaView service on the Jupyter server's
node, and the job's nodes have no pvserver port at all.

ParaView's handshake follows the TCP direction: whoever connects speaks first and the
one who accepted answers. The user's kernel connects forward (through the service's
loopback relay), and pvserver connects too; so the rendezvous answers both, as the
accepting side would, and then joins the two connections byte for byte:

1. the socket layer's four tagged messages (byte order, protocol version, VTK source
   hash, one more flag): the accepting side sends its own values back, which are the
   same for the same ParaView build, so each is echoed;
2. ParaView's handshake (tag :data:`HANDSHAKE_TAG`): a length, then a string such as
   ``paraview-5.11.connect_id.4242.renderingbackend.opengl2``; the answer
   (tag :data:`ANSWER_TAG`) is :data:`ACCEPTED`, or :data:`WRONG_ID` (as pvserver
   answers a wrong connect-id).

A connection to the rendezvous is let in only if it comes from this user (when from
this host: its socket's owner in ``/proc/net/tcp``) or from one of the job's nodes,
and presents this run's connect-id within the handshake timeout; each is handled on
its own, so a connection that says nothing stalls nobody. ``tests/test_paraview_slurm``
holds the contract: a real pvserver and a real client joined through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import re
import socket
import struct
import time
from collections.abc import Callable

from .. import netns

#: The socket layer's handshake messages, in the order the connecting side sends them.
SOCKET_TAGS = (0x3C3C3C3C, 0x3E3E3E3E, 0x3F3F3F3F, 0x3D3D3D3D)
HANDSHAKE_TAG = 99991
ANSWER_TAG = 99990
ACCEPTED = 0
WRONG_ID = 3
#: No handshake message is longer than this (the longest is ParaView's version string).
MESSAGE_LIMIT = 4096
CONNECT_ID = re.compile(r"(?:^|\.)connect_id\.(\d+)(?:\.|$)")


class HandshakeRefused(OSError):
    """A connection did not present this run's ParaView handshake; the message says why."""


class WrongId(HandshakeRefused):
    """A ParaView handshake with another connect-id: a guess, or another run's process."""


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise HandshakeRefused("the connection closed during ParaView's handshake")
        data += chunk
    return data


def _message(sock: socket.socket, tag: int) -> bytes:
    """One tagged message (tag, length, data), which must carry ``tag``."""
    got, length = struct.unpack("<II", _exactly(sock, 8))
    if got != tag or length > MESSAGE_LIMIT:
        raise HandshakeRefused(f"not ParaView's handshake (tag {got:#x}, {length} bytes)")
    return _exactly(sock, length)


def answer_handshake(sock: socket.socket, connect_id: int, timeout: float) -> None:
    """Answer a connecting ParaView process (client or reverse pvserver) as the accepting
    side would; raise :class:`HandshakeRefused` unless it presents ``connect_id``."""
    sock.settimeout(timeout)
    for tag in SOCKET_TAGS:
        value = _message(sock, tag)
        sock.sendall(struct.pack("<II", tag, len(value)) + value)
    _message(sock, HANDSHAKE_TAG)  # the string's length, sent again with the string
    handshake = _message(sock, HANDSHAKE_TAG).rstrip(b"\0").decode("ascii", "replace")
    found = CONNECT_ID.search(handshake)
    presented = found.group(1) if found else ""
    accepted = hmac.compare_digest(presented.encode(), str(connect_id).encode())
    sock.sendall(struct.pack("<IIi", ANSWER_TAG, 4, ACCEPTED if accepted else WRONG_ID))
    if not accepted:
        raise WrongId("a wrong connect-id")
    sock.settimeout(None)


class Rendezvous:
    """The TCP listener a reverse pvserver connects to, and the pvserver that did.

    The last pvserver to present the id is *parked* until a client joins it
    (:meth:`join`); a new one (the job starts pvserver again after a client leaves)
    replaces it. ``allowed_hosts`` gives the addresses of the job's nodes (asked
    anew at each connection: they are known only once the job runs)."""

    def __init__(
        self,
        connect_id: int,
        host: str,
        handshake_timeout: float,
        allowed_hosts: Callable[[], set[str]],
        on_arrival: Callable[[], None],
        on_refusal: Callable[[netns.Refusal], None],
        log: Callable[[str], None],
        on_wrong_id: Callable[[int], None] | None = None,
    ) -> None:
        self.connect_id = connect_id
        self.host = host
        self.handshake_timeout = handshake_timeout
        self.allowed_hosts = allowed_hosts
        self.on_arrival = on_arrival
        self.on_refusal = on_refusal
        self.log = log
        self.port: int | None = None
        self.listener: socket.socket | None = None
        self.accepting: asyncio.Task[None] | None = None
        self.checks: set[asyncio.Task[None]] = set()
        self.parked: socket.socket | None = None
        self.arrivals = 0
        #: Connections from the job's node that presented a wrong connect-id: someone
        #: there guesses; ``on_wrong_id`` hears the count (the service then starts anew).
        self.wrong_ids = 0
        self.on_wrong_id = on_wrong_id

    async def start(self) -> Rendezvous:
        self.listener = socket.create_server((self.host, 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.accepting = asyncio.get_running_loop().create_task(self._accept())
        return self

    async def close(self) -> None:
        tasks = [t for t in (self.accepting, *self.checks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.listener is not None:
            self.listener.close()
        self._unpark()

    def _unpark(self) -> None:
        if self.parked is not None:
            netns.shut(self.parked)
            self.parked.close()
            self.parked = None

    async def _accept(self) -> None:
        assert self.listener is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, address = await loop.sock_accept(self.listener)
            task = loop.create_task(self._check(conn, address[0]))
            self.checks.add(task)
            task.add_done_callback(self.checks.discard)

    async def _check(self, conn: socket.socket, address: str) -> None:
        """Let pvserver in; refuse anyone else, without holding up the next one."""
        uid = netns.loopback_peer_uid(conn)  # found only for a socket of this host
        if uid is not None:
            allowed = uid == os.getuid()
        else:
            allowed = address in self.allowed_hosts()
        try:
            if not allowed:
                raise HandshakeRefused("not this user's, nor from the job's nodes")
            conn.setblocking(True)
            await asyncio.to_thread(answer_handshake, conn, self.connect_id, self.handshake_timeout)
        except OSError as err:  # HandshakeRefused, a timeout, a reset
            netns.shut(conn)
            conn.close()
            self.on_refusal(netns.Refusal(time.time(), uid, "" if uid is not None else address))
            self.log(f"refused a connection to pvserver's rendezvous from {address}: {err}")
            if isinstance(err, WrongId):
                self.wrong_ids += 1
                if self.on_wrong_id is not None:
                    self.on_wrong_id(self.wrong_ids)
            return
        netns.no_delay(conn)
        self._unpark()
        self.parked = conn
        self.arrivals += 1
        self.on_arrival()

    def join(self, client: socket.socket) -> socket.socket:
        """The parked pvserver, for ``client`` (a kernel let through the loopback relay),
        once the client has presented the id; blocking (the relay runs it in a thread)."""
        if self.parked is None:
            raise ConnectionRefusedError("pvserver has not connected back (yet)")
        answer_handshake(client, self.connect_id, self.handshake_timeout)
        server, self.parked = self.parked, None
        if server is None:
            raise ConnectionRefusedError("pvserver has gone (a new one connects back)")
        return server
