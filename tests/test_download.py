"""Large downloads through a tile: streamed, with the Jupyter server's memory bounded.

jupyter-server-proxy 4.6 buffers every response body in the Jupyter server and fails
one over 100 MiB with a 599; hpc-proxies streams the large bodies no rewrite needs
(:mod:`hpc_proxies.jupyter.streaming`). The app here is the RStudio stand-in
(tests/standin/rserver), whose ``/download?bytes=N`` serves N bytes (byte i is
``i % 251``) on its unix socket, as RStudio's file pane serves a big file. The
helpers (:class:`MemoryWatch`, :func:`download`) are also bench/download_bench.py's.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

import pytest
from conftest import jupyter_with_site
from instances_api import ok
from processes import status_bytes
from tornado.httputil import HTTPHeaders
from waiting import until

from hpc_proxies.apps import load_app
from hpc_proxies.jupyter.serverproxy import rewritten_paths
from hpc_proxies.jupyter.streaming import REWRITE_LIMIT, StreamingMixin, _Relay

MiB = 1 << 20
STANDIN = Path(__file__).resolve().parent / "standin"
RSTUDIO_TOML = f'[apps.rstudio]\nexecutable = "{STANDIN / "rserver"}"\nr = "{STANDIN / "R"}"\n'
#: The stand-in's ``/download`` content repeats every 251 bytes (see tests/standin/rserver).
PATTERN = 251
BLOCK = bytes(i % PATTERN for i in range(PATTERN * 4096))
#: Twice the block: any read of at most a block's length, at any offset, is in here.
TWICE = BLOCK * 2
#: How much the Jupyter server's resident memory may grow while it proxies a download.
RSS_BOUND = 64 * MiB


class MemoryWatch:
    """The peak resident memory of a process over a ``with`` block, above where it
    started: the kernel's high-water mark (VmHWM, reset at the start through
    clear_refs) and samples every few milliseconds, whichever is higher."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.start = 0
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, status_bytes(self.pid, "VmRSS"))

    def __enter__(self) -> MemoryWatch:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # resets VmHWM to VmRSS
        self.start = status_bytes(self.pid, "VmRSS")
        self.peak = self.start
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, status_bytes(self.pid, "VmHWM"))

    @property
    def growth(self) -> int:
        return self.peak - self.start


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP on a unix socket: the app directly, as a bench's baseline."""

    def __init__(self, path: Path, timeout: float = 60) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.unix_path))


@dataclass
class Download:
    status: int
    headers: Message
    size: int = 0
    seconds: float = 0.0
    #: Whether every byte was the stand-in's pattern (None: not checked).
    intact: bool | None = None
    head: bytes = b""
    errors: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / 1e6 if self.seconds else 0.0


def download(
    connection: http.client.HTTPConnection,
    target: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    rate: float | None = None,
    check_from: int | None = None,
) -> Download:
    """One request, its body read to the end in reads of about 1 MiB and counted (kept
    only its first KiB); at most ``rate`` bytes/s (a slow client: the reader paces itself);
    with ``check_from`` (the offset of the first byte) every byte is compared with the
    stand-in's pattern."""
    buffer = bytearray(len(BLOCK))
    view = memoryview(buffer)
    started = time.monotonic()
    try:
        connection.request(method, target, headers=headers or {})
        response = connection.getresponse()
        result = Download(response.status, response.headers)
        intact = True
        while n := response.readinto(buffer):
            if not result.head:
                result.head = bytes(view[: min(n, 1024)])
            if check_from is not None and intact:
                offset = (check_from + result.size) % len(BLOCK)
                intact = view[:n] == TWICE[offset : offset + n]
            result.size += n
            if rate is not None:
                ahead = result.size / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)  # a slow link: pacing, not waiting for a condition
        result.seconds = time.monotonic() - started
        result.intact = intact if check_from is not None else None
        return result
    finally:
        connection.close()


def through_jupyter(server, timeout: float = 600) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)


def auth(server, **more: str) -> dict[str, str]:
    return {"Authorization": f"token {server.token}", **more}


