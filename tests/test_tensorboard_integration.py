"""TensorBoard behind a real Jupyter server: real TensorBoard processes reading real
event files, real sockets, the logdir switched through the URL."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from conftest import jupyter_with_site
from processes import as_nobody, assert_stopping_leaves_nothing, cmdline, find_process
from tb_events import write_experiments, write_scalars
from waiting import until

from hpc_proxies import pages, procs
from hpc_proxies.launcher import CONTROL_SOCKET

ROOT = Path(__file__).resolve().parent.parent
STATE = pages.STATE_HEADER


@pytest.fixture(scope="module")
def runs(shared_jupyter):
    """Two experiments in the directory the Jupyter server runs in (its root dir)."""
    return write_experiments(shared_jupyter.root_dir)


def api(server, path: str):
    resp = server.request("/tensorboard/" + path)
    assert resp.status == 200 and STATE not in resp.headers, (path, resp.status, resp.text[:300])
    return json.loads(resp.body)


def wait_for_runs(server, expected: set[str], timeout: float = 30) -> list[str]:
    """TensorBoard loads event files in the background: poll its runs API until it
    lists ``expected``; what it lists."""

    def listed() -> list[str] | None:
        found = api(server, "data/runs")
        return found if set(found) == expected else None

    return until(listed, timeout, f"TensorBoard to list the runs {sorted(expected)}", 0.25)


def launcher_state(server) -> str | None:
    """The launcher's state, asked as the progress page does (which starts nothing);
    None once TensorBoard itself answers."""
    return server.request("/tensorboard/", headers={pages.PROBE_HEADER: "1"}).headers.get(STATE)


def session_pids(server) -> set[int]:
    launcher = server.launcher_pid("tensorboard")
    return {launcher} | procs.descendants(launcher)


def tensorboard_pid(server) -> int:
    return find_process(session_pids(server), "serve.py")


def test_first_request_shows_progress_then_tensorboard_under_its_prefix(shared_jupyter, runs):
    first = shared_jupyter.request("/tensorboard/")
    assert first.status == 202, first.text[:500]
    assert first.headers.get(STATE) == "starting"
    assert "Starting TensorBoard" in first.text

    page = shared_jupyter.wait_for_app("/tensorboard/")
    assert page.status == 200 and 'name="tb-relative-root"' in page.text, page.text[:300]
    # Its fonts are named relative to the page (TensorBoard names them from the host's
    # root, which misses the prefix), and arrive under it.
    assert "url(/font-roboto/" not in page.text
    font = re.search(r"url\((font-roboto/[^)]+\.woff2)\)", page.text).group(1)
    assert shared_jupyter.request(f"/tensorboard/{font}").status == 200
    # The default: the directory the Jupyter server runs in.
    assert api(shared_jupyter, "data/logdir") == {"logdir": str(shared_jupyter.root_dir)}
    environment = api(shared_jupyter, "data/environment")
    assert environment["data_location"] == str(shared_jupyter.root_dir)
    # It was told its public prefix; --load_fast=false (no data server) is in its argv.
    argv = cmdline(tensorboard_pid(shared_jupyter))
    assert argv[argv.index("--path-prefix") + 1] == "/tensorboard"
    assert argv[argv.index("--logdir") + 1] == str(shared_jupyter.root_dir)


def test_runs_api_lists_the_runs_and_scalar_data_comes_back(shared_jupyter, runs):
    shared_jupyter.wait_for_app("/tensorboard/")
    assert sorted(wait_for_runs(shared_jupyter, set(runs))) == sorted(runs)
    tags = api(shared_jupyter, "data/plugin/scalars/tags")
    for run, (_, tag, values) in runs.items():
        assert tag in tags[run], tags
        data = api(shared_jupyter, f"data/plugin/scalars/scalars?run={run}&tag={tag}")
        assert [step for _, step, _ in data] == list(range(len(values)))
        assert [value for _, _, value in data] == pytest.approx(values, rel=1e-6)


def test_the_logdir_is_switched_through_the_url(shared_jupyter, runs):
    shared_jupyter.wait_for_app("/tensorboard/")
    before = tensorboard_pid(shared_jupyter)
    exp2 = shared_jupyter.root_dir / "experiments" / "exp2"

    # The request that chooses it is sent to its own URL again: the launcher has the
    # socket by then, so the progress page answers, then the relaunched TensorBoard.
    status, headers, _ = shared_jupyter.raw_get("/tensorboard/?logdir=experiments/exp2")
    assert status == 303 and headers["Location"] == "?logdir=experiments/exp2", headers
    assert headers["Cache-Control"] == "no-store"
    status, headers, body = shared_jupyter.raw_get("/tensorboard/?logdir=experiments/exp2")
    assert status == 202 and headers[STATE] == "starting", body[:300]
    page = shared_jupyter.wait_for_app("/tensorboard/?logdir=experiments/exp2")
    assert page.status == 200 and 'name="tb-relative-root"' in page.text
    assert api(shared_jupyter, "data/logdir") == {"logdir": str(exp2)}
    assert wait_for_runs(shared_jupyter, {"run_b"}) == ["run_b"]
    after = tensorboard_pid(shared_jupyter)
    assert after != before and not procs.proc_info(before)
    # The same directory again (a reload, another spelling) relaunches nothing.
    status, _, _ = shared_jupyter.raw_get(f"/tensorboard/?logdir={exp2}/../exp2")
    assert status == 200
    assert tensorboard_pid(shared_jupyter) == after
    assert "relaunching with logdir=" + str(exp2) in shared_jupyter.log()


def login_cookie(server) -> str:
    """The login a browser keeps after ``?token=``: what a link from another site carries
    (a ``Cookie`` header, no ``Authorization``)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", f"/lab?token={server.token}")
        resp = conn.getresponse()
        resp.read()
        cookies = [c.split(";", 1)[0] for c in resp.headers.get_all("Set-Cookie") or []]
    finally:
        conn.close()
    assert any(c.startswith("username-") for c in cookies), cookies
    return "; ".join(cookies)


