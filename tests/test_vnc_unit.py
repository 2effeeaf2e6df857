"""The VNC app's declarations: TigerVNC and TurboVNC command lines, secrets, settings.

TurboVNC cannot be installed here, so its command line is checked against its
documented options (TurboVNC 3.x ``vncserver`` and ``Xvnc`` man pages): ``-fg``,
``-xstartup``, ``-rfbunixpath``/``-rfbunixmode``, ``-securitytypes VNC``, ``-rfbauth``;
and it must not get ``-rfbport -1``, which TurboVNC rejects.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from hpc_proxies import config
from hpc_proxies.runtime import ensure_private_dir, read_secret, write_secret
from hpc_proxies.spec import Launch
from hpc_proxies.vnc import (
    APP,
    bridge,
    desktop_argv,
    is_turbovnc,
    page_script,
    server_argv,
    tigervnc_xserver,
)
from hpc_proxies.xdisplay import desktop_script, write_xauthority


@pytest.fixture
def launch(tmp_path):
    app_dir = ensure_private_dir(tmp_path / "app")
    return Launch(
        name="vnc",
        runtime_dir=tmp_path,
        app_dir=app_dir,
        socket=app_dir / "app.sock",
        secret_file=write_secret(app_dir, nbytes=APP.secret_bytes),
        executables={"vncserver": "/opt/TurboVNC/bin/vncserver", "vncpasswd": "vncpasswd"},
        prefix="/user/ada/vnc/",
        settings={"geometry": "1600x900", "depth": 24},
    )


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_tigervnc_listens_on_the_unix_socket_only(launch):
    argv = server_argv(launch, turbo=False)
    assert option(argv, "-rfbunixpath") == str(launch.app_dir / "rfb.sock")
    assert option(argv, "-rfbunixmode") == "0600"
    assert option(argv, "-rfbport") == "-1"
    assert option(argv, "-SecurityTypes") == "VncAuth"
    assert option(argv, "-PasswordFile") == str(launch.app_dir / "passwd")
    assert "-UseBlacklist=0" in argv  # one peer address on a unix socket: no lock-outs
    assert option(argv, "-xstartup") == str(launch.app_dir / "xstartup")
    assert "-fg" in argv
    assert (option(argv, "-geometry"), option(argv, "-depth")) == ("1600x900", "24")


def test_tigervnc_runs_without_its_wrapper_and_listens_on_the_unix_socket_only(launch):
    """Xtigervnc through x-desktop.sh: the same VNC options, its cookie in the private
    directory, no X11 TCP listener; TurboVNC keeps its wrapper."""
    assert tigervnc_xserver("/usr/bin/vncserver") == Path("/usr/bin/Xtigervnc")
    assert tigervnc_xserver(launch.executable) is None  # not installed: the wrapper
    argv = desktop_argv(launch, Path("/usr/bin/Xtigervnc"))
    assert argv[:5] == [
        "/bin/sh",
        str(desktop_script()),
        str(launch.app_dir),
        str(launch.app_dir / "xstartup"),
        "/usr/bin/Xtigervnc",
    ]
    assert option(argv, "-rfbunixpath") == str(launch.app_dir / "rfb.sock")
    assert option(argv, "-rfbport") == "-1"
    assert option(argv, "-SecurityTypes") == "VncAuth"
    assert option(argv, "-auth") == str(launch.xauthority)
    assert option(argv, "-nolisten") == "tcp"
    assert "-UseBlacklist=0" in argv and "-fg" not in argv


XVFB = ("Xvfb", "-nolisten", "tcp", "-auth")


def xstartup(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o700)
    return path


def test_the_desktop_script_runs_the_session_on_the_display_the_server_took(tmp_path):
    """Real Xvfb: the session gets the display (-displayfd); when it ends, the X server
    is stopped and the script exits 0."""
    directory = tmp_path / "app"
    directory.mkdir(mode=0o700)
    seen = tmp_path / "display"
    session = xstartup(directory / "xstartup", f"echo $DISPLAY > {seen}; xdpyinfo >/dev/null")
    cookie = write_xauthority(directory / "Xauthority")
    done = subprocess.run(
        ["/bin/sh", str(desktop_script()), str(directory), str(session), *XVFB, str(cookie)],
        env={"PATH": "/usr/bin:/bin", "XAUTHORITY": str(cookie)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    display = seen.read_text().strip()
    assert re.fullmatch(r":\d+", display), display
    assert not Path(f"/tmp/.X11-unix/X{display[1:]}").exists(), "the X server is gone"
    assert not (directory / "displayfd").exists()


def test_the_desktop_script_says_when_the_x_server_does_not_start(tmp_path):
    directory = tmp_path / "app"
    directory.mkdir(mode=0o700)
    session = xstartup(directory / "xstartup", "echo the session ran")
    done = subprocess.run(
        ["/bin/sh", str(desktop_script()), str(directory), str(session), "/bin/false"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "/bin/false did not start" in done.stderr
    assert "the session ran" not in done.stdout


def test_turbovnc_gets_its_own_option_names_and_no_rfbport(launch):
    argv = server_argv(launch, turbo=True)
    assert argv[0] == "/opt/TurboVNC/bin/vncserver"
    assert "-rfbport" not in argv  # TurboVNC refuses -rfbport -1; a unix socket means no TCP
    assert option(argv, "-rfbunixpath") == str(launch.app_dir / "rfb.sock")
    assert option(argv, "-securitytypes") == "VNC"
    assert option(argv, "-rfbauth") == str(launch.app_dir / "passwd")
    assert "-SecurityTypes" not in argv and "-PasswordFile" not in argv
    assert "-fg" in argv and option(argv, "-xstartup") == str(launch.app_dir / "xstartup")


def test_glx_is_on_unless_the_site_turns_it_off(launch):
    for turbo in (False, True):
        assert "GLX" not in server_argv(launch, turbo)
        without = replace(launch, settings={**launch.settings, "glx": False})
        argv = server_argv(without, turbo)
        assert option(argv, "-extension") == "GLX"


def test_turbovnc_is_told_apart_by_its_script(tmp_path):
    turbo = tmp_path / "vncserver-turbo"
    turbo.write_text("#!/usr/bin/env perl\n# TurboVNC vncserver script\n")
    tiger = tmp_path / "vncserver-tiger"
    tiger.write_text("#!/usr/bin/perl\n# TigerVNC vncserver\n")
    assert is_turbovnc(str(turbo)) and not is_turbovnc(str(tiger))
    assert not is_turbovnc(str(tmp_path / "missing"))
    assert not is_turbovnc("/usr/bin/vncserver")  # Debian's is TigerVNC


def test_no_secret_in_any_argv_and_the_password_fits_vncauth(launch):
    secret = read_secret(launch.secret_file)
    assert len(secret) == 8  # VncAuth uses 8 characters: no weaker than it must be
    for argv in [server_argv(launch, False), server_argv(launch, True)]:
        assert not any(secret in arg for arg in argv), argv
    assert secret not in repr(bridge(launch))


def test_the_bridge_sends_the_browser_to_novnc_under_the_prefix(launch):
    served = bridge(launch)
    assert served.target == launch.app_dir / "rfb.sock"
    assert served.web_dir == Path("/usr/share/novnc") and served.index == "vnc.html"
    query = served.query
    assert "path=user%2Fada%2Fvnc%2Fwebsockify" in query
    assert "resize=remote" in query and "autoconnect=1" in query and "reconnect=1" in query
    assert "password" not in query


def test_page_script_holds_the_password_as_a_script_value():
    """The script gets the password as a JavaScript string equal to it, whatever its
    characters. (That the script answers noVNC's credentials dialog is checked in
    chromium: test_vnc_browser.py's tests connect with no dialog left open and nothing
    typed; test_pages.py checks that no password can end the script early.)"""
    password = "p4ss'</script>\"\\é"
    script = page_script(password, {})
    assert script.startswith("<script>") and script.endswith("</script>")
    literal = re.search(r'const pw=("(?:[^"\\]|\\.)*");', script)
    assert literal, script[:200]
    assert json.loads(literal.group(1)) == password  # a JSON string is a JavaScript one


def test_vnc_settings_are_validated(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[apps.vnc]\ndepth = 12\ngeometry = 1280\n")
    site = config.load(env={}, hostname="x", files=[path])
    assert site.error is not None
    text = str(site.error)
    assert "apps.vnc.depth: expected one of 16, 24, 32, got 12" in text
    assert (
        "apps.vnc.geometry: expected a string of the form WIDTHxHEIGHT, e.g. '2560x1600', got 1280"
    ) in text


def test_custom_session_needs_no_openbox():
    default = {r.executable for r in APP.requirements({})}
    custom = {r.executable for r in APP.requirements({"session": "exec startxfce4"})}
    assert {"vncserver", "vncpasswd", "xterm", "openbox"} <= default
    assert "openbox" not in custom and "vncserver" in custom