def fetch_big(server, target: str, **kwargs) -> tuple[Download, MemoryWatch]:
    """``download`` through Jupyter, with the token, while watching its memory."""
    headers = auth(server, **kwargs.pop("headers", {}))
    with MemoryWatch(server.proc.pid) as memory:
        result = download(through_jupyter(server), target, headers, **kwargs)
    return result, memory


def no_errors_in(log: str) -> None:
    for bad in ("Traceback", "Uncaught exception", " 599 ", " 500 "):
        assert bad not in log, log[-3000:]


@pytest.fixture(scope="module")
def rstudio(tmp_path_factory):
    """A Jupyter server whose RStudio (the stand-in, two instances allowed) is up."""
    toml = RSTUDIO_TOML + "max_instances = 2\n"
    with jupyter_with_site(tmp_path_factory.mktemp("download"), toml) as server:
        server.wait_for_app("/rstudio/")
        yield server


def test_a_download_over_100_mib_streams_whole_and_the_server_memory_stays_flat(rstudio):
    """jupyter-server-proxy alone answers 599 past 100 MiB (and holds twice the body
    below that); through hpc-proxies the body streams, headers and bytes intact."""
    size = 300 * MiB
    got, memory = fetch_big(rstudio, f"/rstudio/download?bytes={size}", check_from=0)
    assert got.status == 200, got.head[:500]
    assert (got.size, got.intact) == (size, True)
    assert got.headers["Content-Length"] == str(size)
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert got.headers["Content-Disposition"] == 'attachment; filename="big.bin"'
    assert got.headers["Accept-Ranges"] == "bytes"
    assert memory.growth <= RSS_BOUND, f"+{memory.growth / MiB:.1f} MiB"
    no_errors_in(rstudio.log())


def test_a_download_of_unknown_length_streams_too(rstudio):
    size = 150 * MiB
    target = f"/rstudio/download?bytes={size}&chunked=1"
    got, memory = fetch_big(rstudio, target, check_from=0)
    assert got.status == 200, got.head[:500]
    assert (got.size, got.intact) == (size, True)
    assert "Content-Length" not in got.headers
    assert got.headers["Transfer-Encoding"] == "chunked"
    assert memory.growth <= RSS_BOUND, f"+{memory.growth / MiB:.1f} MiB"


def test_a_slow_reader_holds_the_app_back_not_the_server_memory(rstudio):
    """Backpressure: the next read from the app waits until the browser took the last
    chunk. Without it the server would hold what the app wrote ahead (~100 MiB here)."""
    size = 128 * MiB
    got, memory = fetch_big(rstudio, f"/rstudio/download?bytes={size}", rate=25e6)
    assert (got.status, got.size) == (200, size)
    assert got.mb_per_s < 30, "the reader paced itself"
    assert memory.growth <= RSS_BOUND, f"+{memory.growth / MiB:.1f} MiB"


def test_a_browser_that_leaves_midway_stops_the_read_from_the_app(rstudio):
    size = 1024 * MiB
    connection = through_jupyter(rstudio)
    connection.request("GET", f"/rstudio/download?bytes={size}", headers=auth(rstudio))
    response = connection.getresponse()
    assert response.status == 200
    assert len(response.read(10 * MiB)) == 10 * MiB
    connection.close()

    def app_saw_it_leave() -> int | None:
        found = re.findall(r"download: the reader left after (\d+) bytes", rstudio.log())
        return int(found[-1]) if found else None

    sent = until(app_saw_it_leave, 30, "the app went on writing")
    assert sent < 100 * MiB, f"the app wrote {sent / MiB:.0f} MiB for a reader that took 10"
    no_errors_in(rstudio.log())


def test_ranges_and_head_of_a_large_file(rstudio):
    size, first, last = 300 * MiB, 100 * MiB + 7, 250 * MiB
    target = f"/rstudio/download?bytes={size}"
    got, memory = fetch_big(
        rstudio, target, headers={"Range": f"bytes={first}-{last}"}, check_from=first
    )
    assert got.status == 206, got.head[:500]
    assert got.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
    assert got.headers["Content-Length"] == str(last - first + 1)
    assert (got.size, got.intact) == (last - first + 1, True)
    assert memory.growth <= RSS_BOUND, f"+{memory.growth / MiB:.1f} MiB"

    head, _ = fetch_big(rstudio, target, method="HEAD")
    assert (head.status, head.size) == (200, 0)
    assert head.headers["Content-Disposition"] == 'attachment; filename="big.bin"'
    assert head.headers["Content-Length"] == str(size), "the file's, not 0 (as the engine says)"