def as_browser(server, path: str, headers: dict[str, str]) -> tuple[int, dict, str]:
    """A GET with the login cookie and ``headers`` but no token, as a browser sends it;
    redirects are not followed."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Cookie": login_cookie(server), **headers})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read().decode(errors="replace")
    finally:
        conn.close()


def log_since(server, mark: int) -> str:
    return server.log()[mark:]


def test_a_link_from_another_site_asks_first_and_tensorboard_keeps_running(shared_jupyter, runs):
    """``?logdir=`` from a page on another site (``Sec-Fetch-Site: cross-site``), or from a
    client with only the cookie, gets a page that asks; the same address from our own
    origin relaunches. While TensorBoard runs, the Jupyter side passes the request's
    origin to the launcher, which decides."""
    shared_jupyter.wait_for_app("/tensorboard/")
    running = tensorboard_pid(shared_jupyter)
    shown = api(shared_jupyter, "data/logdir")["logdir"]
    other = "experiments/exp1" if not shown.endswith("exp1") else "experiments/exp2"
    target = shared_jupyter.root_dir / other
    for site in ("cross-site", None):
        mark = len(shared_jupyter.log())
        headers = {"Sec-Fetch-Site": site} if site else {}
        status, got, body = as_browser(shared_jupyter, f"/tensorboard/?logdir={other}", headers)
        assert status == 409, (site, status, body[:500])
        assert got[STATE] == "running" and got["Cache-Control"] == "no-store"
        assert got["Content-Security-Policy"] == "frame-ancestors 'self'", got
        assert f"<h1>Open TensorBoard on {target}?</h1>" in body
        assert f"<th>now</th><td><code>{shown}</code></td>" in body
        assert "<button id='confirm' type='button'>Open this run directory</button>" in body
        assert "<a id='keep' href='/tensorboard/'>Keep TensorBoard as it is</a>" in body
        # The launcher decided (it logs before it answers), and did not relaunch.
        since = log_since(shared_jupyter, mark)
        asked = f"asking the user to confirm logdir={target} (request: {site or 'unknown'})"
        assert asked in since, since[-2000:]
        assert "relaunching with" not in since
        assert tensorboard_pid(shared_jupyter) == running and procs.proc_info(running)
        assert api(shared_jupyter, "data/logdir") == {"logdir": shown}

    # From our own origin (the page's button, or TensorBoard's own pages): relaunched.
    mark = len(shared_jupyter.log())
    path = f"/tensorboard/?logdir={other}"
    status, got, _ = as_browser(shared_jupyter, path, {"Sec-Fetch-Site": "same-origin"})
    assert status == 303 and got["Location"] == f"?logdir={other}", (status, got)
    assert f"relaunching with logdir={target} (request: same-origin)" in log_since(
        shared_jupyter, mark
    )
    assert shared_jupyter.wait_for_app(path).status == 200
    assert api(shared_jupyter, "data/logdir") == {"logdir": str(target)}
    assert tensorboard_pid(shared_jupyter) != running and not procs.proc_info(running)


def test_another_sites_page_cannot_add_the_confirmation_header_or_a_token(shared_jupyter):
    """What ``request_origin`` relies on: a script on another site must pass a CORS
    preflight to add a header like ``X-HPC-Proxies-Confirm`` or ``Authorization`` to a
    request, and the preflight (which carries no cookie) is refused by Jupyter's login."""
    conn = http.client.HTTPConnection("127.0.0.1", shared_jupyter.port, timeout=30)
    try:
        conn.request(
            "OPTIONS",
            "/tensorboard/?logdir=experiments",
            headers={
                "Origin": "http://localhost:9",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": f"{pages.CONFIRM_HEADER.lower()},authorization",
            },
        )
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    assert resp.status == 403, resp.status
    assert resp.getheader("Access-Control-Allow-Origin") is None
    assert resp.getheader("Access-Control-Allow-Headers") is None


