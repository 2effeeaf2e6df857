"""RStudio behind a real Jupyter server, with the stand-in ``rserver`` (tests/standin):
rstudio-server cannot be installed here, so RStudio itself is verified only against this
stand-in, which honours and checks rserver's documented flags."""

from __future__ import annotations

import getpass
import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import jupyter_with_site
from processes import as_nobody, assert_stopping_leaves_nothing, cmdline, find_process
from test_tensorboard_integration import unix_get

from hpc_proxies import pages, procs

STANDIN = Path(__file__).resolve().parent / "standin"
RSERVER = STANDIN / "rserver"
FAKE_R = STANDIN / "R"
STATE = pages.STATE_HEADER


@pytest.fixture(scope="module")
def rstudio(tmp_path_factory):
    """One Jupyter server whose RStudio is the stand-in, with a chosen R."""
    toml = f'[apps.rstudio]\nexecutable = "{RSERVER}"\nr = "{FAKE_R}"\n'
    with jupyter_with_site(tmp_path_factory.mktemp("rstudio"), toml) as server:
        yield server


def session_pids(server) -> set[int]:
    launcher = server.launcher_pid("rstudio")
    return {launcher} | procs.descendants(launcher)


def rserver_pid(server) -> int:
    """The stand-in rserver itself (not its rsession child, which runs the same file)."""
    pids = {pid for pid in session_pids(server) if "--rsession-stand-in" not in cmdline(pid)}
    return find_process(pids, str(STANDIN))


def app_dir(server) -> Path:
    return server.runtime_dir("rstudio") / "app"


def test_first_request_shows_progress_then_the_rstudio_page(rstudio):
    first = rstudio.request("/rstudio/")
    assert first.status == 202 and first.headers.get(STATE) == "starting", first.text[:300]
    assert "Starting RStudio" in first.text
    page = rstudio.wait_for_app("/rstudio/")
    assert page.status == 200, page.text[:300]
    assert "<title>RStudio</title>" in page.text
    assert f"<p id='user'>{getpass.getuser()}</p>" in page.text, "it runs as the user"
    assert "<p id='root'>/rstudio/</p>" in page.text, "it was told its public prefix"
    assert "href='/rstudio/redirect'" in page.text


def test_a_redirect_to_another_host_is_rewritten_to_jupyters(rstudio):
    rstudio.wait_for_app("/rstudio/")
    # Straight from the stand-in, the Location names another host and port ...
    status, direct = unix_get(rstudio.runtime_dir("rstudio") / "socket", "/redirect")
    assert status == 302
    assert "Location: http://rserver-elsewhere.invalid:8787/rstudio/landed?from=redirect" in (
        direct
    ), direct
    # ... through Jupyter it names the host the browser used, and the page it leads to works.
    status, headers, _ = rstudio.raw_get("/rstudio/redirect")
    assert status == 302
    location = headers["Location"]
    assert location == f"//127.0.0.1:{rstudio.port}/rstudio/landed?from=redirect", location
    landed = rstudio.request(location.removeprefix(f"//127.0.0.1:{rstudio.port}"))
    assert landed.status == 200 and "landed from=redirect" in landed.text
    followed = rstudio.request("/rstudio/redirect")  # urllib follows it, as a browser does
    assert followed.status == 200 and "landed from=redirect" in followed.text


def test_rserver_got_the_flags_and_the_secret_files_are_private(rstudio):
    rstudio.wait_for_app("/rstudio/")
    app = app_dir(rstudio)
    interpreter, script, *argv = cmdline(rserver_pid(rstudio))
    assert script == str(RSERVER) and "python" in interpreter
    assert argv == [
        f"--www-socket={app / 'app.sock'}",
        "--auth-none=1",
        "--www-root-path=/rstudio/",
        f"--server-user={getpass.getuser()}",
        f"--server-data-dir={app / 'server-data'}",
        f"--database-config-file={app / 'database.conf'}",
        f"--secure-cookie-key-file={app / 'secret'}",
        "--server-daemonize=0",
        "--www-frame-origin=same",
        "--www-verify-user-agent=0",
        f"--rsession-which-r={FAKE_R}",
    ], argv
    info = json.loads(rstudio.request("/rstudio/whoami").body)
    assert info["argv"] == [script, *argv] and info["user"] == getpass.getuser()
    for path, mode in (
        (app.parent, 0o700),
        (app, 0o700),
        (app / "secret", 0o600),
        (app / "database.conf", 0o600),
        (app / "server-data", 0o777),  # rserver's doing: hence nested in the private dir
    ):
        assert stat.S_IMODE(os.lstat(path).st_mode) == mode, (path, oct(os.lstat(path).st_mode))
    assert "provider=sqlite\n" in (app / "database.conf").read_text()
    # The world-writable data directory is out of another user's reach.
    denied = as_nobody("/usr/bin/touch", str(app / "server-data" / "planted"))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    connect = "import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"
    other = as_nobody("/usr/bin/python3", "-c", connect, str(app.parent / "socket"))
    assert other.returncode != 0 and "Permission denied" in other.stderr, other


