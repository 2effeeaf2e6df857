"""Xpra's stream encrypted with AES (``[apps.xpra] encryption = "AES"``), end to end.

A real Jupyter server, a real Xpra, and Jupyter's websocket URL, the path the browser
takes. The wire client (``xpra_wire``) stands in for the browser: it reads the key from
the launch's file as root, as the browser gets it from the page. Xpra must refuse a
client without the key, a client with the wrong one must read nothing, the right one
gets the desktop (the server's hello and the xterm's pixels, decrypted); on the way
(a TCP hop that keeps what passes, as a hub's plain-HTTP proxy would carry it) every
packet is flagged encrypted and nothing is readable, where the same desktop without
encryption shows its capabilities and window titles in the clear. The key is in no
argv, in a 0600 file, on the page only inside the script that hands it over. In
chromium (``browser`` mark) the desktop appears, typed commands work, the tab keeps
no key and no URL carries it, and what the page sends and receives is encrypted.

Screenshots go to ``ARTIFACTS/xpra-aes-*.png`` (``xpra-aes-failure-*.png`` on failure).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import secrets
import signal
import socket
import stat
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser import (
    Box,
    SharedChromium,
    chromium,
    log_in,
    page_state,
    screenshot,
    stats,
    wait_for,
    wait_for_xpra_xterm,
    wait_js,
)
from conftest import ARTIFACTS, jupyter_with_site
from PIL import Image
from processes import cmdline, environ_of, find_process
from test_xpra_browser import type_into_xterm
from test_xpra_integration import session_pids
from waiting import until, until_async
from xpra_wire import (
    AESStream,
    PacketReader,
    XpraConnection,
    cipher_caps,
    connect,
    encode_packet,
    handshake,
    make_hello,
    packet_type,
    split_packets,
)

SITE = '[apps.xpra]\nencryption = "AES"\n'
#: What a desktop's stream shows in the clear: the server's capability names (its
#: hello), its packet types and the window's title.
READABLE = (b"hello", b"encodings", b"xdg-menu", b"clipboard", b"challenge", b"xterm")
#: A client that shows windows and asks for no compression (so that what the stream
#: carries would be readable in the clear); it takes PNG and RGB pictures.
DESKTOP_CLIENT = {"windows": True, "compression_level": 0}
KEY_FILE = "aes-key"


@pytest.fixture(scope="module")
def aes_jupyter(tmp_path_factory):
    """A Jupyter server whose site turns Xpra's encryption on; Xpra started."""
    with jupyter_with_site(tmp_path_factory.mktemp("aes"), SITE) as server:
        server.wait_for_app("/xpra/")
        yield server


def app_dir(server) -> Path:
    return server.runtime_dir("xpra") / "app"


def key_of(server) -> str:
    return (app_dir(server) / KEY_FILE).read_text()


def secret_of(server) -> str:
    return (app_dir(server) / "secret").read_text()


def ws_url(server, port: int | None = None) -> str:
    return f"ws://127.0.0.1:{port or server.port}/xpra/"


def auth(server) -> dict[str, str]:
    return {"Authorization": f"token {server.token}"}


def xpra_pid(server) -> int:
    return find_process(session_pids(server), "/usr/bin/xpra")


def is_xterm_window(packet: list[Any]) -> bool:
    return packet_type(packet) == "new-window" and packet[6].get(b"title") == b"xterm"


def picture_of(draw: list[Any]) -> Image.Image:
    """The pixels of a ``draw`` packet (PNG or uncompressed RGB), as the browser would
    paint them."""
    width, height, coding, data = draw[4], draw[5], draw[6], draw[7]
    if coding == b"png":
        return Image.open(io.BytesIO(data)).convert("RGB")
    assert coding == b"rgb32", draw[:7]
    options = draw[10] if len(draw) > 10 else {}
    if options.get(b"zlib"):
        data = zlib.decompress(data)
    raw = options.get(b"rgb_format", b"BGRX").decode().replace("A", "X")
    return Image.frombytes("RGB", (width, height), data, "raw", raw, draw[9])