def test_a_link_from_another_site_does_not_start_a_stopped_tensorboard_elsewhere(
    shared_jupyter, runs
):
    """While TensorBoard is stopped, the launcher answers the request itself, reading the
    browser's ``Sec-Fetch-Site`` from the headers Jupyter passed on: a link's value is
    asked for, and neither starts TensorBoard nor becomes what it starts with."""
    shared_jupyter.wait_for_app("/tensorboard/")
    shown = api(shared_jupyter, "data/logdir")["logdir"]
    other = "experiments/exp1" if not shown.endswith("exp1") else "experiments/exp2"
    target = shared_jupyter.root_dir / other
    os.kill(tensorboard_pid(shared_jupyter), signal.SIGKILL)
    until(
        lambda: launcher_state(shared_jupyter) == "stopped",
        30,
        "the launcher to take the socket back",
        interval=0.1,
    )

    mark = len(shared_jupyter.log())
    status, got, body = as_browser(
        shared_jupyter, f"/tensorboard/?logdir={other}", {"Sec-Fetch-Site": "cross-site"}
    )
    assert status == 409 and got[STATE] == "stopped", (status, body[:500])
    assert got["Content-Security-Policy"] == "frame-ancestors 'self'", got
    assert f"<h1>Open TensorBoard on {target}?</h1>" in body
    assert "TensorBoard starts with it." in body
    since = log_since(shared_jupyter, mark)
    assert f"asking the user to confirm logdir={target} (request: cross-site)" in since, since
    assert "started pid" not in since
    assert launcher_state(shared_jupyter) == "stopped"

    # The page's link back: TensorBoard starts on the directory it had.
    shared_jupyter.wait_for_app("/tensorboard/")
    assert api(shared_jupyter, "data/logdir") == {"logdir": shown}


@pytest.mark.parametrize(
    ("logdir", "message"),
    [
        ("no-such-runs", "no-such-runs does not exist"),
        ("/etc/hostname", "/etc/hostname is not a directory"),
        ("gs://bucket/runs", "remote storage (gs://, s3://, …) is not supported here"),
        ("<b>x</b>", "&lt;b&gt;x&lt;/b&gt; does not exist"),
    ],
)
def test_a_bad_logdir_gives_a_page_and_tensorboard_keeps_running(
    shared_jupyter, runs, logdir, message
):
    shared_jupyter.wait_for_app("/tensorboard/")
    running = tensorboard_pid(shared_jupyter)
    shown = api(shared_jupyter, "data/logdir")
    resp = shared_jupyter.request(f"/tensorboard/?logdir={logdir}")
    assert resp.status == 404, resp.text[:500]
    assert "TensorBoard cannot open this run directory" in resp.text
    assert message in resp.text
    # Its form (chromium fills it in and submits it: test_tensorboard_browser.py).
    assert "<form method='get' action=''" in resp.text and "<input name='logdir'" in resp.text
    assert "<b>" not in resp.text and "Traceback" not in resp.text
    assert resp.headers["Cache-Control"] == "no-store"
    assert tensorboard_pid(shared_jupyter) == running
    assert api(shared_jupyter, "data/logdir") == shown


