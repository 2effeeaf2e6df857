"""The ParaView kernel side without a Jupyter server: how ``ensure_pvserver`` reads the
tile's JSON answers (against a fake of our own launcher's replies), and the view
servers ``show()`` starts (in Debian's real ParaView, on a private Xvfb)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hpc_proxies import xdisplay
from hpc_proxies.pages import STATE_HEADER
from hpc_proxies.paraview.client import (
    JupyterServer,
    ParaViewDisabled,
    ParaViewError,
    PvserverStartFailed,
    ensure_pvserver,
)
from hpc_proxies.problems import Problem
from hpc_proxies.runtime import ensure_private_dir

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = "/usr/bin/python3"
TOKEN = "kernel-token"

Answer = tuple[int, dict[str, str], bytes]


# ------------------------------------------------------------- ensure_pvserver
class FakeJupyter:
    """Answers every request with the next scripted answer (the last one repeats) and
    keeps each request's method, path and headers."""

    def __init__(self, answers: list[Answer]):
        self.answers = answers
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.answer()

            do_GET = do_POST

            def answer(self) -> None:
                fake.requests.append((self.command, self.path, dict(self.headers)))
                answers = fake.answers
                status, headers, body = answers.pop(0) if len(answers) > 1 else answers[0]
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the test reads fake.requests instead

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        port = self.httpd.server_address[1]
        self.server = JupyterServer(url=f"http://127.0.0.1:{port}/", base_url="/", token=TOKEN)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def fake_jupyter() -> Iterator:
    made: list[FakeJupyter] = []

    def make(*answers: Answer) -> FakeJupyter:
        made.append(FakeJupyter(list(answers)))
        return made[-1]

    yield make
    for fake in made:
        fake.stop()


def launcher(state: str, status: int, problem: Problem | None = None) -> Answer:
    """What the tile's launcher answers an ``Accept: application/json`` request with."""
    body = {
        "app": "paraview",
        "state": state,
        "elapsed": 1.5,
        "timeout": 60.0,
        "tail": list(problem.tail) if problem else ["pvserver: starting"],
        "problem": problem.to_json() if problem else None,
    }
    headers = {STATE_HEADER: state, "Content-Type": "application/json"}
    return status, headers, json.dumps(body).encode()


def service(status: int, info: dict) -> Answer:
    """What the running tile service answers with (no state header)."""
    return status, {"Content-Type": "application/json"}, json.dumps(info).encode()


DISABLED = Problem(
    code="disabled",
    summary="ParaView is disabled here",
    details=("The site configuration turns it off (apps.paraview.enabled = false).",),
    fix="Ask your site's support to enable it.",
    status=403,
    permanent=True,
)
INVALID_CONFIG = Problem(
    code="invalid-config",
    summary="ParaView is off: the site configuration is invalid",
    details=("/etc/hpc-proxies/config.toml, line 3: expected '=' after a key.",),
    fix="Run `hpc-proxies check` and fix what it reports.",
    status=503,
    permanent=True,
)
NOT_INSTALLED = Problem(
    code="not-installed",
    summary="ParaView is not installed here",
    details=("No Python that imports ParaView was found:",),
    items=("/opt/paraview/bin/python3: No such file or directory",),
    fix="Load the ParaView module before starting JupyterLab.",
    status=503,
    tail=("line one", "ImportError: No module named paraview"),
)
RUNNING = {"state": "running", "port": 41234, "client_connected": False}


@pytest.mark.parametrize("problem", [DISABLED, INVALID_CONFIG], ids=lambda p: p.code)
def test_a_site_that_turns_paraview_off_raises_disabled(fake_jupyter, problem):
    fake = fake_jupyter(launcher("failed", problem.status, problem))
    with pytest.raises(ParaViewDisabled) as raised:
        ensure_pvserver(timeout=5, server=fake.server)
    assert str(raised.value) == problem.text()
    assert problem.summary in str(raised.value)
    ((method, path, headers),) = fake.requests
    assert (method, path) == ("POST", "/paraview/api/start?wait=5")  # a queued job: ask again
    assert headers["Accept"] == "application/json"
    assert headers["Authorization"] == f"token {TOKEN}"


def test_a_403_that_is_not_the_tiles_is_not_disabled(fake_jupyter):
    """Jupyter's own refusal (a token it does not take) says so, not "disabled"."""
    fake = fake_jupyter(service(403, {"message": "Forbidden", "reason": None}))
    with pytest.raises(ParaViewError) as raised:
        ensure_pvserver(timeout=5, server=fake.server)
    assert not isinstance(raised.value, ParaViewDisabled)
    assert "HTTP 403" in str(raised.value) and "token" in str(raised.value)


