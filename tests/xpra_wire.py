"""Just enough of the Xpra 3.1 wire protocol (over a websocket) to test authentication.

Integration tests need to prove that a proxied Xpra really accepts the right password
and rejects a wrong one, without a browser and without importing xpra (its modules
live in the system Python only). This mirrors what the HTML5 client does
(``/usr/share/xpra/www/js/Protocol.js`` and ``Client.js``): bencoded packets behind an
8-byte ``P`` header, a ``hello``, and an HMAC answer to the server's ``challenge``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import struct
import zlib
from typing import Any

import aiohttp

XPRA_VERSION = "3.1.3"
# Same order as the HTML5 client with forge loaded; the server picks the strongest.
DIGESTS = ["hmac", "hmac+md5", "xor", "hmac+sha1", "hmac+sha256", "hmac+sha384", "hmac+sha512"]
_HEADER = struct.Struct("!BBBBL")  # "P", protocol flags, compression level, chunk index, size


def bencode(obj: Any) -> bytes:
    """Encode like xpra's bencoder (str as UTF-8, bool as int, tuple as list)."""
    if isinstance(obj, bool | int):
        return b"i%de" % int(obj)
    if isinstance(obj, str):
        obj = obj.encode()
    if isinstance(obj, bytes):
        return b"%d:%s" % (len(obj), obj)
    if isinstance(obj, list | tuple):
        return b"l" + b"".join(bencode(x) for x in obj) + b"e"
    if isinstance(obj, dict):
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in obj.items()) + b"e"
    raise TypeError(f"cannot bencode {type(obj).__name__}")


def bdecode(data: bytes, pos: int = 0) -> tuple[Any, int]:
    """Decode one value at ``pos``; strings stay bytes (salts are binary), ``u`` is UTF-8."""
    c = data[pos : pos + 1]
    if c == b"i":
        end = data.index(b"e", pos)
        return int(data[pos + 1 : end]), end + 1
    if c in (b"l", b"d"):
        items, pos = [], pos + 1
        while data[pos : pos + 1] != b"e":
            item, pos = bdecode(data, pos)
            items.append(item)
        if c == b"l":
            return items, pos + 1
        return dict(zip(items[::2], items[1::2], strict=True)), pos + 1
    if c == b"u":
        s, pos = bdecode(data, pos + 1)
        return s.decode(), pos
    if c.isdigit():
        colon = data.index(b":", pos)
        start = colon + 1
        end = start + int(data[pos:colon])
        return data[start:end], end
    raise ValueError(f"invalid bencode type {c!r} at {pos}")


def encode_packet(packet: list[Any]) -> bytes:
    """Frame a packet the way the HTML5 client does: uncompressed, unencrypted bencode."""
    payload = bencode(packet)
    return _HEADER.pack(ord("P"), 0, 0, 0, len(payload)) + payload


class PacketReader:
    """Reassembles packets from websocket messages (they may split or batch packets)."""

    def __init__(self) -> None:
        self.buf = b""
        self.chunks: dict[int, bytes] = {}

    def feed(self, data: bytes) -> list[list[Any]]:
        """Add received bytes; return every packet that is now complete."""
        self.buf += data
        packets = []
        while len(self.buf) >= _HEADER.size:
            magic, flags, level, index, size = _HEADER.unpack_from(self.buf)
            if magic != ord("P") or flags:
                raise ValueError(f"unsupported packet header {self.buf[:8]!r}")
            if len(self.buf) < _HEADER.size + size:
                break
            body = self.buf[_HEADER.size : _HEADER.size + size]
            self.buf = self.buf[_HEADER.size + size :]
            if level & 0x70:  # lz4 / lzo / brotli: we only advertise zlib
                raise ValueError(f"unsupported compression level {level:#x}")
            if level:
                body = zlib.decompress(body)
            if index:  # raw chunk substituted into the next main packet
                self.chunks[index] = body
                continue
            packet, _ = bdecode(body)
            for i, chunk in self.chunks.items():
                packet[i] = chunk
            self.chunks = {}
            packets.append(packet)
        return packets


def gendigest(digest: str, secret: bytes, salt: bytes) -> bytes:
    """Same as xpra.net.digest.gendigest for ``hmac[+hash]`` and ``xor``."""
    if digest.startswith("hmac"):
        _, _, name = digest.partition("+")
        return hmac.new(secret, salt, getattr(hashlib, name or "md5")).hexdigest().encode()
    if digest == "xor":
        salt = salt.ljust(len(secret), b"\0")[: len(secret)]
        return bytes(a ^ b for a, b in zip(secret, salt, strict=True))
    raise ValueError(f"unsupported digest {digest!r}")