def test_a_huge_url_is_neither_echoed_nor_logged_whole(shared_jupyter, runs):
    """A 65 kB query string: the page answers with a short value in its form, and no
    line hpc-proxies writes into the Jupyter log holds more than its start."""
    from hpc_proxies.launcher import LOG_LINE_MAX

    shared_jupyter.wait_for_app("/tensorboard/")
    running = tensorboard_pid(shared_jupyter)
    huge = "/nonexistent/" + "x" * 65_000
    resp = shared_jupyter.request(f"/tensorboard/?logdir={huge}")
    assert resp.status == 404
    assert "the directory name is too long" in resp.text
    assert len(resp.body) < 16_000, len(resp.body)
    stopped = shared_jupyter.request(f"/xpra/?anything={huge}")  # another app, its start
    assert stopped.status < 500
    ours = [line for line in shared_jupyter.log().splitlines() if "[hpc-proxies " in line]
    assert ours and max(map(len, ours)) <= LOG_LINE_MAX + 100
    assert tensorboard_pid(shared_jupyter) == running


def test_no_tcp_listener_from_any_process_of_the_app(shared_jupyter, runs):
    shared_jupyter.wait_for_app("/tensorboard/")
    pids = session_pids(shared_jupyter)
    tensorboard = tensorboard_pid(shared_jupyter)
    assert not any("tensorboard_data_server" in " ".join(cmdline(pid)) for pid in pids)
    listeners = subprocess.run(["ss", "-Htulnp"], capture_output=True, text=True).stdout
    owners = {int(p) for p in re.findall(r"pid=(\d+)", listeners)}
    assert shared_jupyter.proc.pid in owners, f"ss must show Jupyter's own port:\n{listeners}"
    assert not (owners & pids), f"TensorBoard's processes listen on TCP/UDP:\n{listeners}"
    # Positive control: ss does attribute the launch's unix socket to TensorBoard (by
    # the name it was bound to, before the launcher renamed it over the launch socket).
    unix = subprocess.run(["ss", "-Hxlp"], capture_output=True, text=True).stdout
    launch_socket = f"{shared_jupyter.runtime_dir('tensorboard') / 'app' / 'app.sock'} "
    mine = [line for line in unix.splitlines() if launch_socket in line]
    assert len(mine) == 1 and f"pid={tensorboard}," in mine[0], f"{launch_socket}:\n{unix}"


def test_another_user_cannot_reach_the_sockets(shared_jupyter, runs):
    shared_jupyter.wait_for_app("/tensorboard/")
    runtime = shared_jupyter.runtime_dir("tensorboard")
    connect = "import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1]); print('ok')"
    for sock in (runtime / "socket", runtime / CONTROL_SOCKET):
        mine = subprocess.run([sys.executable, "-c", connect, str(sock)], capture_output=True)
        assert mine.returncode == 0, (sock, mine.stderr)
        denied = as_nobody("/usr/bin/python3", "-c", connect, str(sock))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, (sock, denied)
    assert oct(runtime.stat().st_mode & 0o777) == "0o700"


def test_tensorboards_info_file_stays_in_the_private_directory(shared_jupyter, runs):
    shared_jupyter.wait_for_app("/tensorboard/")
    tensorboard = tensorboard_pid(shared_jupyter)
    info = shared_jupyter.runtime_dir("tensorboard") / "app" / ".tensorboard-info"
    assert (info / f"pid-{tensorboard}.info").is_file(), list(info.parent.iterdir())
    assert not Path(f"/tmp/.tensorboard-info/pid-{tensorboard}.info").exists()


def test_the_sites_logdir_is_shown_first(tmp_path):
    runs = write_experiments(tmp_path / "root")
    toml = f'[apps.tensorboard]\nlogdir = "{tmp_path}/root/experiments/exp1"\n'
    with jupyter_with_site(tmp_path, toml) as server:
        server.wait_for_app("/tensorboard/")
        assert api(server, "data/logdir") == {"logdir": f"{tmp_path}/root/experiments/exp1"}
        assert wait_for_runs(server, {"run_a"}) == ["run_a"]
        (_, tag, values) = runs["experiments/exp1/run_a"]
        data = api(server, f"data/plugin/scalars/scalars?run=run_a&tag={tag}")
        assert [value for _, _, value in data] == pytest.approx(values, rel=1e-6)