def shows_a_prompt(picture: Image.Image) -> bool:
    """A fresh xterm: white, with a prompt ("# ") and a cursor on it."""
    pixels = stats(picture)
    return pixels.white >= 0.8 and pixels.dark >= 20


async def see_the_desktop(url: str, headers: dict, password: str, key: str | None):
    """Log in like the HTML5 client (with ``key``: encrypted), then read and paint the
    xterm's window until it shows its prompt: (the connection, its new-window, the
    window's picture)."""
    async with (
        aiohttp.ClientSession() as session,
        connect(session, url, key=key, headers=headers, record=True) as xpra,
    ):
        outcome = await asyncio.wait_for(xpra.log_in(password, **DESKTOP_CLIENT), 30)
        assert outcome == "hello", outcome
        window = await asyncio.wait_for(xpra.wait_for(is_xterm_window, "the xterm"), 30)
        canvas = Image.new("RGB", (window[4], window[5]))  # black until drawn

        def paint(packet: list[Any]) -> bool:
            if packet_type(packet) != "draw" or packet[1] != window[1]:
                return False
            canvas.paste(picture_of(packet), (packet[2], packet[3]))
            return shows_a_prompt(canvas)

        await asyncio.wait_for(xpra.wait_for(paint, "the xterm's prompt"), 30)
    return xpra, window, canvas


async def until_closed(xpra: XpraConnection) -> list[list[Any]]:
    """Read until the server ends the connection; the packets that came meanwhile."""
    packets = []
    while (packet := await xpra.receive()) is not None:
        packets.append(packet)
    return packets


# ---------------------------------------------------------------- who gets in
async def test_a_client_without_the_key_is_refused_before_any_hello(aes_jupyter):
    """The HTML5 client without ``key`` (a page that lost it): Xpra answers its plain
    hello with a plain ``disconnect`` that says why, and nothing else."""
    async with (
        aiohttp.ClientSession() as session,
        connect(session, ws_url(aes_jupyter), headers=auth(aes_jupyter), record=True) as xpra,
    ):
        outcome = await asyncio.wait_for(xpra.log_in(secret_of(aes_jupyter)), 30)
        assert outcome == "disconnect: missing encryption tokens", outcome
        assert await asyncio.wait_for(until_closed(xpra), 30) == []
    assert [packet_type(p) for p in xpra.received] == ["disconnect"]
    assert xpra.hello is None


def test_the_sockets_own_protocol_is_refused_without_the_key_too(aes_jupyter):
    """Xpra's own protocol on the launch's unix socket (no websocket, no Jupyter):
    plain by Xpra's default, refused here (``XPRA_ENCRYPTED_SOCKET_TYPES``). Xpra's
    socket is the launch socket once it answers (``hpc_proxies.layout``)."""
    reader, packets = PacketReader(), []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(aes_jupyter.runtime_dir("xpra") / "socket"))
        sock.sendall(encode_packet(["hello", make_hello(challenge=True)]))
        while not packets and (data := sock.recv(65536)):
            packets += reader.feed(data)
        assert sock.recv(65536) == b"", "the server did not hang up"
    assert [packet_type(p) for p in packets] == ["disconnect"], packets
    assert packets[0][1] == b"missing encryption tokens"


async def test_the_right_key_gets_the_servers_hello_and_the_xterms_pixels(aes_jupyter):
    xpra, window, picture = await see_the_desktop(
        ws_url(aes_jupyter), auth(aes_jupyter), secret_of(aes_jupyter), key_of(aes_jupyter)
    )
    hello = xpra.hello
    assert hello[b"cipher"] == b"AES" and hello[b"version"].startswith(b"3.1"), hello
    assert b"png" in hello[b"encodings"] and b"clipboard" in hello, sorted(hello)[:20]
    # The desktop: the xterm's window, painted from its draw packets, shows its prompt.
    assert window[4] >= 200 and window[5] >= 100, window[:6]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    picture.save(ARTIFACTS / "xpra-aes-wire-xterm.png")
    assert shows_a_prompt(picture)
    assert [packet_type(p) for p in xpra.received].count("draw") >= 1
    # All of it came encrypted (the client decrypted every packet it read).
    assert len(xpra.wire) >= 4 and all(packet.encrypted for packet in xpra.wire)