def challenge_response(packet: list[Any], password: str) -> tuple[bytes, bytes]:
    """Answer ``["challenge", server_salt, cipher_caps, digest, salt_digest, prompt]``.

    Returns (challenge_response, client_salt). The client salt is ASCII so the server's
    ``strget`` reads it back unchanged.
    """
    server_salt: bytes = packet[1]
    digest = packet[3].decode()
    salt_digest = packet[4].decode() if len(packet) > 4 and packet[4] else "xor"
    n = len(server_salt) if salt_digest == "xor" else 32
    client_salt = secrets.token_hex(n)[:n].encode()
    salt = gendigest(salt_digest, client_salt, server_salt)
    return gendigest(digest, password.encode(), salt), client_salt


def make_hello(**extra: Any) -> dict[str, Any]:
    """Minimal HTML5-like hello: bencode only, zlib only, no encryption."""
    caps: dict[str, Any] = {
        "version": XPRA_VERSION,
        "client_type": "HTML5",
        "platform": "linux",
        "session-type": "xpra_wire (pytest)",
        "namespace": True,
        "share": True,
        "steal": False,
        "encoding.generic": True,
        "websocket.multi-packet": True,
        "username": "",
        "uuid": secrets.token_hex(16),
        "digest": DIGESTS,
        "salt-digest": DIGESTS,
        "zlib": True,
        "lz4": False,
        "lzo": False,
        "brotli": False,
        "compression_level": 1,
        "rencode": False,
        "bencode": True,
        "yaml": False,
        # Without encodings a UI client is refused after auth succeeded.
        "encodings": ["png", "rgb32"],
        "encodings.core": ["png", "rgb32"],
        "encodings.rgb_formats": ["RGBX", "RGBA"],
        # No window forwarding: we only prove auth, and must not trip over server-side
        # window code (e.g. Debian's xpra fails on window icons without python3-pil).
        "windows": False,
        "keyboard": False,  # don't touch the shared session's keymap
    }
    caps.update(extra)
    return caps


async def _converse(ws: aiohttp.ClientWebSocketResponse, password: str | None) -> str:
    """Send the hello, answer at most the challenges, stop at the first verdict."""
    # Like Client.js: with a password, the first hello only announces a challenge.
    hello = make_hello(challenge=True) if password is not None else make_hello()
    await ws.send_bytes(encode_packet(["hello", hello]))
    reader = PacketReader()
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.BINARY:
            break
        for packet in reader.feed(msg.data):
            kind = packet[0].decode()
            if kind == "hello":
                return "hello"
            if kind == "disconnect":
                reasons = [
                    r.decode(errors="replace") if isinstance(r, bytes) else str(r)
                    for r in packet[1:]
                ]
                return "disconnect: " + " ".join(reasons)
            if kind == "challenge":
                if password is None:
                    return "challenge-without-password"
                response, client_salt = challenge_response(packet, password)
                hello = make_hello(challenge_response=response, challenge_client_salt=client_salt)
                await ws.send_bytes(encode_packet(["hello", hello]))
    return "closed"


async def xpra_ws_handshake(
    session: aiohttp.ClientSession,
    url: str,
    password: str | None,
    *,
    timeout: float = 20.0,
    headers: dict[str, str] | None = None,
) -> str:
    """Connect to Xpra at ``url`` and report how authentication ended.

    Returns "hello" (accepted), "disconnect: <reason>", "challenge-without-password"
    or "closed". Raises asyncio.TimeoutError after ``timeout`` seconds.
    """

    async def run() -> str:
        async with session.ws_connect(url, protocols=("binary",), headers=headers) as ws:
            return await _converse(ws, password)

    # wait_for rather than asyncio.timeout: the project still supports Python 3.10.
    return await asyncio.wait_for(run(), timeout)


def handshake(
    url: str,
    password: str | None,
    headers: dict[str, str] | None = None,
    unix_socket: str | None = None,
) -> str:
    """Blocking wrapper for tests; ``unix_socket`` talks to xpra's socket directly."""

    async def run() -> str:
        connector = aiohttp.UnixConnector(path=unix_socket) if unix_socket else None
        async with aiohttp.ClientSession(connector=connector) as session:
            return await xpra_ws_handshake(session, url, password, headers=headers)

    return asyncio.run(run())