def test_a_missing_paraview_raises_start_failed_with_details_and_tail(fake_jupyter):
    fake = fake_jupyter(launcher("failed", 503, NOT_INSTALLED))
    with pytest.raises(PvserverStartFailed) as raised:
        ensure_pvserver(timeout=5, server=fake.server)
    message = str(raised.value)
    assert message.startswith(NOT_INSTALLED.text())
    assert "No Python that imports ParaView" in message
    assert "- /opt/paraview/bin/python3: No such file or directory" in message
    assert raised.value.tail == list(NOT_INSTALLED.tail)
    assert "ImportError: No module named paraview" in message  # the tail, shown last


def test_starting_then_running_returns_the_services_status(fake_jupyter):
    fake = fake_jupyter(launcher("starting", 202), launcher("starting", 202), service(200, RUNNING))
    assert ensure_pvserver(timeout=30, server=fake.server) == RUNNING
    assert len(fake.requests) == 3
    assert all(headers["Accept"] == "application/json" for _, _, headers in fake.requests)


def test_a_start_that_never_ends_times_out_with_the_tail(fake_jupyter):
    fake = fake_jupyter(launcher("starting", 202))
    with pytest.raises(PvserverStartFailed) as raised:
        ensure_pvserver(timeout=0.5, server=fake.server)
    assert "did not start within" in str(raised.value)
    assert raised.value.tail == ["pvserver: starting"]


def test_the_services_own_errors_keep_their_text_and_tail(fake_jupyter):
    fake = fake_jupyter(service(503, {"error": "pvserver exited (code 1)", "tail": ["boom"]}))
    with pytest.raises(PvserverStartFailed) as raised:
        ensure_pvserver(timeout=5, server=fake.server, action="restart")
    assert str(raised.value).startswith("pvserver exited (code 1)")
    assert raised.value.tail == ["boom"]
    assert fake.requests[0][1] == "/paraview/api/restart?wait=5"


def test_a_launcher_answer_that_is_not_json_says_the_versions_differ(fake_jupyter):
    fake = fake_jupyter((503, {STATE_HEADER: "failed", "Content-Type": "text/html"}, b"<p>x"))
    with pytest.raises(PvserverStartFailed, match="another version of hpc-proxies"):
        ensure_pvserver(timeout=5, server=fake.server)


# ----------------------------------------------------------------- view servers
#: Run by ParaView's Python: serves views through ViewServers as show() does, and
#: prints what it saw as one JSON line. /proc/net/unix counts the listening sockets
#: themselves, so a server that still listens on a removed socket file counts too.
PROBE = r"""
import asyncio, base64, json, os, sys, time
from pathlib import Path

from paraview import simple

from hpc_proxies.paraview.view import ViewServers

views_dir, moved_dir = Path(sys.argv[1]), Path(sys.argv[2])


def listening(directory):
    found = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and fields[3] == "00010000" and fields[7].startswith(f"{directory}/"):
            found.append(fields[7])
    return len(found)


def files(directory):
    return sorted(p.name for p in directory.iterdir())


async def until(condition, what):
    deadline = time.monotonic() + 20
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


async def get_page(sock):
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write(b"GET / HTTP/1.0\r\nHost: view\r\n\r\n")
    answer = await reader.read()
    writer.close()
    return answer


async def websocket(sock):
    reader, writer = await asyncio.open_unix_connection(str(sock))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        "GET /ws HTTP/1.1\r\nHost: view\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def send(writer, op):
    payload, mask = json.dumps(op).encode(), os.urandom(4)
    assert len(payload) < 126
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)


async def receive(reader):
    first, second = await asyncio.wait_for(reader.readexactly(2), 60)
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, await reader.readexactly(size)


async def main():
    seen = {}
    servers = ViewServers()
    simple.Show(simple.Sphere())
    view = simple.GetActiveViewOrCreate("RenderView")
    ids = [servers.serve(view, views_dir) for _ in range(10)]
    seen["ten_shows"] = {
        "ids": len(set(ids)), "files": files(views_dir), "listening": listening(views_dir),
        "servers": len(servers), "id": ids[0],
    }
    page = await get_page(views_dir / f"{ids[0]}.sock")
    seen["page"] = [page.split(b"\r\n", 1)[0].decode(), b"paraviewFrames" in page]

    reader, writer = await websocket(views_dir / f"{ids[0]}.sock")
    send(writer, {"op": "size", "w": 96, "h": 64})
    (text, timing), (binary, jpeg) = await receive(reader), await receive(reader)
    seen["frame"] = [text, "ms" in json.loads(timing), binary, jpeg[:2].hex()]

    moved_id = servers.serve(view, moved_dir)  # the tile was relaunched elsewhere
    closing = [await receive(reader), await receive(reader)]
    seen["moved"] = {
        "new_id": moved_id != ids[0], "old_files": files(views_dir),
        "old_listening": listening(views_dir), "files": files(moved_dir),
        "listening": listening(moved_dir), "servers": len(servers),
        "websocket": [closing[0][0], json.loads(closing[0][1]), closing[1][0],
                      int.from_bytes(closing[1][1][:2], "big")],
    }

    other = simple.CreateRenderView()
    servers.serve(other, moved_dir)
    seen["two_views"] = {"listening": listening(moved_dir), "servers": len(servers)}
    simple.Delete(other)
    del other
    await until(lambda: len(servers) == 1, "the deleted view's server to stop")
    seen["deleted"] = {"files": files(moved_dir), "listening": listening(moved_dir)}

    extra = ViewServers()
    extra.serve(view, views_dir)
    extra.close_all()
    seen["close_all"] = {"files": files(views_dir), "listening": listening(views_dir)}

    simple.Disconnect()
    await until(lambda: len(servers) == 0, "the disconnected view's server to stop")
    seen["disconnected"] = {"files": files(moved_dir), "listening": listening(moved_dir)}
    print(json.dumps(seen))


asyncio.run(main())
"""