async def test_a_wrong_key_reads_nothing_and_the_server_hangs_up(aes_jupyter):
    key = key_of(aes_jupyter)
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")  # one character off
    refusals = aes_jupyter.log().count("padding error - wrong key?")
    async with (
        aiohttp.ClientSession() as session,
        connect(
            session, ws_url(aes_jupyter), key=wrong, headers=auth(aes_jupyter), record=True
        ) as xpra,
    ):
        outcome = await asyncio.wait_for(xpra.log_in(secret_of(aes_jupyter)), 30)
        # The server's first packet (its challenge) does not decrypt: no hello, nothing.
        assert outcome.startswith("undecodable:"), outcome
        assert xpra.received == [] and xpra.hello is None
        assert [p.encrypted for p in xpra.wire] == [True]
        # Whatever it answers with the key it has, the server cannot read it and ends
        # the connection, with nothing more sent.
        xpra.cipher_out = AESStream(cipher_caps(), wrong, "PKCS#7")
        await xpra.send(["hello", make_hello(challenge_response=b"0" * 64)])
        assert await asyncio.wait_for(until_closed(xpra), 30) == []
    assert len(xpra.wire) == 1
    await until_async(
        lambda: aes_jupyter.log().count("padding error - wrong key?") > refusals,
        10,
        "Xpra's log to say the answer did not decrypt",
    )


# ---------------------------------------------------------------- what the way carries
class Tap:
    """A TCP hop between the client and the Jupyter server that keeps what passes,
    as a plain-HTTP link (a hub's proxy to a compute node) carries it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.down = bytearray()  # from the Jupyter server to the client
        self.port = 0

    async def __aenter__(self) -> Tap:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _connection(self, client_r, client_w) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(reader, writer, kept: bytearray | None) -> None:
            try:
                while data := await reader.read(65536):
                    if kept is not None:
                        kept += data
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass  # an end went away: the connection is over
            finally:
                writer.close()

        await asyncio.gather(pump(client_r, server_w, None), pump(server_r, client_w, self.down))


def websocket_payload(stream: bytes) -> bytes:
    """The data of the server's websocket frames, after its HTTP answer, joined."""
    head, _, frames = stream.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head[:200]
    data = bytearray()
    while len(frames) >= 2:
        first, second = frames[0], frames[1]
        assert not first & 0x40, "a compressed frame (permessage-deflate): not the clear"
        assert not second & 0x80, "a server's frames are not masked"
        length, pos = second & 0x7F, 2
        if length == 126:
            (length,), pos = struct.unpack_from("!H", frames, 2), 4
        elif length == 127:
            (length,), pos = struct.unpack_from("!Q", frames, 2), 10
        if first & 0x0F in (0, 2):  # continuation, binary
            data += frames[pos : pos + length]
        frames = frames[pos + length :]
    return bytes(data)


async def what_the_way_carries(server, key: str | None):
    """The desktop seen through a :class:`Tap`: the Xpra packets of the server's side
    read from the bytes alone, those bytes, and the client's connection."""
    async with Tap(server.port) as tap:
        url = ws_url(server, tap.port)
        xpra, _, _ = await see_the_desktop(url, auth(server), secret_of(server), key)
    packets, _ = split_packets(websocket_payload(bytes(tap.down)))
    return packets, bytes(tap.down), xpra


async def test_on_the_way_every_packet_is_encrypted_and_nothing_is_readable(
    aes_jupyter, shared_jupyter
):
    """The same desktop through the same hop, encrypted and not (``shared_jupyter``'s
    site has no encryption): the control shows that the hop would show what the
    stream says if it were in the clear."""
    packets, carried, xpra = await what_the_way_carries(aes_jupyter, key_of(aes_jupyter))
    # Every packet the server sent (its first, the challenge, came after the client's
    # hello) is flagged encrypted: the hello, the window, its pictures.
    assert len(packets) >= len(xpra.wire) >= 4
    assert [p.flags for p in packets] == [0x2] * len(packets)
    assert [w for w in READABLE if w in carried] == []
    assert not [p for p in packets if any(w in p.payload for w in READABLE)]

    shared_jupyter.wait_for_app("/xpra/")
    packets, carried, xpra = await what_the_way_carries(shared_jupyter, None)
    assert len(packets) >= len(xpra.wire) >= 4
    assert [p.flags for p in packets] == [0] * len(packets)
    assert [w for w in READABLE if w in carried] == list(READABLE)


