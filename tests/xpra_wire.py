"""Just enough of the Xpra 3.1 wire protocol (over a websocket) to test authentication
and the stream's encryption.

Integration tests need to prove that a proxied Xpra really accepts the right password
and rejects a wrong one, and, with ``[apps.xpra] encryption = "AES"``, that the stream
is encrypted and only a client with the launch's key can read it, without a browser
and without importing xpra (its modules live in the system Python only). This mirrors
what the HTML5 client does (``/usr/share/xpra/www/js/Protocol.js`` and ``Client.js``):
bencoded packets behind an 8-byte ``P`` header, a ``hello``, and an HMAC answer to the
server's ``challenge``.

Encryption (``key``), as Xpra 3.1 and its HTML5 client do it: the client's first hello
is plain and carries its cipher capabilities (a random IV and key salt); from then on
every packet the server sends is AES-CBC encrypted (header flag 0x2) with a key
stretched from the shared key by PBKDF2-HMAC-SHA1 with that salt, padded to 32 bytes
(the header gives the unpadded size). The server's ``challenge`` carries its own IV
and salt, for what the client sends; the client's second hello has new ones (the
server re-keys both directions), and the server's hello its last ones. Each direction
is one CBC stream over all its packets.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

XPRA_VERSION = "3.1.3"
# Same order as the HTML5 client with forge loaded; the server picks the strongest.
DIGESTS = ["hmac", "hmac+md5", "xor", "hmac+sha1", "hmac+sha256", "hmac+sha384", "hmac+sha512"]
_HEADER = struct.Struct("!BBBBL")  # "P", protocol flags, compression level, chunk index, size
#: The header's protocol flag of an encrypted packet (Xpra's FLAGS_CIPHER).
FLAG_CIPHER = 0x2
#: Xpra's only cipher, as the client names it in its hello.
CIPHER = "AES"
#: The stretched key's length, which Xpra 3.1 and the HTML5 client also pad packets to.
BLOCK_SIZE = 32
KEY_STRETCH_ITERATIONS = 1000
#: What the HTML5 client offers; Xpra pads what it receives that way. Its own output it
#: pads with the padding the client's hello names in ``cipher.padding``: the HTML5
#: client names none, so the server uses its default, "legacy" (spaces).
PADDING_OPTIONS = ["PKCS#7"]
SERVER_PADDING = "legacy"


class UndecodablePacket(ValueError):
    """A packet that does not decrypt or decode: the wrong key, or not Xpra."""


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


# ---------------------------------------------------------------- encryption
def cipher_caps() -> dict[str, Any]:
    """A client's cipher capabilities for its hello, new random IV and salt each time
    (Client.js ``_make_hello_base``: 16 and 32 random bytes)."""
    return {
        "cipher": CIPHER,
        "cipher.iv": secrets.token_bytes(16),
        "cipher.key_salt": secrets.token_bytes(32),
        "cipher.key_stretch_iterations": KEY_STRETCH_ITERATIONS,
        "cipher.padding.options": PADDING_OPTIONS,
    }


def _cap(caps: Mapping, name: str) -> Any:
    """A capability by name, whether the keys are str (ours) or bytes (decoded)."""
    value = caps.get(name, caps.get(name.encode()))
    if value is None:
        raise UndecodablePacket(f"no {name!r} in the cipher capabilities")
    return value


def _as_bytes(value: str | bytes) -> bytes:
    # Xpra reads these capabilities as latin-1 strings and writes them back as latin-1.
    return value if isinstance(value, bytes) else value.encode("latin1")


def _pad(padding: str, size: int) -> bytes:
    if padding == "PKCS#7":
        return bytes([size]) * size
    if padding == "legacy":
        return b" " * size
    raise ValueError(f"unknown padding {padding!r}")


def padded_size(size: int) -> int:
    """What an encrypted packet of ``size`` bytes takes on the wire: Xpra always pads,
    1 to 32 bytes (a whole block when the size is a multiple of it)."""
    return size + BLOCK_SIZE - size % BLOCK_SIZE


class AESStream:
    """One direction of an Xpra connection's AES-CBC stream, from the cipher
    capabilities that side announced and the shared key."""

    def __init__(self, caps: Mapping, key: str, padding: str) -> None:
        if _as_bytes(_cap(caps, "cipher")) != CIPHER.encode():
            raise UndecodablePacket(f"unsupported cipher {_cap(caps, 'cipher')!r}")
        stretched = PBKDF2HMAC(
            algorithm=hashes.SHA1(),  # noqa: S303 (Xpra 3.1's choice)
            length=BLOCK_SIZE,
            salt=_as_bytes(_cap(caps, "cipher.key_salt")),
            iterations=int(_cap(caps, "cipher.key_stretch_iterations")),
        ).derive(key.encode())
        cipher = Cipher(algorithms.AES(stretched), modes.CBC(_as_bytes(_cap(caps, "cipher.iv"))))
        self._encryptor = cipher.encryptor()
        self._decryptor = cipher.decryptor()
        self.padding = padding

    def encrypt(self, payload: bytes) -> bytes:
        pad = padded_size(len(payload)) - len(payload)
        return self._encryptor.update(payload + _pad(self.padding, pad))

    def decrypt(self, data: bytes, size: int) -> bytes:
        """``data`` as on the wire (padded), ``size`` the header's; the padding is
        checked as Xpra does (a wrong key leaves none of it)."""
        plain = self._decryptor.update(data)
        if plain[size:] != _pad(self.padding, len(data) - size):
            raise UndecodablePacket(f"{self.padding} padding not found: the wrong key?")
        return plain[:size]


def encode_packet(packet: list[Any], cipher: AESStream | None = None) -> bytes:
    """Frame a packet the way the HTML5 client does: uncompressed bencode, encrypted
    (flag 0x2) if given the connection's outgoing ``cipher``."""
    payload = bencode(packet)
    if cipher is None:
        return _HEADER.pack(ord("P"), 0, 0, 0, len(payload)) + payload
    return _HEADER.pack(ord("P"), FLAG_CIPHER, 0, 0, len(payload)) + cipher.encrypt(payload)


