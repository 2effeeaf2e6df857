"""The site configuration, seen through a real Jupyter server and a real Xpra."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
from conftest import start_jupyter
from waiting import until

from hpc_proxies import procs


@pytest.fixture
def configured(tmp_path):
    """Start a Jupyter server with a given site config file and environment."""
    servers = []

    def start(config_text: str, **env: str):
        path = tmp_path / "site.toml"
        path.write_text(config_text)
        server = start_jupyter(tmp_path, {"HPC_PROXIES_CONFIG": str(path), **env})
        servers.append(server)
        return server, path

    yield start
    for server in servers:
        server.stop_all()


def xpra_entry(server) -> dict:
    data = json.loads(server.request("/server-proxy/servers-info").body)
    (entry,) = [s for s in data["server_processes"] if s["name"] == "xpra"]
    return entry


def launcher_only(server, refusal: str) -> None:
    """Nothing but the launcher runs: it refused the app for good when it started (it
    logs ``refusal``, the problem's summary, when it decides; the pages served since
    come from that decision), and it has started nothing, then or for any request since."""
    logged = f"[hpc-proxies xpra] Xpra Desktop {refusal}"
    until(lambda: logged in server.log(), 10, f"the launcher to log {logged!r}")
    assert "[hpc-proxies xpra] started pid" not in server.log()
    launcher = server.launcher_pid("xpra")
    assert procs.descendants(launcher) == set()


def test_disabled_on_a_system_removes_the_tile_and_explains(configured):
    server, path = configured(
        '[systems.testsys]\nmatch = ["no-such-host*"]\n'
        "[systems.testsys.apps.xpra]\nenabled = false\n",
        HPC_PROXIES_SYSTEM="testsys",
    )
    assert xpra_entry(server)["launcher_entry"]["enabled"] is False
    page = server.request("/xpra/")
    assert page.status == 403
    assert "Xpra Desktop is disabled here" in page.text
    assert (
        f"disabled on system &#x27;testsys&#x27; by the site configuration "
        f"({path}: systems.testsys.apps.xpra.enabled)"
    ) in page.text
    assert "Try again" not in page.text  # trying again cannot help
    assert "<a href='/lab'>Back to JupyterLab</a>" in page.text
    assert server.request("/xpra/").status == 403  # every time, not just once
    launcher_only(server, "is disabled here")


def test_executable_setup_and_environment_change_how_xpra_starts(configured, tmp_path):
    bindir = tmp_path / "site-bin"
    bindir.mkdir()
    (bindir / "site-xpra").symlink_to("/usr/bin/xpra")
    server, _ = configured(
        f'[apps.xpra]\nexecutable = "{bindir}/site-xpra"\n'
        'setup = "export HPC_SETUP_MARK=from-setup-$((6 * 7))"\n'
        'title = "Site Desktop"\n'
        '[apps.xpra.environment]\nHPC_ENV_MARK = "from-config"\n'
    )
    assert xpra_entry(server)["launcher_entry"]["title"] == "Site Desktop"
    resp = server.wait_for_app("/xpra/")
    assert "xpra websockets client" in resp.text
    launcher = server.launcher_pid("xpra")
    (xpra,) = [
        pid
        for pid in procs.descendants(launcher)
        if procs.proc_info(pid).ppid == launcher  # the app replaced the setup shell
    ]
    argv = Path(f"/proc/{xpra}/cmdline").read_bytes().split(b"\0")
    assert argv[1] == str(bindir / "site-xpra").encode(), argv
    environ = Path(f"/proc/{xpra}/environ").read_bytes().split(b"\0")
    assert b"HPC_SETUP_MARK=from-setup-42" in environ
    assert b"HPC_ENV_MARK=from-config" in environ


def test_a_broken_file_disables_everything_and_shows_the_error(configured):
    server, path = configured('[apps.xpra]\ntimeout = 10\nsetup = "unterminated\n')
    assert server.proc.poll() is None, "the server must still start"
    assert xpra_entry(server)["launcher_entry"]["enabled"] is False
    page = server.request("/xpra/")
    assert page.status == 503
    assert "the site configuration is invalid" in page.text
    assert f"{path}: line 3: TOML syntax error" in page.text
    log = server.log()
    assert "xpra is disabled: the hpc-proxies site configuration is invalid" in log
    assert f"{path}: line 3: TOML syntax error" in log
    launcher_only(server, "is unavailable: the site configuration is invalid")


def test_a_setup_snippet_that_hides_the_program_gives_the_missing_page(configured):
    server, _ = configured('[apps.xpra]\nsetup = "export PATH=/nonexistent"\n')
    resp = server.wait_for_text("/xpra/", "not installed")
    assert resp.status == 503
    assert "Xpra Desktop is not installed here" in resp.text
    shown = html.unescape(resp.text)  # what the user reads (the page escapes every ')
    assert "after the site's setup snippet <code>export PATH=/nonexistent</code>" in shown


def session_argvs(server) -> list[list[bytes]]:
    argvs = []
    for pid in procs.descendants(server.launcher_pid("xpra")):
        try:
            argvs.append(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
        except OSError:
            continue  # it exited meanwhile
    return argvs


def site_session(server) -> list[list[bytes]]:
    """The processes of the session the site configured (``xterm -title site-session``)."""
    configured = [b"xterm", b"-title", b"site-session"]
    return [argv for argv in session_argvs(server) if argv[:3] == configured]


def test_session_and_desktop_mode(configured):
    server, _ = configured('[apps.xpra]\nmode = "desktop"\nsession = "xterm -title site-session"\n')
    assert "xpra websockets client" in server.wait_for_app("/xpra/").text
    argvs = session_argvs(server)
    assert any(argv[1:3] == [b"/usr/bin/xpra", b"start-desktop"] for argv in argvs), argvs
    until(lambda: site_session(server), 20, "the site's session to start", interval=0.2)