# ---------------------------------------------------------------- where the key is
class PageParts(HTMLParser):
    """The text of each ``<script>``, the page's other text, and every attribute value
    (where URLs are)."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.text: list[str] = []
        self.attributes: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.attributes += [value or "" for _, value in attrs]
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)


def test_the_key_is_a_private_file_in_no_argv_and_only_in_the_pages_script(aes_jupyter):
    key_file = app_dir(aes_jupyter) / KEY_FILE
    key = key_file.read_text()
    assert len(key) >= 32
    info = key_file.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.getuid()

    # Xpra gets the file's name, never the key; nor does any process's argv or the
    # session's environments.
    xpra = xpra_pid(aes_jupyter)
    argv = cmdline(xpra)
    assert "--tcp-encryption=AES" in argv and f"--tcp-encryption-keyfile={key_file}" in argv
    assert environ_of(xpra)["XPRA_ENCRYPTED_SOCKET_TYPES"] == "tcp,ws,unix-domain"
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            assert not any(key in arg for arg in cmdline(int(entry))), cmdline(int(entry))
    for pid in aes_jupyter.descendants():
        try:
            environment = environ_of(pid)
        except OSError:
            continue  # gone meanwhile
        assert not any(key in value for value in environment.values()), pid
    assert key not in aes_jupyter.log()

    # The page through Jupyter: the key once, inside the script that hands it to the
    # client; in no attribute (no URL), no text, no header; never stored.
    page = aes_jupyter.request("/xpra/")
    assert page.status == 200 and "xpra websockets client" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert not [value for value in page.headers.values() if key in value]
    assert page.text.count(key) == 1
    parts = PageParts()
    parts.feed(page.text)
    (holder,) = [script for script in parts.scripts if key in script]
    handed = json.loads(re.search(r"const pw=(\{.*?\});", holder).group(1))
    assert handed == {"password": secret_of(aes_jupyter), "encryption": "AES", "key": key}
    assert "sessionStorage.setItem" in holder
    assert not [value for value in parts.attributes if key in value]
    assert key not in "".join(parts.text)


# ---------------------------------------------------------------- in chromium
#: A command whose output is easy to see: a bar of 60 reverse-video spaces (a solid
#: dark bar in the white xterm), then a file made, to know it ran.
BAR = "printf '\\033[7m%60s\\033[0m\\n' ''"
XPRA_CONNECTED_OR_SENT_AWAY = """() => !!(window.client && window.client.connected)
    || location.pathname.endsWith('connect.html')"""


def dark_rows(picture: Image.Image) -> int:
    """Rows of ``picture`` that are dark over at least half their width (a bar)."""
    width, height = picture.size
    data = picture.convert("L").point(lambda v: 255 if v <= 90 else 0).tobytes()
    return sum(data[y * width : (y + 1) * width].count(255) >= width // 2 for y in range(height))


#: Fresh browser profiles that open the desktop: the page hands the key over at each
#: load, and must do so whatever the order of the page's events (a fresh profile's
#: load, with every file to fetch, varies the most).
FIRST_OPENS = 4


def open_the_desktop(page, name: str, server) -> tuple[Box, Image.Image]:
    """After a (re)load of ``/xpra/``: the client connects, with the key, and the tab
    keeps no secret; the xterm's box and the screenshot ``xpra-<name>.png``."""
    wait_js(page, XPRA_CONNECTED_OR_SENT_AWAY, f"{name}: the client to connect", server)
    assert not page.url.endswith("connect.html"), (
        f"{name}: the client was disconnected{page_state(page)}"
    )
    box, shot = wait_for_xpra_xterm(page, name, server)
    stored = page.evaluate(
        "() => ['key', 'encryption', 'password'].map((k) => sessionStorage.getItem(k))"
    )
    assert stored == [None, None, None], f"{name}: sessionStorage has {stored}"
    assert page.evaluate("() => window.client.encryption") == "AES"
    return box, shot