@dataclass(frozen=True)
class WirePacket:
    """A packet (or raw chunk) as it arrived: its header and its payload as sent."""

    flags: int
    level: int
    index: int
    size: int
    payload: bytes

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_CIPHER)


def split_packets(stream: bytes) -> tuple[list[WirePacket], bytes]:
    """The packets of a stream of bytes as sent, read from their headers alone (nothing
    decrypted or decompressed): what anyone on the path sees. Returns them and the
    bytes left over (an incomplete packet, or what is not Xpra's)."""
    packets = []
    while len(stream) >= _HEADER.size:
        magic, flags, level, index, size = _HEADER.unpack_from(stream)
        length = padded_size(size) if flags & FLAG_CIPHER else size
        if magic != ord("P") or len(stream) < _HEADER.size + length:
            break
        payload = stream[_HEADER.size : _HEADER.size + length]
        packets.append(WirePacket(flags, level, index, size, payload))
        stream = stream[_HEADER.size + length :]
    return packets, stream


class PacketReader:
    """Reassembles packets from websocket messages (they may split or batch packets),
    decrypting those flagged encrypted with ``cipher`` (the connection's incoming
    stream, set once the client has announced its capabilities). With ``record``,
    ``wire`` keeps every packet as it arrived, for tests of what the stream reveals."""

    def __init__(self, cipher: AESStream | None = None, record: bool = False) -> None:
        self.buf = b""
        self.chunks: dict[int, bytes] = {}
        self.cipher = cipher
        self.wire: list[WirePacket] | None = [] if record else None

    def feed(self, data: bytes) -> list[list[Any]]:
        """Add received bytes; return every packet that is now complete."""
        self.buf += data
        packets = []
        while len(self.buf) >= _HEADER.size:
            magic, flags, level, index, size = _HEADER.unpack_from(self.buf)
            if magic != ord("P") or flags & ~FLAG_CIPHER:
                raise ValueError(f"unsupported packet header {self.buf[:8]!r}")
            encrypted = bool(flags & FLAG_CIPHER)
            length = padded_size(size) if encrypted else size
            if len(self.buf) < _HEADER.size + length:
                break
            body = self.buf[_HEADER.size : _HEADER.size + length]
            self.buf = self.buf[_HEADER.size + length :]
            if self.wire is not None:
                self.wire.append(WirePacket(flags, level, index, size, body))
            if encrypted:
                if self.cipher is None:
                    raise UndecodablePacket("an encrypted packet, and no key to decrypt it")
                body = self.cipher.decrypt(body, size)
            if level & 0x70:  # lz4 / lzo / brotli: we only advertise zlib
                raise ValueError(f"unsupported compression level {level:#x}")
            try:
                if level:
                    body = zlib.decompress(body)
                if index:  # raw chunk substituted into the next main packet
                    self.chunks[index] = body
                    continue
                packet, _ = bdecode(body)
            except (zlib.error, ValueError, IndexError) as err:
                if encrypted:  # a padding that happened to match, from the wrong key
                    raise UndecodablePacket(f"decrypted packet does not decode: {err}") from err
                raise
            for i, chunk in self.chunks.items():
                packet[i] = chunk
            self.chunks = {}
            packets.append(packet)
        return packets


