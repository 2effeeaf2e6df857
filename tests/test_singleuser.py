"""hpc_proxies.singleuser and ``hpc-proxies batchspawner-singleuser``: batchspawner's wrapper
of jupyterhub-singleuser, on a chosen address and port range.

The pieces are checked directly; the whole command runs as a subprocess against a small real
HTTP server that plays the hub's ``/hub/api/batchspawner`` endpoint, and execs a Python that
writes what it was started with. The real chain (JupyterHub + batchspawner + Slurm) is in
``tests/deployment/``."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hpc_proxies import singleuser
from hpc_proxies.singleuser import Hub, SingleuserError

CHECKOUT = Path(__file__).resolve().parent.parent
PREFIX = "hpc-proxies batchspawner-singleuser:"
RANGE = "41000-41999"

# What the wrapper execs: writes the environment's service URL, its full argv (the
# kernel's, as `ps` shows it) and its pid, to the file named by its last argument.
REPORT = """
import json, os, sys
with open("/proc/self/cmdline", "rb") as f:
    cmdline = [a.decode() for a in f.read().split(b"\\0") if a]
with open(sys.argv[-1], "w") as f:
    json.dump({"service_url": os.environ.get("JUPYTERHUB_SERVICE_URL"),
               "argv": sys.argv, "cmdline": cmdline, "pid": os.getpid()}, f)
"""


# -- parse_port_range ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("40000-40999", range(40000, 41000)),
        ("40000", range(40000, 40001)),
        ("1024-65535", range(1024, 65536)),
    ],
)
def test_parse_port_range_good(text: str, expected: range) -> None:
    assert singleuser.parse_port_range(text) == expected


@pytest.mark.parametrize("text", ["abc", "5-10", "50000-40000", "1-70000", "40000-", ""])
def test_parse_port_range_bad_names_the_option_and_an_example(text: str) -> None:
    with pytest.raises(SingleuserError) as caught:
        singleuser.parse_port_range(text)
    message = str(caught.value)
    assert "--port-range" in message
    assert "e.g. 40000-40999" in message


# -- service_url --------------------------------------------------------------------------


def test_service_url_replaces_host_and_port_and_keeps_the_path() -> None:
    assert (
        singleuser.service_url("http://0.0.0.0:0/user/ada/", "127.0.0.1", 40001)
        == "http://127.0.0.1:40001/user/ada/"
    )


def test_service_url_brackets_ipv6() -> None:
    assert (
        singleuser.service_url("http://0.0.0.0:0/user/ada/", "::1", 40001)
        == "http://[::1]:40001/user/ada/"
    )


def test_service_url_keeps_scheme_and_query() -> None:
    """Internal TLS gives an https URL: only the netloc changes."""
    assert (
        singleuser.service_url("https://node7:8888/user/ada/?x=1", "10.0.0.7", 40002)
        == "https://10.0.0.7:40002/user/ada/?x=1"
    )


# -- free_port ----------------------------------------------------------------------------


def can_bind(ip: str, port: int) -> bool:
    """Whether a listening socket could take ``ip:port`` now (what the server will do)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
        s.listen()
        return True


def test_free_port_any() -> None:
    port = singleuser.free_port("127.0.0.1", None)
    assert 0 < port <= 65535
    assert can_bind("127.0.0.1", port)


def test_free_port_in_range() -> None:
    ports = singleuser.parse_port_range(RANGE)
    port = singleuser.free_port("127.0.0.1", ports)
    assert port in ports
    assert can_bind("127.0.0.1", port)