def test_small_responses_and_redirects_keep_the_engines_own_path(rstudio):
    """What fits in the buffer, and every redirect, goes through jupyter-server-proxy's
    buffered path and the rewrite hooks: the stand-in's redirect to another host is
    brought back to this one."""
    small = rstudio.request("/rstudio/download?bytes=1000")
    assert (small.status, len(small.body)) == (200, 1000)
    assert small.body == BLOCK[:1000] and small.headers["Content-Length"] == "1000"
    status, headers, _ = rstudio.raw_get("/rstudio/redirect")
    assert status == 302
    assert headers["Location"] == f"//127.0.0.1:{rstudio.port}/rstudio/landed?from=redirect"
    assert rstudio.request("/rstudio/nothing-here").status == 404


def test_a_further_instance_streams_too(rstudio):
    created = ok(rstudio, "POST", "instances", {"app": "rstudio"})
    assert created["url"] == "/rstudio@2/", created
    rstudio.wait_for_app("/rstudio@2/")
    size = 200 * MiB
    got, memory = fetch_big(rstudio, f"/rstudio@2/download?bytes={size}", check_from=0)
    assert (got.status, got.size, got.intact) == (200, size, True)
    assert memory.growth <= RSS_BOUND, f"+{memory.growth / MiB:.1f} MiB"
    status, headers, _ = rstudio.raw_get("/rstudio@2/redirect")
    assert status == 302, "the further instance's rewrite hooks run too"
    assert headers["Location"] == f"//127.0.0.1:{rstudio.port}/rstudio@2/landed?from=redirect"


def test_the_vnc_entry_page_still_gets_its_secret(rstudio):
    """The entry page goes through the rewrite hooks as before: the launch password is
    put into noVNC's ``vnc.html``, and only there."""
    rstudio.wait_for_app("/vnc/")
    secret = (rstudio.runtime_dir("vnc") / "app" / "secret").read_text()
    page = rstudio.request("/vnc/vnc.html")
    assert page.status == 200, page.text[:500]
    assert page.text.count('<head><script>(function(){const pw="' + secret + '";') == 1
    assert page.headers.get("Cache-Control") == "no-store"
    ui = rstudio.request("/vnc/app/ui.js")
    assert ui.status == 200 and secret.encode() not in ui.body


class _Handler(StreamingMixin):
    """Just enough of a handler for the relay's decisions."""

    rewritten_paths = rewritten_paths(load_app("vnc"))


def test_which_responses_may_stream():
    assert rewritten_paths(load_app("vnc")) == {"/vnc.html"}
    assert rewritten_paths(load_app("xpra")) == set(load_app("xpra").html_paths)
    assert rewritten_paths(load_app("tensorboard")) == set(load_app("tensorboard").html_paths)
    assert rewritten_paths(load_app("rstudio")) == set(), "its hook fixes redirects only"
    handler, plain = _Handler(), HTTPHeaders({"Content-Type": "application/octet-stream"})
    assert handler.may_stream("/big.bin", 200, plain)
    assert handler.may_stream("/big.bin", 206, plain)
    assert not handler.may_stream("/vnc.html", 200, plain)
    assert not handler.may_stream("/big.bin", 302, HTTPHeaders({"Location": "/x"}))
    assert not handler.may_stream("/big.bin", 201, HTTPHeaders({"Location": "/x"}))


def test_a_response_a_hook_rewrites_is_kept_whole_up_to_the_engines_limit():
    relay = _Relay(_Handler(), "/vnc.html")
    for line in ("HTTP/1.1 200 OK\r\n", "Content-Type: text/html\r\n", "\r\n"):
        relay.header_line(line)
    chunk = bytes(MiB)
    for _ in range(3):
        assert relay.body_received(chunk) is None
    assert not relay.streaming and relay.size == 3 * MiB and len(relay.kept) == 3
    while relay.size <= REWRITE_LIMIT:
        relay.body_received(chunk)
    assert relay.too_large and relay.kept == [] and not relay.streaming
