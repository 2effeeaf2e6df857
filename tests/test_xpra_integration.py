"""Xpra behind a real Jupyter server: a real Xpra, real sockets, real processes."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import aiohttp
import pytest
from conftest import jupyter_with_site, start_jupyter
from processes import (
    as_nobody,
    assert_stopping_leaves_nothing,
    cmdline,
    environ_of,
    find_process,
    x_extensions,
    xdpyinfo,
)
from waiting import until
from xpra_wire import handshake, xpra_ws_handshake

from hpc_proxies import procs, webroot


def xpra_ready(server) -> None:
    server.wait_for_app("/xpra/")


def secret_of(server) -> str:
    return (server.runtime_dir("xpra") / "app" / "secret").read_text()


def session_pids(server) -> set[int]:
    launcher = server.launcher_pid("xpra")
    return {launcher} | procs.descendants(launcher)


def test_first_request_shows_progress_then_the_html5_client(shared_jupyter):
    first = shared_jupyter.request("/xpra/")  # the module's first request: Xpra is not up yet
    assert first.status == 202
    assert first.headers.get("X-HPC-Proxies-State") == "starting"
    assert "Starting Xpra Desktop" in first.text
    resp = shared_jupyter.wait_for_app("/xpra/")
    assert resp.status == 200
    assert "<title>xpra websockets client</title>" in resp.text
    assert resp.headers.get("Cache-Control") == "no-store"
    # The page carries the launch password once, for the client to log in with: that it
    # does, with no URL carrying it and none left in sessionStorage, is checked in
    # chromium (test_xpra_browser.py).
    assert resp.text.count(secret_of(shared_jupyter)) == 1
    client_js = shared_jupyter.request("/xpra/js/Client.js")
    assert client_js.status == 200 and b"XpraClient" in client_js.body


def test_websocket_needs_jupyter_auth_and_the_launch_password(shared_jupyter):
    xpra_ready(shared_jupyter)
    url = f"ws://127.0.0.1:{shared_jupyter.port}/xpra/"
    auth = {"Authorization": f"token {shared_jupyter.token}"}
    secret = secret_of(shared_jupyter)

    assert handshake(url, None, headers=auth) == "challenge-without-password"
    wrong = handshake(url, "not-" + secret, headers=auth)
    assert wrong.startswith("disconnect:") and "authentication" in wrong
    assert handshake(url, secret, headers=auth) == "hello"

    async def without_jupyter_token():
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await xpra_ws_handshake(session, url, secret)
            return err.value.status

    assert asyncio.run(without_jupyter_token()) == 403


def test_no_tcp_or_udp_listener_in_the_session(shared_jupyter):
    xpra_ready(shared_jupyter)
    pids = session_pids(shared_jupyter)
    assert len(pids) >= 3, "launcher, xpra and its X server at least"
    listeners = subprocess.run(["ss", "-Htulnp"], capture_output=True, text=True).stdout
    owners = {int(p) for p in re.findall(r"pid=(\d+)", listeners)}
    assert shared_jupyter.proc.pid in owners, "ss must show the Jupyter server's own port"
    assert not (owners & pids), f"session processes listening on TCP/UDP:\n{listeners}"


def session_display(server) -> tuple[str, str]:
    """The desktop's DISPLAY and XAUTHORITY, as its xterm has them."""
    xterm = find_process(session_pids(server), "xterm")
    environ = environ_of(xterm)
    return environ["DISPLAY"], environ["XAUTHORITY"]


def screen_size(server) -> str:
    """The X screen's size, as a program in the desktop sees it."""
    info = xdpyinfo(*session_display(server))
    return re.search(r"dimensions:\s+(\d+x\d+) pixels", info).group(1)


def test_the_desktop_screen_is_sized_for_a_browser_not_xpras_5760x2560(shared_jupyter):
    xpra_ready(shared_jupyter)
    assert screen_size(shared_jupyter) == "1920x1200"