def type_a_command_and_see_its_output(page, box: Box, shot: Image.Image, server) -> None:
    """Typing a command works, and its output shows: a dark bar in the xterm."""
    bars = dark_rows(box.crop(shot))
    made = server.root_dir / f"typed-in-aes-xpra-{secrets.token_hex(4)}"
    type_into_xterm(page, box, f"{BAR}; touch {made}")
    wait_for(f"{made} made by the command typed", made.exists, server, page)
    wait_for(
        "the command's output (a dark bar) in the xterm",
        lambda: dark_rows(box.crop(screenshot(page, "xpra-aes-typed"))) >= bars + 8,
        server,
        page,
    )


@pytest.mark.browser
def test_chromium_shows_the_encrypted_desktop_and_keeps_no_key(aes_jupyter):
    """First opens (each a fresh browser profile, as the first click on the tile)
    and a reload: each connects with the key the page handed over."""
    server = aes_jupyter
    key = key_of(server)
    requested: list[str] = []
    streams: list[dict[str, bytearray]] = []  # each websocket's frames, by direction

    def on_websocket(ws) -> None:
        requested.append(ws.url)
        frames = {"sent": bytearray(), "received": bytearray()}
        streams.append(frames)
        for direction, kept in frames.items():
            ws.on(
                f"frame{direction}",
                lambda payload, kept=kept: kept.extend(
                    payload if isinstance(payload, bytes) else payload.encode()
                ),
            )

    with SharedChromium() as shared:
        for first_open in range(FIRST_OPENS):
            with chromium("xpra-aes-failure", shared=shared) as context:
                context.on("request", lambda request: requested.append(request.url))
                page = context.new_page()
                page.on("websocket", on_websocket)
                log_in(page, server)
                page.goto(f"{server.url}/xpra/")
                box, shot = open_the_desktop(page, f"aes-{first_open}", server)
                if first_open < FIRST_OPENS - 1:
                    continue
                page.reload()
                box, shot = open_the_desktop(page, "aes-reloaded", server)

                type_a_command_and_see_its_output(page, box, shot, server)

    # No URL the browser asked for carried the key (pages, files, websockets).
    assert len(streams) == FIRST_OPENS + 1, requested
    assert not [url for url in requested if key in url or "key=" in url], requested
    # What each load's websocket carried: every packet encrypted but the client's first
    # hello (which announces its cipher), the keys typed included; nothing readable.
    for frames in streams:
        received, _ = split_packets(bytes(frames["received"]))
        sent, _ = split_packets(bytes(frames["sent"]))
        assert len(received) >= 4 and all(p.encrypted for p in received), received[:3]
        assert len(sent) >= 2 and not sent[0].encrypted and b"cipher.iv" in sent[0].payload
        assert all(p.encrypted for p in sent[1:]), [p.flags for p in sent]
        after_hello = b"".join(p.payload for p in sent[1:])
        for readable in (*READABLE, b"key-action", b"damage-sequence"):
            assert readable not in frames["received"] and readable not in after_hello


# ---------------------------------------------------------------- a new start, a new key
def test_a_new_start_gets_a_new_key_and_the_old_one_opens_nothing(aes_jupyter):
    """Last in this module: it kills the module's Xpra."""
    old_key, xpra = key_of(aes_jupyter), xpra_pid(aes_jupyter)
    os.kill(xpra, signal.SIGKILL)
    until(lambda: not os.path.exists(f"/proc/{xpra}"), 15, "Xpra to be gone", interval=0.1)
    aes_jupyter.wait_for_app("/xpra/")
    new_key = key_of(aes_jupyter)
    assert new_key != old_key and xpra_pid(aes_jupyter) != xpra
    password = secret_of(aes_jupyter)
    old = handshake(ws_url(aes_jupyter), password, headers=auth(aes_jupyter), key=old_key)
    assert old.startswith("undecodable:"), old
    new = handshake(ws_url(aes_jupyter), password, headers=auth(aes_jupyter), key=new_key)
    assert new == "hello"
    page = aes_jupyter.request("/xpra/")
    assert page.text.count(new_key) == 1 and old_key not in page.text