def test_no_secret_in_any_argv_environment_or_log(rstudio):
    rstudio.wait_for_app("/rstudio/")
    key = (app_dir(rstudio) / "secret").read_text()
    assert len(key) >= 40
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            assert not any(key in arg for arg in cmdline(int(entry))), cmdline(int(entry))
    for pid in session_pids(rstudio):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        assert key.encode() not in environ, cmdline(pid)
    assert key not in rstudio.log()


def test_no_tcp_listener_from_any_process_of_the_app(rstudio):
    rstudio.request("/rstudio/")  # the stand-in starts its rsession with the first page
    rstudio.wait_for_app("/rstudio/")
    pids = session_pids(rstudio)
    assert any("--rsession-stand-in" in cmdline(pid) for pid in pids), "no rsession"
    listeners = subprocess.run(["ss", "-Htulnp"], capture_output=True, text=True).stdout
    owners = {int(p) for p in re.findall(r"pid=(\d+)", listeners)}
    assert rstudio.proc.pid in owners, f"ss must show Jupyter's own port:\n{listeners}"
    assert not (owners & pids), f"RStudio's processes listen on TCP/UDP:\n{listeners}"


def test_stopping_jupyter_leaves_nothing_behind(tmp_path):
    toml = f'[apps.rstudio]\nexecutable = "{RSERVER}"\n'
    with jupyter_with_site(tmp_path, toml) as server:
        server.wait_for_app("/rstudio/")
        server.request("/rstudio/")
        assert any("--rsession-stand-in" in cmdline(pid) for pid in server.descendants())
        assert_stopping_leaves_nothing(server, "rstudio")


def test_an_rserver_without_www_socket_gets_a_clear_page(tmp_path):
    toml = f'[apps.rstudio]\nexecutable = "{STANDIN / "rserver-old"}"\n'
    with jupyter_with_site(tmp_path, toml) as server:
        resp = server.wait_for_text("/rstudio/", "cannot run")
        assert resp.status == 503, resp.text[:500]
        text = resp.text
        assert "RStudio cannot run with the version installed here" in text
        assert (
            f"<code>{STANDIN / 'rserver-old'} --help</code> does not list "
            "<code>--www-socket</code>." in text
        )
        assert "never opens a TCP port that other users of this node could reach" in text
        assert "install a newer version" in text
        assert "--www-root-path arg" in text, "its --help output is shown"
        assert "Traceback" not in text and "unrecognised option" not in text
        assert "started pid" not in server.log(), "the old rserver is never started"


def test_setup_snippet_brings_rserver_like_a_module_would(tmp_path):
    toml = f'[apps.rstudio]\nsetup = "export PATH={STANDIN}:$PATH"\n'
    with jupyter_with_site(tmp_path, toml) as server:
        page = server.wait_for_app("/rstudio/")
        assert page.status == 200 and "<title>RStudio</title>" in page.text
        assert "--rsession-which-r" not in " ".join(cmdline(rserver_pid(server)))


def test_missing_rserver_gives_a_page_naming_it(tmp_path):
    with jupyter_with_site(tmp_path, "") as server:
        resp = server.wait_for_text("/rstudio/", "not installed")
        assert resp.status == 503
        assert "RStudio is not installed here" in resp.text
        assert "<code>rserver</code>" in resp.text and "module load RStudio-Server" in resp.text