def test_showing_a_view_again_and_again_leaves_one_server(tmp_path):
    """Ten show()s of one view: one server, one socket, still answering; a server goes
    with its socket (and tells its open pages) when the view moves to another tile
    directory, is deleted, or its connection closes."""
    views, moved = ensure_private_dir(tmp_path / "views"), ensure_private_dir(tmp_path / "moved")
    xvfb = xdisplay.start_xvfb(ensure_private_dir(tmp_path / "x"), shutil.which("Xvfb") or "Xvfb")
    try:
        done = subprocess.run(
            [DEBIAN_PYTHON, "-c", PROBE, str(views), str(moved)],
            env=dict(os.environ, PYTHONPATH=str(ROOT), **xvfb.environ()),
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        xvfb.stop()
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])

    ten = seen["ten_shows"]
    assert ten["ids"] == 1
    assert ten["files"] == [f"{ten['id']}.sock"]
    assert ten["listening"] == 1 and ten["servers"] == 1
    assert seen["page"] == ["HTTP/1.1 200 OK", True]  # the page from static/view.html
    assert seen["frame"] == [1, True, 2, "ffd8"]  # timing text, then a JPEG

    assert seen["moved"] == {
        "new_id": True,
        "old_files": [],
        "old_listening": 0,
        "files": [f for f in seen["moved"]["files"] if f.endswith(".sock")],
        "listening": 1,
        "servers": 1,
        # the open page is told its view is gone, then closed with VIEW_CLOSED
        "websocket": [1, {"closed": True}, 8, 4000],
    }
    assert len(seen["moved"]["files"]) == 1
    assert seen["two_views"] == {"listening": 2, "servers": 2}
    assert seen["deleted"] == {"files": seen["moved"]["files"], "listening": 1}
    assert seen["close_all"] == {"files": [], "listening": 0}
    assert seen["disconnected"] == {"files": [], "listening": 0}


def test_each_rank_of_a_job_renders_on_a_gpu_the_job_was_given():
    """rendering = "egl" under engine = "slurm": a rank picks its EGL device among the
    job's GPUs by its index on the node (round-robin); without GPUs, the site's own."""
    from hpc_proxies.paraview.server import egl_device

    job = {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert egl_device({**job, "OMPI_COMM_WORLD_LOCAL_RANK": "0"}, 0) == 2
    assert egl_device({**job, "OMPI_COMM_WORLD_LOCAL_RANK": "1"}, 0) == 3
    assert egl_device({**job, "SLURM_LOCALID": "2"}, 0) == 2
    assert egl_device({"ROCR_VISIBLE_DEVICES": "1", "MPI_LOCALRANKID": "3"}, 0) == 1
    assert egl_device({}, 5) == 5
    assert egl_device({"CUDA_VISIBLE_DEVICES": ""}, 1) == 1
