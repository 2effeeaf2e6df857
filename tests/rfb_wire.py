"""Just enough of RFB 3.8 (the VNC protocol, RFC 6143) to test a VNC server's login.

Integration tests need to prove that a proxied VNC server really speaks RFB, offers
only VncAuth, accepts the launch password and refuses a wrong one, without a browser.
This does what noVNC does up to the first framebuffer message: version, security
type, the VncAuth DES answer to the server's challenge, SecurityResult, ClientInit
and ServerInit. It talks either through a websocket (the Jupyter URL, or the
bridge's unix socket) or straight to the VNC server's own unix socket.
"""

from __future__ import annotations

import asyncio
import struct

import aiohttp
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

VERSION = b"RFB 003.008\n"
SECURITY_NONE = 1
SECURITY_VNCAUTH = 2


class ProtocolError(Exception):
    """The peer did not speak RFB 3.8 as expected (or closed the connection early)."""


def _reverse_bits(byte: int) -> int:
    return int(f"{byte:08b}"[::-1], 2)


def vncauth_response(password: str, challenge: bytes) -> bytes:
    """DES-ECB of the 16-byte challenge, keyed with the password as VNC does it:
    padded with NULs or cut to 8 bytes, and each key byte's bits reversed."""
    if len(challenge) != 16:
        raise ValueError(f"a VncAuth challenge has 16 bytes, not {len(challenge)}")
    key = bytes(_reverse_bits(b) for b in password.encode("latin-1")[:8].ljust(8, b"\0"))
    # Three equal DES keys make 3DES (EDE) single DES, which VncAuth mandates.
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305 (RFB's choice)
    return encryptor.update(challenge) + encryptor.finalize()


class _Stream:
    """Exact reads and writes over either transport."""

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def _more(self) -> bytes:
        """The next chunk of received bytes; b"" when the peer closed."""
        raise NotImplementedError

    def __init__(self) -> None:
        self.buf = b""

    async def recv(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = await self._more()
            if not chunk:
                raise ProtocolError(f"closed after {self.buf!r}, wanted {n} bytes")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    async def recv_u32(self) -> int:
        return struct.unpack("!I", await self.recv(4))[0]

    async def recv_string(self) -> str:
        return (await self.recv(await self.recv_u32())).decode(errors="replace")


class _WebSocketStream(_Stream):
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__()
        self.ws = ws

    async def send(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def _more(self) -> bytes:
        msg = await self.ws.receive()
        if msg.type == aiohttp.WSMsgType.BINARY:
            return msg.data
        if msg.type == aiohttp.WSMsgType.TEXT:
            return msg.data.encode()
        return b""


class _UnixStream(_Stream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _more(self) -> bytes:
        return await self.reader.read(65536)


async def converse(stream: _Stream, password: str | None) -> tuple:
    """Run the RFB 3.8 handshake as far as ``password`` allows.

    Returns ("types", (types...)) if ``password`` is None (nothing is chosen),
    ("ok", width, height, name) after ServerInit, or ("refused", reason) when the
    server offers no security type or rejects the password.
    """
    banner = await stream.recv(len(VERSION))
    if banner != VERSION:
        raise ProtocolError(f"expected the RFB 3.8 banner {VERSION!r}, got {banner!r}")
    await stream.send(VERSION)
    (count,) = await stream.recv(1)
    if count == 0:
        return ("refused", await stream.recv_string())
    types = tuple(await stream.recv(count))
    if password is None:
        return ("types", types)
    if SECURITY_VNCAUTH not in types:
        raise ProtocolError(f"the server does not offer VncAuth: {types}")
    await stream.send(bytes([SECURITY_VNCAUTH]))
    challenge = await stream.recv(16)
    await stream.send(vncauth_response(password, challenge))
    if await stream.recv_u32() != 0:
        return ("refused", await stream.recv_string())
    await stream.send(b"\x01")  # ClientInit: shared, so other viewers stay connected
    width, height = struct.unpack("!HH", await stream.recv(4))
    await stream.recv(16)  # the pixel format
    return ("ok", width, height, await stream.recv_string())


async def ws_handshake(
    session: aiohttp.ClientSession,
    url: str,
    password: str | None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 20.0,
) -> tuple:
    """RFB over the websocket at ``url`` (subprotocol "binary", as noVNC uses).

    Raises aiohttp.WSServerHandshakeError if the websocket itself is refused.
    """

    async def run() -> tuple:
        async with session.ws_connect(url, protocols=("binary",), headers=headers) as ws:
            return await converse(_WebSocketStream(ws), password)

    # wait_for rather than asyncio.timeout: the project still supports Python 3.10.
    return await asyncio.wait_for(run(), timeout)


async def socket_handshake(path: str, password: str | None, *, timeout: float = 20.0) -> tuple:
    """RFB straight to the VNC server's unix socket, without Jupyter or the bridge."""

    async def run() -> tuple:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            return await converse(_UnixStream(reader, writer), password)
        finally:
            writer.close()

    return await asyncio.wait_for(run(), timeout)


def handshake(
    url: str,
    password: str | None,
    headers: dict[str, str] | None = None,
    unix_socket: str | None = None,
) -> tuple:
    """Blocking wrapper for tests: RFB through a websocket at ``url``.

    ``unix_socket`` connects the websocket through that socket (e.g. the bridge's)
    instead of TCP; the URL's host is then only the Host header.
    """

    async def run() -> tuple:
        connector = aiohttp.UnixConnector(path=unix_socket) if unix_socket else None
        async with aiohttp.ClientSession(connector=connector) as session:
            return await ws_handshake(session, url, password, headers=headers)

    return asyncio.run(run())


def direct_handshake(rfb_socket: str, password: str | None) -> tuple:
    """Blocking wrapper for tests: RFB straight to the VNC server's ``rfb_socket``."""
    return asyncio.run(socket_handshake(rfb_socket, password))


def banner(url: str, headers: dict[str, str] | None = None) -> bytes:
    """The first 12 bytes the websocket at ``url`` sends: the RFB version banner."""

    async def run() -> bytes:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, protocols=("binary",), headers=headers) as ws:
                return await _WebSocketStream(ws).recv(len(VERSION))

    return asyncio.run(asyncio.wait_for(run(), 20))
