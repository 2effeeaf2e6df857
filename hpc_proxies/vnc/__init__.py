"""VNC desktop: TigerVNC (or TurboVNC) on a private socket, noVNC in the browser.

The VNC server listens only on a unix socket in the launch's private directory
(``-rfbunixpath``; no TCP port), with a one-time VncAuth password in a 0600 file. The
launcher serves noVNC on the launch socket and joins its websocket to the VNC server
(``bridge``, :mod:`hpc_proxies.bridge`). The Jupyter server fills the password into noVNC's
credentials dialog from the page it serves, so it is never in a URL or an argv.

TigerVNC's X server (``Xtigervnc``, beside ``vncserver``) is started without its perl
wrapper, which cost 12 MiB per desktop: ``x-desktop.sh`` (:func:`hpc_proxies.xdisplay.
desktop_script`) starts it on a free display and the session on that display. So
TigerVNC's ``/etc/tigervnc/vncserver-config-defaults`` and ``~/.vnc/tigervnc.conf`` are
not read: the site configuration says everything. TurboVNC keeps its ``vncserver``,
which runs with a stand-in home (``runtime.stand_in_home``): it keeps its log and pid
file in ``~/.vnc``. The session's xstartup gives the user's real home back to the
desktop's programs.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlencode

from ..pages import render_template, static_text
from ..runtime import read_secret, stand_in_home, write_private_file
from ..spec import SCREEN_SIZE, AppSpec, Launch, Requirement, Setting, WebBridge, glx_setting
from ..xdisplay import desktop_script

VNCSERVER = "vncserver"
XTIGERVNC = "Xtigervnc"
# openbox maps windows that exist when it starts, or that it starts itself; an xterm
# started beside it ("xterm & exec openbox") often stayed unmapped until a click.
DEFAULT_SESSION = "exec openbox --startup xterm"
DEFAULT_NOVNC = "/usr/share/novnc"
RFB_SOCKET = "rfb.sock"
#: VncAuth uses at most 8 characters of a password.
PASSWORD_LENGTH = 8


def is_turbovnc(vncserver: str) -> bool:
    """TurboVNC's vncserver script names itself; TigerVNC's does not mention TurboVNC."""
    try:
        head = Path(vncserver).read_bytes()[:20000]
    except OSError:
        return False
    return b"TurboVNC" in head


def vnc_options(launch: Launch) -> list[str]:
    """What the VNC server is told, through its wrapper or not: unix socket only, VncAuth
    with the launch's file, the screen, and OpenGL unless the site leaves it out."""
    settings = launch.settings
    options = [
        "-rfbunixpath",
        str(launch.app_dir / RFB_SOCKET),
        "-rfbunixmode",
        "0600",
        "-geometry",
        str(settings.get("geometry", "1280x800")),
        "-depth",
        str(settings.get("depth", 24)),
    ]
    if not settings.get("glx", True):
        # No OpenGL in the desktop: the X server then never loads Mesa's software
        # renderer (llvmpipe): Xtigervnc 77 -> 25 MiB in an idle desktop alone.
        options += ["-extension", "GLX"]
    return options


def tigervnc_security(launch: Launch) -> list[str]:
    return [
        "-rfbport",
        "-1",
        "-localhost",
        "yes",
        "-SecurityTypes",
        "VncAuth",
        "-PasswordFile",
        str(launch.app_dir / "passwd"),
        # TigerVNC black-lists a peer address after 5 connections that did not log in;
        # on a unix socket every peer has the same address, so readiness probes and a
        # few reconnects would lock the user out of their own desktop. Only the user's
        # Jupyter server can reach this socket, so the blacklist protects nothing here.
        "-UseBlacklist=0",
    ]


def server_argv(launch: Launch, turbo: bool) -> list[str]:
    """The vncserver wrapper's command line (TurboVNC's, or TigerVNC's without its X
    server beside it)."""
    wrapper = [
        launch.executable,
        "-fg",
        "-xstartup",
        str(launch.app_dir / "xstartup"),
        *vnc_options(launch),
    ]
    if turbo:
        # TurboVNC opens no TCP port when given a unix socket (and refuses -rfbport -1).
        return [*wrapper, "-securitytypes", "VNC", "-rfbauth", str(launch.app_dir / "passwd")]
    return [*wrapper, *tigervnc_security(launch)]


def tigervnc_xserver(vncserver: str) -> Path | None:
    """TigerVNC's X server, installed beside its ``vncserver`` wrapper (Debian: both in
    /usr/bin); None for TurboVNC, or if it is not there."""
    if is_turbovnc(vncserver):
        return None
    xserver = Path(vncserver).resolve().parent / XTIGERVNC
    return xserver if os.access(xserver, os.X_OK) else None


def desktop_argv(launch: Launch, xserver: Path) -> list[str]:
    """Xtigervnc and the session without the wrapper (``x-desktop.sh``): the X server
    with the launch's cookie (``-auth``), no X11 TCP listener, named after the tile."""
    return [
        "/bin/sh",
        str(desktop_script()),
        str(launch.app_dir),
        str(launch.app_dir / "xstartup"),
        str(xserver),
        "-desktop",
        str(launch.settings.get("title", "VNC Desktop")),
        "-auth",
        str(launch.xauthority),
        "-nolisten",
        "tcp",
        *vnc_options(launch),
        *tigervnc_security(launch),
    ]


