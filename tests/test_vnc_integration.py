"""The VNC desktop behind a real Jupyter server: real TigerVNC, noVNC, sockets, processes."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import aiohttp
import pytest
from conftest import jupyter_with_site
from processes import (
    as_nobody,
    assert_stopping_leaves_nothing,
    cmdline,
    environ_of,
    find_process,
    wait_gone,
    x_extensions,
)
from rfb_wire import SECURITY_VNCAUTH, VERSION, banner, direct_handshake, handshake
from waiting import until

from hpc_proxies import procs

GEOMETRY = (1280, 800)  # the app's default "geometry"


def vnc_ready(server):
    return server.wait_for_app("/vnc/")


def app_dir(server) -> Path:
    return server.runtime_dir("vnc") / "app"


def secret_of(server) -> str:
    return (app_dir(server) / "secret").read_text()


def session_pids(server) -> set[int]:
    launcher = server.launcher_pid("vnc")
    return {launcher} | procs.descendants(launcher)


def no_bridge_process(pids: set[int]) -> None:
    """The launcher serves noVNC and the websocket itself: no second Python beside it."""
    pythons = [argv for argv in map(cmdline, pids) if argv and "python" in Path(argv[0]).name]
    assert len(pythons) == 1 and "hpc_proxies.launcher" in pythons[0], pythons


def tigervnc_tmpdirs() -> set[Path]:
    """Where TigerVNC's wrapper (no longer used) copied the password file."""
    return set(Path("/tmp").glob("tigervnc.*"))


def without_wrapper(pids: set[int]) -> int:
    """The desktop runs Xtigervnc through ``x-desktop.sh``, not TigerVNC's perl
    ``vncserver``; the X server reads the password file in the private directory."""
    assert not [cmdline(p) for p in pids if "/usr/bin/vncserver" in cmdline(p)[:2]]
    find_process(pids, "x-desktop.sh")
    return find_process(pids, "Xtigervnc")


def ws_url(server) -> str:
    return f"ws://127.0.0.1:{server.port}/vnc/websockify"


def auth(server) -> dict[str, str]:
    return {"Authorization": f"token {server.token}"}


def wrong_password(secret: str) -> str:
    """Differs from ``secret`` in its first character, well within VncAuth's 8."""
    return ("x" if secret[0] != "x" else "y") + secret[1:]


def test_first_request_shows_progress_then_novnc_with_the_password_filled_in(shared_jupyter):
    first = shared_jupyter.request("/vnc/")  # the module's first request: VNC is not up yet
    assert first.status == 202, first.text[:500]
    assert first.headers.get("X-HPC-Proxies-State") == "starting"
    assert "Starting VNC Desktop" in first.text

    start = vnc_ready(shared_jupyter)
    assert start.status == 200, start.text[:500]
    secret = secret_of(shared_jupyter)
    assert secret not in start.text
    assert "Location" not in start.headers
    (href,) = re.findall(r"href='([^']*)'", start.text)
    (script,) = re.findall(r"location\.replace\((\"[^\"]*\")\)", start.text)
    target = json.loads(script)
    assert html.unescape(href) == target
    url = urlparse(target)
    assert url.path == "vnc.html" and not url.scheme and not url.netloc, target
    query = parse_qs(url.query)
    assert query["autoconnect"] == ["1"], target
    assert query["resize"] == ["remote"], target
    assert query["path"] == ["vnc/websockify"], target
    assert "password" not in query and secret not in target, target

    # What the browser then loads: noVNC, with the credentials script right after <head>.
    # (That the script answers noVNC's dialog, and that the redirect above lands on a
    # connected noVNC, is seen in chromium: test_vnc_browser.py.)
    injected = '<head><script>(function(){const pw="' + secret + '";'
    for path in ("/vnc/" + target, "/vnc/vnc.html"):
        page = shared_jupyter.request(path)
        assert page.status == 200, (path, page.status, page.text[:500])
        assert page.headers.get("Cache-Control") == "no-store", (path, dict(page.headers))
        assert "X-HPC-Proxies-State" not in page.headers
        assert "<title>noVNC</title>" in page.text
        assert page.text.count(injected) == 1, (path, page.text[:800])
        assert page.text.count(secret) == 1, "the password only in the injected script"
    ui = shared_jupyter.request("/vnc/app/ui.js")
    assert ui.status == 200 and b"noVNC_credentials_dlg" in ui.body
    assert secret.encode() not in ui.body, "only vnc.html gets the password"