def test_a_sites_logdir_that_does_not_exist_gives_a_page_not_a_crash_loop(tmp_path):
    (tmp_path / "root").mkdir()
    write_scalars(tmp_path / "root" / "mine" / "run_c", "loss", float)
    toml = '[apps.tensorboard]\nlogdir = "/nonexistent/project/runs"\n'
    with jupyter_with_site(tmp_path, toml) as server:
        for _ in range(3):
            resp = server.wait_for_text("/tensorboard/", "cannot open")
            assert resp.status == 404, resp.text[:500]
            assert "/nonexistent/project/runs does not exist" in resp.text
            assert "<input name='logdir' size='48' value='/nonexistent/project/runs'>" in resp.text
        # Each of those starts failed on the logdir before anything was spawned (the
        # launcher logs the failure before it serves the page), and the launcher waits,
        # stopped, for the next request: no start is under way or left to come.
        failed = "[hpc-proxies tensorboard] TensorBoard cannot open this run directory"
        until(lambda: failed in server.log(), 10, f"the launcher to log {failed!r}")
        assert launcher_state(server) == "stopped"
        assert "started pid" not in server.log(), "TensorBoard must not be started at all"
        launcher = server.launcher_pid("tensorboard")
        assert procs.descendants(launcher) == set()
        # The user opens their own runs from the page's form (a GET with ?logdir=).
        page = server.wait_for_app("/tensorboard/?logdir=mine")
        assert page.status == 200
        assert api(server, "data/logdir") == {"logdir": f"{tmp_path}/root/mine"}
        assert wait_for_runs(server, {"run_c"}) == ["run_c"]


def test_stopping_jupyter_leaves_nothing_behind(jupyter):
    write_experiments(jupyter.root_dir)
    jupyter.wait_for_app("/tensorboard/")
    tensorboard = tensorboard_pid(jupyter)
    assert tensorboard in assert_stopping_leaves_nothing(jupyter, "tensorboard")


def test_missing_tensorboard_page_says_how_to_install_it(tmp_path):
    """A Python without TensorBoard, as on a fresh install without the extra: the
    launcher (run as Jupyter runs it) answers with a page saying how to install it."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = bare / "bin" / "python"
    # hpc-proxies' own dependencies (aiohttp, jinja2, ...), as pip installs them; not
    # TensorBoard, nor anything installed for it.
    site = Path(aiohttp.__file__).resolve().parent.parent
    (bare_site,) = bare.glob("lib/python*/site-packages")
    for entry in site.iterdir():
        if not entry.name.lower().startswith(("tensorboard", "tensorflow", "__editable__")):
            (bare_site / entry.name).symlink_to(entry)
    assert subprocess.run([python, "-c", "import tensorboard"], capture_output=True).returncode
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HPC_PROXIES_CONFIG": "/dev/null"}
    argv = ["-m", "hpc_proxies.launcher", "--app", "tensorboard", "--prefix", "/tensorboard/"]
    launcher = subprocess.Popen(
        [python, *argv, "--socket", str(runtime / "socket")],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )

    def page() -> str | None:
        assert launcher.poll() is None, f"the launcher exited: {launcher.stderr.read()}"
        status, body = unix_get(runtime / "socket", "/tensorboard/")
        return body if status == 503 else None

    try:
        body = until(page, 30, "the launcher's page (503)", interval=0.1)
        assert "TensorBoard is not installed here" in body
        assert "<code>tensorboard</code>" in body
        assert "pip install &#x27;hpc-proxies[tensorboard]&#x27;" in body
        assert "Traceback" not in body
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(15)
    assert not runtime.exists()


def unix_get(path: Path, target: str) -> tuple[int, str]:
    """One HTTP GET on a unix socket: the status and the whole response (head and body);
    (0, the error) if nothing answers yet."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(f"GET {target} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
    except OSError as err:
        return 0, str(err)
    text = raw.decode(errors="replace")
    return int(text.split()[1]), text