def test_free_port_full_range_says_widen() -> None:
    """A range whose only port is taken by a listener: the site's range is too narrow."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SingleuserError) as caught:
            singleuser.free_port("127.0.0.1", range(port, port + 1))
    message = str(caught.value)
    assert "widen --port-range" in message
    assert f"{port}-{port}" in message


def test_an_ip_that_is_not_an_address_is_named() -> None:
    """``--ip node01`` (a host name): a message, not a traceback."""
    with pytest.raises(SingleuserError, match=re.escape("--ip 'node01': expected an IP address")):
        singleuser.free_port("node01", None)


# -- Hub.from_env -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "missing", "present"),
    [
        ({}, ["JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN"], []),
        ({"JUPYTERHUB_API_TOKEN": "t"}, ["JUPYTERHUB_API_URL"], ["JUPYTERHUB_API_TOKEN"]),
        ({"JUPYTERHUB_API_URL": "http://hub/hub/api"}, ["JUPYTERHUB_API_TOKEN"], []),
        (
            {"JUPYTERHUB_API_URL": "", "JUPYTERHUB_API_TOKEN": "t"},
            ["JUPYTERHUB_API_URL"],
            ["JUPYTERHUB_API_TOKEN"],
        ),
    ],
)
def test_hub_from_env_names_what_is_missing(
    env: dict[str, str], missing: list[str], present: list[str]
) -> None:
    with pytest.raises(SingleuserError) as caught:
        Hub.from_env(env)
    message = str(caught.value)
    for name in missing:
        assert name in message
    for name in present:
        assert name not in message


def test_hub_from_env_reads_url_and_token() -> None:
    hub = Hub.from_env(
        {"JUPYTERHUB_API_URL": "http://hub:8081/hub/api/", "JUPYTERHUB_API_TOKEN": "t"}
    )
    assert hub.api_url == "http://hub:8081/hub/api"
    assert hub.token == "t"
    assert hub.certfile is None


# -- the whole command, against a stand-in hub --------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    authorization: str | None
    body: bytes


@dataclass
class FakeHub:
    """An HTTP server on 127.0.0.1 answering POST /hub/api/batchspawner as batchspawner's
    API handler does (200), or with ``status`` (404: a hub without batchspawner)."""

    status: int = 200
    received: list[Received] = field(default_factory=list)
    port: int = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hub/api"


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    """The hub's API, served from a thread; every request is recorded."""
    hub = FakeHub()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with lock:
                hub.received.append(
                    Received(self.command, self.path, self.headers.get("Authorization"), body)
                )
            ok = self.command == "POST" and self.path == "/hub/api/batchspawner"
            status = hub.status if ok else 404
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _record

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the assertions say what was received."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hub.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def job_env(api_url: str | None, token: str | None) -> dict[str, str]:
    """The environment batchspawner gives the job, without this test run's proxies or hub
    variables (a site proxy would otherwise carry the POST to 127.0.0.1 elsewhere)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("JUPYTERHUB_") and k.lower() not in ("http_proxy", "https_proxy")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["JUPYTERHUB_SERVICE_URL"] = "http://0.0.0.0:0/user/ada/"
    if api_url is not None:
        env["JUPYTERHUB_API_URL"] = api_url
    if token is not None:
        env["JUPYTERHUB_API_TOKEN"] = token
    return env


def run_wrapper(
    env: dict[str, str], command: list[str]
) -> tuple[subprocess.CompletedProcess[str], int, list[str]]:
    """``hpc-proxies batchspawner-singleuser`` as batchspawner runs it; also its pid (the
    exec'd command keeps it) and its own argv."""
    argv = [
        sys.executable,
        "-m",
        "hpc_proxies.cli",
        "batchspawner-singleuser",
        "--ip",
        "127.0.0.1",
        "--port-range",
        RANGE,
        "--",
        *command,
    ]
    proc = subprocess.Popen(
        argv, env=env, cwd=CHECKOUT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr), proc.pid, argv


def test_command_tells_the_hub_and_execs(fake_hub: FakeHub, tmp_path: Path) -> None:
    token = secrets.token_hex(16)
    report = tmp_path / "report.json"
    result, pid, argv = run_wrapper(
        job_env(fake_hub.api_url, token), [sys.executable, "-c", REPORT, str(report)]
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr

    # The hub heard exactly one POST, with the port as JSON and the token as batchspawner's
    # wrapper sends it.
    assert len(fake_hub.received) == 1, fake_hub.received
    (request,) = fake_hub.received
    assert request.method == "POST"
    assert request.path == "/hub/api/batchspawner"
    assert request.authorization == f"token {token}"
    body = json.loads(request.body)
    assert set(body) == {"port"}
    port = body["port"]
    assert isinstance(port, int)
    assert port in singleuser.parse_port_range(RANGE)
    assert f"the hub was told port {port}" in result.stdout

    # The command replaced the wrapper (same pid) and was told where to listen.
    seen = json.loads(report.read_text())
    assert seen["pid"] == pid
    assert seen["service_url"] == f"http://127.0.0.1:{port}/user/ada/"
    assert seen["cmdline"] == [sys.executable, "-c", REPORT, str(report)]

    # The token went through the environment only: not in the wrapper's argv nor the
    # command's (both visible to every user of the node in `ps`).
    assert all(token not in a for a in argv)
    assert all(token not in a for a in seen["cmdline"] + seen["argv"])


def assert_user_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 1 with one line of stderr, ours, saying ``words``, and no traceback."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith(PREFIX), line
    for word in words:
        assert word in line, line
    return line


def test_hub_without_batchspawner(fake_hub: FakeHub, tmp_path: Path) -> None:
    """A 404 from the hub: batchspawner's handler is not registered there."""
    fake_hub.status = 404
    report = tmp_path / "report.json"
    result, _, _ = run_wrapper(
        job_env(fake_hub.api_url, "t"), [sys.executable, "-c", REPORT, str(report)]
    )
    assert_user_error(result, "HTTP 404", "batchspawner installed in the hub's Python")
    assert len(fake_hub.received) == 1
    assert not report.exists()


def test_hub_unreachable(tmp_path: Path) -> None:
    """A port bound but not listening: connecting to it is refused, for as long as the
    test holds it."""
    report = tmp_path / "report.json"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/hub/api"
        result, _, _ = run_wrapper(job_env(url, "t"), [sys.executable, "-c", REPORT, str(report)])
    assert_user_error(result, "cannot reach the hub", url)
    assert not report.exists()


def test_no_hub_environment(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result, _, _ = run_wrapper(job_env(None, None), [sys.executable, "-c", REPORT, str(report)])
    assert_user_error(result, "JUPYTERHUB_API_URL")
    assert not report.exists()


def test_command_not_on_path(fake_hub: FakeHub) -> None:
    result, _, _ = run_wrapper(
        job_env(fake_hub.api_url, "t"), ["no-such-singleuser-" + secrets.token_hex(4)]
    )
    assert_user_error(result, "not found on the job's PATH")
    # Checked first: the hub is never told a port where nothing would listen.
    assert not fake_hub.received


@pytest.mark.parametrize("command", [[], ["--"]])
def test_no_command(fake_hub: FakeHub, command: list[str]) -> None:
    argv = [sys.executable, "-m", "hpc_proxies.cli", "batchspawner-singleuser", *command]
    env = job_env(fake_hub.api_url, "t")
    result = subprocess.run(argv, env=env, cwd=CHECKOUT, capture_output=True, text=True, timeout=60)
    assert_user_error(result, "no command")
    assert not fake_hub.received