def test_websocket_speaks_rfb_only_with_jupyter_auth(shared_jupyter):
    vnc_ready(shared_jupyter)
    url = ws_url(shared_jupyter)
    assert banner(url, headers=auth(shared_jupyter)) == VERSION
    for headers in (None, {"Authorization": "token not-" + shared_jupyter.token}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            banner(url, headers=headers)
        assert err.value.status == 403, (headers, err.value)


def test_vncauth_is_required_and_checks_the_launch_password(shared_jupyter):
    vnc_ready(shared_jupyter)
    url, headers = ws_url(shared_jupyter), auth(shared_jupyter)
    secret = secret_of(shared_jupyter)
    rfb_socket = str(app_dir(shared_jupyter) / "rfb.sock")

    # Through Jupyter and straight at the VNC server: VncAuth is the only type (no None).
    assert handshake(url, None, headers=headers) == ("types", (SECURITY_VNCAUTH,))
    assert direct_handshake(rfb_socket, None) == ("types", (SECURITY_VNCAUTH,))

    ok = handshake(url, secret, headers=headers)
    assert ok[:3] == ("ok", *GEOMETRY), ok
    assert ok[3], f"ServerInit without a desktop name: {ok}"

    refused = handshake(url, wrong_password(secret), headers=headers)
    assert refused[0] == "refused" and "authentication" in refused[1].lower(), refused
    assert direct_handshake(rfb_socket, secret)[:3] == ("ok", *GEOMETRY)
    # The launch socket is the bridge's now: its websocket reaches the same server.
    via_bridge = handshake(
        "ws://localhost/websockify",
        secret,
        unix_socket=str(shared_jupyter.runtime_dir("vnc") / "socket"),
    )
    assert via_bridge[:3] == ("ok", *GEOMETRY), via_bridge


def test_no_tcp_or_udp_listener_in_the_session(shared_jupyter):
    vnc_ready(shared_jupyter)
    pids = session_pids(shared_jupyter)
    for needle in ("x-desktop.sh", "Xtigervnc", "xterm", "openbox"):
        find_process(pids, needle)
    no_bridge_process(pids)
    listeners = subprocess.run(["ss", "-Htulnp"], capture_output=True, text=True).stdout
    owners = {int(p) for p in re.findall(r"pid=(\d+)", listeners)}
    assert shared_jupyter.proc.pid in owners, (
        f"ss must show the Jupyter server's port:\n{listeners}"
    )
    assert not (owners & pids), f"session processes listening on TCP/UDP:\n{listeners}"
    # Positive control for the session's side: ss attributes its unix sockets to it.
    unix = subprocess.run(["ss", "-Hxlp"], capture_output=True, text=True).stdout
    rfb_socket = f"{app_dir(shared_jupyter) / 'rfb.sock'} "
    rfb = [line for line in unix.splitlines() if rfb_socket in line]
    xvnc = find_process(pids, "Xtigervnc")
    assert len(rfb) == 1 and f"pid={xvnc}," in rfb[0], f"{rfb_socket} not Xtigervnc's:\n{unix}"


def test_another_user_cannot_reach_the_sockets_or_the_display(shared_jupyter):
    vnc_ready(shared_jupyter)
    runtime = shared_jupyter.runtime_dir("vnc")
    connect = (
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print('ok')"
    )
    for sock in (runtime / "socket", runtime / "app" / "rfb.sock"):
        mine = subprocess.run([sys.executable, "-c", connect, str(sock)], capture_output=True)
        assert mine.returncode == 0, (sock, mine.stderr)
        denied = as_nobody("/usr/bin/python3", "-c", connect, str(sock))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, (sock, denied)

    xterm = find_process(session_pids(shared_jupyter), "xterm")
    environ = environ_of(xterm)
    display, xauthority = environ["DISPLAY"], environ["XAUTHORITY"]
    assert Path(xauthority) == runtime / "app" / "Xauthority"

    def xdpyinfo(display: str, xauthority: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["xdpyinfo", "-display", display],
            env={"PATH": "/usr/bin", "XAUTHORITY": xauthority},
            capture_output=True,
            text=True,
        )

    owner = xdpyinfo(display, xauthority)
    assert owner.returncode == 0, owner.stderr
    assert f"dimensions:    {GEOMETRY[0]}x{GEOMETRY[1]} pixels" in owner.stdout
    no_cookie = xdpyinfo(display, "/nonexistent")
    assert no_cookie.returncode != 0, "the X server must want the cookie"
    other = as_nobody("xdpyinfo", "-display", display)
    assert other.returncode != 0, other.stdout
    tcp = as_nobody("xdpyinfo", "-display", "127.0.0.1" + display)
    assert tcp.returncode != 0, tcp.stdout


def test_no_secret_in_any_cmdline_environment_or_log(shared_jupyter):
    vnc_ready(shared_jupyter)
    secret = secret_of(shared_jupyter)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            assert not any(secret in arg for arg in cmdline(int(entry))), cmdline(int(entry))
    for pid in session_pids(shared_jupyter):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        assert secret.encode() not in environ, cmdline(pid)
    assert secret not in shared_jupyter.log()

    app = app_dir(shared_jupyter)
    passwd = app / "passwd"
    xvnc = without_wrapper(session_pids(shared_jupyter))
    argv = cmdline(xvnc)
    assert argv[argv.index("-PasswordFile") + 1] == str(passwd), argv
    for path, mode in ((app.parent, 0o700), (app, 0o700), (passwd, 0o600), (app / "secret", 0o600)):
        assert stat.S_IMODE(path.stat().st_mode) == mode, f"{path}: {path.stat().st_mode:o}"
    assert secret.encode() not in passwd.read_bytes(), "passwd holds the obfuscated form"
    # The X server's cookie: private, and in the private directory.
    xauthority = app / "Xauthority"
    assert argv[argv.index("-auth") + 1] == str(xauthority), argv
    assert stat.S_IMODE(xauthority.stat().st_mode) == 0o600


def test_kill_9_of_the_vnc_server_and_the_next_request_brings_it_back(shared_jupyter):
    vnc_ready(shared_jupyter)
    before = session_pids(shared_jupyter)
    launcher = shared_jupyter.launcher_pid("vnc")
    xvnc = find_process(before, "Xtigervnc")
    old_secret = secret_of(shared_jupyter)
    os.kill(xvnc, signal.SIGKILL)
    left = wait_gone(before - {launcher}, 15)
    assert not left, f"left behind: {[cmdline(pid) for pid in left]}"

    restarting = shared_jupyter.request("/vnc/")
    assert restarting.status == 202, restarting.text[:500]
    assert "The previous session ended" in restarting.text
    resp = vnc_ready(shared_jupyter)
    assert resp.status == 200 and "vnc.html?" in resp.text, resp.text[:500]
    new_xvnc = find_process(session_pids(shared_jupyter), "Xtigervnc")
    assert new_xvnc != xvnc
    new_secret = secret_of(shared_jupyter)
    assert new_secret != old_secret, "each start gets a new password"
    headers = auth(shared_jupyter)
    ok = handshake(ws_url(shared_jupyter), new_secret, headers=headers)
    assert ok[:3] == ("ok", *GEOMETRY), ok
    stale = handshake(ws_url(shared_jupyter), old_secret, headers=headers)
    assert stale[0] == "refused", stale
    assert "the next request starts it again" in shared_jupyter.log()


def test_stopping_jupyter_leaves_nothing_behind(jupyter):
    tmpdirs_before = tigervnc_tmpdirs()
    vnc_ready(jupyter)
    everything = jupyter.descendants()
    without_wrapper(everything)
    # The display it took (-displayfd), as the session sees it, and its X socket.
    display = environ_of(find_process(everything, "openbox"))["DISPLAY"]
    x_socket = Path(f"/tmp/.X11-unix/X{display.lstrip(':')}")
    assert x_socket.is_socket(), display
    # The launcher (which serves noVNC too), x-desktop.sh, Xtigervnc, openbox
    assert len(everything) >= 4, [cmdline(pid) for pid in everything]

    assert_stopping_leaves_nothing(jupyter, "vnc")
    new_tmpdirs = tigervnc_tmpdirs() - tmpdirs_before
    assert not new_tmpdirs, f"/tmp/tigervnc.* piling up: {sorted(new_tmpdirs)}"
    # The X server's socket is gone too: the next desktop can take the number.
    assert not x_socket.exists(), f"{x_socket} of the stopped Xtigervnc"


def test_failed_logins_do_not_lock_the_user_out(shared_jupyter):
    """TigerVNC's blacklist would refuse everyone on a unix socket after 5 failures."""
    vnc_ready(shared_jupyter)
    url, headers = ws_url(shared_jupyter), auth(shared_jupyter)
    secret = secret_of(shared_jupyter)
    for _ in range(4):
        assert banner(url, headers=headers) == VERSION
        assert handshake(url, wrong_password(secret), headers=headers)[0] == "refused"
    ok = handshake(url, secret, headers=headers)
    assert ok[:3] == ("ok", *GEOMETRY), ok


def desktop_extensions(server) -> list[str]:
    """The X server's extensions, as a program in the desktop sees them (its xterm,
    which the session starts soon after the desktop answers)."""

    def the_xterm() -> int | None:
        pids = session_pids(server)
        return next((pid for pid in pids if any("xterm" in a for a in cmdline(pid)[:2])), None)

    environ = environ_of(until(the_xterm, 30, "the session's xterm"))
    return x_extensions(environ["DISPLAY"], environ["XAUTHORITY"])


def test_opengl_is_there_by_default_and_a_site_can_leave_it_out(shared_jupyter, tmp_path):
    vnc_ready(shared_jupyter)
    assert "GLX" in desktop_extensions(shared_jupyter)
    with jupyter_with_site(tmp_path, "[apps.vnc]\nglx = false\n") as server:
        vnc_ready(server)
        extensions = desktop_extensions(server)
        assert "GLX" not in extensions and "RANDR" in extensions


def test_the_launcher_serves_the_desktop_without_loading_openssl(shared_jupyter):
    """It speaks HTTP on unix sockets only: no TLS library (libssl) and no CA store in its
    memory (3.4 MiB of every launcher; libcrypto stays, for hashlib), and noVNC and its
    websocket still work through it."""
    vnc_ready(shared_jupyter)
    launcher = shared_jupyter.launcher_pid("vnc")
    maps = Path(f"/proc/{launcher}/maps").read_text()
    assert "libssl" not in maps
    assert "libssl" in Path(f"/proc/{shared_jupyter.proc.pid}/maps").read_text(), "control"
    secret = secret_of(shared_jupyter)
    ok = handshake(ws_url(shared_jupyter), secret, headers=auth(shared_jupyter))
    assert ok[:3] == ("ok", *GEOMETRY), ok