# ---------------------------------------------------------------- authentication
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
    """Minimal HTML5-like hello: bencode only, zlib only, no window (unless ``extra``
    says ``windows=True``)."""
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
        # No window forwarding by default: authentication tests need none, and must not
        # trip over server-side window code (e.g. Debian's xpra fails on window icons
        # without python3-pil). Tests of the desktop itself ask for windows=True.
        "windows": False,
        "keyboard": False,  # don't touch the shared session's keymap
    }
    caps.update(extra)
    return caps


def packet_type(packet: list[Any]) -> str:
    kind = packet[0]
    return kind.decode() if isinstance(kind, bytes) else str(kind)


def _reason(packet: list[Any]) -> str:
    return " ".join(
        r.decode(errors="replace") if isinstance(r, bytes) else str(r) for r in packet[1:]
    )


class XpraConnection:
    """The client's end of one Xpra connection over a websocket.

    ``key``: the launch's AES key; the client then asks for encryption, as the HTML5
    client does with ``encryption=AES``. ``record`` keeps every packet the server sent
    as it arrived (``wire``) and every packet decoded (``received``)."""

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, key: str | None = None, record: bool = False
    ) -> None:
        self.ws = ws
        self.key = key
        self.reader = PacketReader(record=record)
        self.cipher_out: AESStream | None = None
        self.received: list[list[Any]] | None = [] if record else None
        self.hello: dict[bytes, Any] | None = None  # the server's, once logged in
        self._pending: list[list[Any]] = []

    @property
    def wire(self) -> list[WirePacket]:
        assert self.reader.wire is not None, "XpraConnection(record=True) keeps the wire"
        return self.reader.wire

    async def send(self, packet: list[Any]) -> None:
        await self.ws.send_bytes(encode_packet(packet, self.cipher_out))

    async def receive(self) -> list[Any] | None:
        """The next packet from the server; None once the connection has closed.
        Raises UndecodablePacket for one that does not decrypt (the wrong key)."""
        while not self._pending:
            msg = await self.ws.receive()
            if msg.type != aiohttp.WSMsgType.BINARY:
                return None
            packets = self.reader.feed(msg.data)
            if self.received is not None:
                self.received.extend(packets)
            self._pending.extend(packets)
        return self._pending.pop(0)

    def _hello_caps(self, **extra: Any) -> dict[str, Any]:
        """A hello; with a key, new cipher capabilities in it, and the incoming stream
        keyed from them (what the server sends after reading this hello)."""
        if self.key is None:
            return make_hello(**extra)
        caps = cipher_caps()
        self.reader.cipher = AESStream(caps, self.key, SERVER_PADDING)
        return make_hello(**caps, **extra)

    async def log_in(self, password: str | None, **hello: Any) -> str:
        """Send the hello, answer at most the challenges, stop at the first verdict.

        Returns "hello" (accepted; the server's capabilities in ``self.hello``),
        "disconnect: <reason>", "challenge-without-password", "undecodable: <why>"
        (a packet that does not decrypt: the wrong key) or "closed"."""
        # Like Client.js: with a password, the first hello only announces a challenge.
        first = {"challenge": True} if password is not None else {}
        await self.send(["hello", self._hello_caps(**first, **hello)])
        while True:
            try:
                packet = await self.receive()
            except UndecodablePacket as err:
                return f"undecodable: {err}"
            if packet is None:
                return "closed"
            kind = packet_type(packet)
            if kind == "hello":
                self.hello = packet[1]
                if self.key is not None:  # Client.js: the server's last cipher caps
                    self.cipher_out = AESStream(packet[1], self.key, "PKCS#7")
                return "hello"
            if kind == "disconnect":
                return "disconnect: " + _reason(packet)
            if kind == "challenge":
                if password is None:
                    return "challenge-without-password"
                if self.key is not None:  # the server's cipher caps, for what we send
                    if not isinstance(packet[2], dict):
                        return "disconnect: the challenge has no cipher capabilities"
                    self.cipher_out = AESStream(packet[2], self.key, "PKCS#7")
                response, client_salt = challenge_response(packet, password)
                answer = {"challenge_response": response, "challenge_client_salt": client_salt}
                await self.send(["hello", self._hello_caps(**answer, **hello)])

    async def answer(self, packet: list[Any]) -> None:
        """What the HTML5 client answers to keep a desktop coming: it maps each new
        window (the server draws only mapped ones), acknowledges each ``draw`` (the
        server holds back when too many are unacknowledged) and echoes pings."""
        kind = packet_type(packet)
        if kind == "new-window":
            wid, x, y, w, h = packet[1:6]
            await self.send(["map-window", wid, x, y, w, h, {}])
        elif kind == "draw":
            wid, width, height, sequence = packet[1], packet[4], packet[5], packet[8]
            await self.send(["damage-sequence", sequence, wid, width, height, 0, ""])
        elif kind == "ping":
            sid = packet[3] if len(packet) >= 4 else ""
            await self.send(["ping_echo", packet[1], 0, 0, 0, 0, sid])

    async def wait_for(
        self, wanted: Callable[[list[Any]], bool], what: str = "a packet"
    ) -> list[Any]:
        """Read (and :meth:`answer`) packets until ``wanted(packet)``; AssertionError
        if the connection ends first."""
        while (packet := await self.receive()) is not None:
            await self.answer(packet)
            if wanted(packet):
                return packet
        raise AssertionError(f"the connection ended before {what}")