def command(launch: Launch) -> list[str]:
    """TigerVNC's X server and the session (no wrapper), or else the vncserver wrapper,
    with a stand-in home (its xstartup gives the session the real one)."""
    xserver = tigervnc_xserver(launch.executable)
    if xserver is not None:
        return desktop_argv(launch, xserver)
    home = stand_in_home(launch.app_dir)
    return home.argv(server_argv(launch, is_turbovnc(launch.executable)))


def bridge(launch: Launch) -> WebBridge:
    """noVNC, connecting at once (and again after a drop) to the VNC server's socket."""
    query = urlencode(
        {
            "autoconnect": "1",
            "resize": "remote",
            "reconnect": "1",
            "reconnect_delay": "1000",
            "path": launch.prefix.lstrip("/") + "websockify",
        }
    )
    return WebBridge(
        target=launch.app_dir / RFB_SOCKET,
        web_dir=Path(str(launch.settings.get("novnc_dir", DEFAULT_NOVNC))),
        index="vnc.html",
        query=query,
    )


def ready_banners(launch: Launch) -> list[tuple[Path, bytes]]:
    return [(launch.app_dir / RFB_SOCKET, b"RFB ")]


def prepare(launch: Launch) -> None:
    """The session script (which puts the user's home back) and the VncAuth password file."""
    session = str(launch.settings.get("session", DEFAULT_SESSION))
    home = stand_in_home(launch.app_dir)
    xstartup = write_private_file(
        launch.app_dir / "xstartup",
        "#!/bin/sh\n# the user's home (vncserver runs with a stand-in), then the session,\n"
        f"# from hpc-proxies\n{home.shell_exports()}{session}\n",
    )
    xstartup.chmod(0o700)
    assert launch.secret_file is not None
    obfuscated = subprocess.run(
        [launch.executables["vncpasswd"], "-f"],
        input=read_secret(launch.secret_file).encode(),
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    write_private_file(launch.app_dir / "passwd", obfuscated)


def page_script(password: str, more: Mapping[str, str]) -> str:
    """Answer noVNC's credentials dialog with the launch password whenever it opens
    (first connection and every reconnection), so it never goes through a URL. (VNC
    takes no ``more`` secrets.)"""
    return render_template(
        "page_secret.html", password=password, js=static_text("vnc-credentials.js")
    )


def requires(settings) -> tuple[Requirement, ...]:
    novnc = Path(str(settings.get("novnc_dir") or DEFAULT_NOVNC)) / "vnc.html"
    reqs = [
        Requirement(
            VNCSERVER,
            "TigerVNC (Debian/Ubuntu: apt install tigervnc-standalone-server) or TurboVNC",
        ),
        Requirement(
            "vncpasswd",
            "comes with the VNC server (Debian/Ubuntu: apt install tigervnc-tools)",
        ),
        Requirement(
            str(novnc),
            "noVNC's web client (Debian/Ubuntu: apt install novnc), or set "
            "[apps.vnc] novnc_dir in the site configuration",
            is_file=True,
        ),
    ]
    if str(settings.get("session") or DEFAULT_SESSION) == DEFAULT_SESSION:
        reqs.append(Requirement("xterm", "on Debian/Ubuntu: apt install xterm"))
        reqs.append(Requirement("openbox", "on Debian/Ubuntu: apt install openbox"))
    return tuple(reqs)


APP = AppSpec(
    name="vnc",
    title="VNC Desktop",
    icon="vnc",
    description="A Linux desktop through a VNC server, in the browser with noVNC.",
    requires=requires,
    command=command,
    bridge=bridge,
    ready_banners=ready_banners,
    prepare=prepare,
    secret=True,
    x_display=True,
    secret_bytes=6,  # 8 characters: all VncAuth uses
    page_script=page_script,
    html_paths=("/vnc.html",),
    timeout=60.0,
    version_args=("-version",),
    settings=(
        Setting(
            "session",
            str,
            DEFAULT_SESSION,
            "The session's xstartup script (shell): by default the openbox window manager "
            "starting a terminal. A user's own ~/.vnc/xstartup is not used unless this says so "
            "(e.g. 'exec ~/.vnc/xstartup').",
            example="exec startxfce4",
        ),
        Setting(
            "geometry",
            str,
            "1280x800",
            "The desktop's size before the browser resizes it.",
            pattern=SCREEN_SIZE,
        ),
        Setting("depth", int, 24, "Colour depth in bits.", choices=(16, 24, 32)),
        glx_setting("a VNC desktop", with_glx=77, without=25),
        Setting(
            "novnc_dir",
            str,
            DEFAULT_NOVNC,
            "Directory of the noVNC web client (it holds vnc.html).",
            example="/opt/novnc",
        ),
    ),
)