def test_a_site_sets_the_desktop_screen(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text('[apps.xpra]\nscreen = "2560x1600"\n')
    server = start_jupyter(tmp_path, {"HPC_PROXIES_CONFIG": str(site)})
    try:
        xpra_ready(server)
        assert screen_size(server) == "2560x1600"
    finally:
        server.stop_all()


def test_another_user_cannot_reach_the_socket_or_the_display(shared_jupyter):
    xpra_ready(shared_jupyter)
    runtime = shared_jupyter.runtime_dir("xpra")
    sock = runtime / "socket"
    connect = (
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print('ok')"
    )
    assert subprocess.run([sys.executable, "-c", connect, str(sock)]).returncode == 0
    denied = as_nobody("/usr/bin/python3", "-c", connect, str(sock))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr

    display, xauthority = session_display(shared_jupyter)
    assert Path(xauthority).parent == runtime / "app"
    owner = subprocess.run(
        ["xdpyinfo", "-display", display],
        env={"PATH": "/usr/bin", "XAUTHORITY": xauthority},
        capture_output=True,
        text=True,
    )
    assert owner.returncode == 0, owner.stderr
    no_cookie = subprocess.run(
        ["xdpyinfo", "-display", display],
        env={"PATH": "/usr/bin", "XAUTHORITY": "/nonexistent"},
        capture_output=True,
        text=True,
    )
    assert no_cookie.returncode != 0
    other = as_nobody("xdpyinfo", "-display", display)
    assert other.returncode != 0, other.stdout
    tcp = as_nobody("xdpyinfo", "-display", "127.0.0.1" + display)
    assert tcp.returncode != 0


def test_no_secret_in_any_cmdline_or_the_log(shared_jupyter):
    xpra_ready(shared_jupyter)
    secret = secret_of(shared_jupyter)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            assert not any(secret in arg for arg in cmdline(int(entry))), cmdline(int(entry))
    assert "--auth=file,filename=" in " ".join(
        cmdline(find_process(session_pids(shared_jupyter), "xpra"))
    )
    assert secret not in shared_jupyter.log()


def test_kill_9_of_xpra_and_the_next_request_brings_it_back(shared_jupyter):
    xpra_ready(shared_jupyter)
    before = session_pids(shared_jupyter)
    xpra = find_process(before, "/usr/bin/xpra")
    xvfb = find_process(before, "Xvfb")
    old_secret = secret_of(shared_jupyter)
    os.kill(xpra, signal.SIGKILL)
    until(
        lambda: not any(os.path.exists(f"/proc/{pid}") for pid in (xpra, xvfb)),
        15,
        "xpra and its X server to be gone (reaped)",
        interval=0.1,
    )
    # The launcher has the socket back: the user gets a page saying what happens, not a 500.
    restarting = shared_jupyter.request("/xpra/")
    assert restarting.status == 202, restarting.text[:500]
    assert "The previous session ended (signal 9)" in restarting.text
    resp = shared_jupyter.wait_for_app("/xpra/")
    assert resp.status == 200 and "xpra websockets client" in resp.text
    new_xpra = find_process(session_pids(shared_jupyter), "/usr/bin/xpra")
    assert new_xpra != xpra
    assert secret_of(shared_jupyter) != old_secret, "each start gets a new password"
    assert "the next request starts it again" in shared_jupyter.log()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_jupyter_leaves_nothing_behind(jupyter, signum):
    xpra_ready(jupyter)
    everything = assert_stopping_leaves_nothing(jupyter, "xpra", signum)
    assert len(everything) >= 4


def test_missing_xpra_gives_a_readable_page(tmp_path):
    server = start_jupyter(tmp_path, {"PATH": str(Path(sys.executable).parent)})
    try:
        resp = server.wait_for_text("/xpra/", "not installed")
        assert resp.status == 503
        assert "Xpra Desktop is not installed here" in resp.text
        assert "apt install xpra" in resp.text
        assert "Try again" in resp.text and "<a href='/lab'>Back to JupyterLab</a>" in resp.text
        assert "Traceback" not in resp.text
    finally:
        server.stop()


def test_tile_is_listed_with_its_icon(shared_jupyter):
    info = shared_jupyter.request("/server-proxy/servers-info")
    assert info.status == 200
    (xpra,) = [s for s in json.loads(info.body)["server_processes"] if s["name"] == "xpra"]
    assert xpra["launcher_entry"]["title"] == "Xpra Desktop"
    assert xpra["launcher_entry"]["enabled"] is True
    icon = shared_jupyter.request(urlparse(xpra["launcher_entry"]["icon_url"]).path)
    assert icon.status == 200 and icon.body.lstrip().startswith(b"<svg")


def test_xpra_runs_with_two_malloc_arenas_so_connections_do_not_grow_it(shared_jupyter):
    xpra_ready(shared_jupyter)
    xpra = find_process(session_pids(shared_jupyter), "xpra")
    assert environ_of(xpra)["MALLOC_ARENA_MAX"] == "2"


# ---------------------------------------------------------------- the client's files
XPRA_WWW = Path("/usr/share/xpra/www")


def body_of(resp) -> bytes:
    return (
        gzip.decompress(resp.body) if resp.headers.get("Content-Encoding") == "gzip" else resp.body
    )


def test_the_client_is_served_compressed_once_and_revalidated_through_jupyter(tmp_path):
    """Xpra serves a web root derived from its installed client, from the user's cache:
    every installed file reachable through Jupyter, as it is installed, gzip copies
    made once; the files cacheable but revalidated (304 when unchanged), the entry
    page with the launch password never stored."""
    cache = tmp_path / "cache"
    with jupyter_with_site(tmp_path, env_update={"XDG_CACHE_HOME": str(cache)}) as server:
        xpra_ready(server)
        app_dir = server.runtime_dir("xpra") / "app"
        argv = cmdline(find_process(session_pids(server), "/usr/bin/xpra"))
        assert f"--html={app_dir}/web/www" in argv, argv
        tree = (app_dir / "web").resolve()
        assert tree.parent == cache / "hpc-proxies" / "web-roots"
        assert stat.S_IMODE(tree.stat().st_mode) == 0o700
        assert stat.S_IMODE(tree.parent.parent.stat().st_mode) == 0o700

        gz = {"Accept-Encoding": "gzip, deflate"}
        for relative, real in webroot.installed_files(XPRA_WWW):
            resp = server.request(f"/xpra/{relative}", headers=gz)
            assert resp.status == 200, relative
            if relative != "index.html":  # the entry page gets the password: below
                assert body_of(resp) == real.read_bytes(), relative
            assert resp.headers.get("Last-Modified"), relative

        script = server.request("/xpra/js/lib/forge.js", headers=gz)
        assert script.headers["Content-Encoding"] == "gzip"
        assert script.body == (tree / "www/js/lib/forge.js.gz").read_bytes()
        assert script.headers["Cache-Control"] == "private, no-cache"
        since = {**gz, "If-Modified-Since": script.headers["Last-Modified"]}
        unchanged = server.request("/xpra/js/lib/forge.js", headers=since)
        assert (unchanged.status, unchanged.body) == (304, b"")
        assert unchanged.headers["Last-Modified"] == script.headers["Last-Modified"]
        older = {**gz, "If-Modified-Since": "Thu, 01 Jan 2015 00:00:00 GMT"}
        assert server.request("/xpra/js/lib/forge.js", headers=older).status == 200

        secret = secret_of(server)
        for path in ("/xpra/", "/xpra/index.html"):
            page = server.request(path, headers=since)  # a browser revalidating the page
            assert page.status == 200 and page.headers["Cache-Control"] == "no-store", path
            assert "Content-Encoding" not in page.headers
            assert page.text.count(secret) == 1, path


# ---------------------------------------------------------------- OpenGL, and what Xpra loads
def desktop_extensions(server) -> list[str]:
    """The X server's extensions, as a program in the desktop sees them."""
    return x_extensions(*session_display(server))


def mapped_files(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_opengl_is_in_the_desktop_but_xpra_loads_no_mesa_and_no_unused_video(shared_jupyter):
    xpra_ready(shared_jupyter)
    pids = session_pids(shared_jupyter)
    assert "GLX" in desktop_extensions(shared_jupyter)
    xpra = find_process(pids, "xpra")
    # Xpra loads its video encoders in a thread once it is up.
    until(lambda: "enc_x264" in mapped_files(xpra), 30, "Xpra's x264 encoder loaded")
    maps = mapped_files(xpra)
    assert "libLLVM" not in maps and "libGLX_mesa" not in maps
    for unused in ("enc_ffmpeg", "/vpx/", "enc_x265", "dec_avcodec2", "libavcodec"):
        assert unused not in maps, unused
    assert environ_of(xpra)["GDK_GL"] == "disable"
    # The session's programs get the user's values, not Xpra's.
    xterm = environ_of(find_process(pids, "xterm"))
    for name in ("GDK_GL", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"):
        assert xterm.get(name) == os.environ.get(name), name


def test_a_site_turns_opengl_off_and_the_x_server_loads_no_mesa(tmp_path):
    with jupyter_with_site(tmp_path, "[apps.xpra]\nglx = false\n") as server:
        xpra_ready(server)
        extensions = desktop_extensions(server)
        assert "GLX" not in extensions and "Composite" in extensions
        xvfb = find_process(session_pids(server), "Xvfb")
        assert "-extension GLX" in " ".join(cmdline(xvfb))
        assert "libLLVM" not in mapped_files(xvfb)