@asynccontextmanager
async def connect(
    session: aiohttp.ClientSession,
    url: str,
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    record: bool = False,
) -> AsyncIterator[XpraConnection]:
    """An :class:`XpraConnection` on Xpra's websocket at ``url``, closed after."""
    async with session.ws_connect(url, protocols=("binary",), headers=headers) as ws:
        yield XpraConnection(ws, key, record)


async def xpra_ws_handshake(
    session: aiohttp.ClientSession,
    url: str,
    password: str | None,
    *,
    timeout: float = 20.0,
    headers: dict[str, str] | None = None,
    key: str | None = None,
) -> str:
    """Connect to Xpra at ``url`` and report how authentication ended (with
    encryption if given its ``key``).

    Returns "hello" (accepted), "disconnect: <reason>", "challenge-without-password",
    "undecodable: <why>" or "closed". Raises asyncio.TimeoutError after ``timeout`` s.
    """

    async def run() -> str:
        async with connect(session, url, key=key, headers=headers) as xpra:
            return await xpra.log_in(password)

    # wait_for rather than asyncio.timeout: the project still supports Python 3.10.
    return await asyncio.wait_for(run(), timeout)


def handshake(
    url: str,
    password: str | None,
    headers: dict[str, str] | None = None,
    unix_socket: str | None = None,
    key: str | None = None,
) -> str:
    """Blocking wrapper for tests; ``unix_socket`` talks to xpra's socket directly."""

    async def run() -> str:
        connector = aiohttp.UnixConnector(path=unix_socket) if unix_socket else None
        async with aiohttp.ClientSession(connector=connector) as session:
            return await xpra_ws_handshake(session, url, password, headers=headers, key=key)

    return asyncio.run(run())
