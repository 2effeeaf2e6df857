"""Xpra HTML5 desktop: an X session in the browser, on a private socket, with a one-time password.

Xpra serves its HTML5 client and the session's websocket on the launch's unix socket
(no TCP port from Xpra or its X server). Each start gets a new password in a 0600
file (``--auth=file``); the Jupyter server hands it to the client's page through
``sessionStorage``, so it is never in a URL, in history or in any argv.

With ``encryption = "AES"`` in the site configuration, each start also gets a new AES
key in a 0600 file, handed to the client the same way: Xpra then encrypts the session's
stream (AES-CBC, a key stretched by PBKDF2 with a salt per connection) from its socket
to the browser, so that a hop without TLS (a hub's proxy to a compute node) carries no
readable keystroke or picture. Xpra 3.1 applies ``--tcp-encryption`` to websocket
connections on any socket, its unix one included (``--encryption`` is for the client
side only); ``XPRA_ENCRYPTED_SOCKET_TYPES`` makes it refuse a plain connection of the
unix socket's own protocol too.

Xpra itself runs with a stand-in home (``runtime.stand_in_home``): Xpra 3.1 writes its
fake-Xinerama files (``~/.fakexinerama``, ``~/.:N-fakexinerama``; even with
``--fake-xinerama=no``, whose "no" it tests as a true string) and a template
``~/.config/xpra/xpra.conf`` there. The session it starts gets the user's real home
back through ``--start-env``.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from .. import webroot
from ..pages import render_template, static_text
from ..runtime import ENV, stand_in_home, write_private_file
from ..spec import SCREEN_SIZE, AppSpec, Launch, Requirement, Setting, glx_setting

#: Config keys of Xpra's system files that would start programs we did not ask for.
#: Debian's /etc/xpra/conf.d/60_server.conf adds ``start=/etc/X11/Xsession true``, and
#: ``--start=`` on the command line does not reset that list.
SESSION_KEYS = ("start", "start-child", "start-after-connect", "start-child-after-connect")
DEFAULT_SYSTEM_CONF_DIR = "/etc/xpra"
USER_CONF_DIRS_VARIABLE = "XPRA_USER_CONF_DIRS"
XPRA = "xpra"
DEFAULT_SESSION = "xterm"
#: The X server's screen. Xvfb's is fixed when it starts and its memory grows with it:
#: Xpra's own default, 5760x2560, costs an idle desktop about 73 MiB in Xvfb alone.
DEFAULT_SCREEN = "1920x1200"
#: Xpra 3.1's one cipher (the HTML5 client's value for `encryption`).
ENCRYPTION = "AES"
#: The AES key's file in the launch's private directory (one of ``more_secrets``).
KEY_FILE = "aes-key"
#: The socket types on which Xpra then requires encryption: websockets (the browser's),
#: TCP (none here), and its own protocol on the unix socket.
ENCRYPTED_SOCKET_TYPES = "tcp,ws,unix-domain"
#: Xpra's own X server command when its config names none (Xpra 3.1's default).
DEFAULT_XVFB = (
    "Xvfb +extension GLX +extension Composite -screen 0 {screen}x24+32 -dpi 96 "
    "-nolisten tcp -noreset -auth $XAUTHORITY"
)
_XVFB_SCREEN = re.compile(r"(-screen\s+0\s+)\d+x\d+")
_PLUS_GLX = re.compile(r"\s\+extension\s+GLX(?=\s|$)")
#: Appended to the X server's command (Xvfb and Xorg alike) for a desktop without
#: OpenGL: the server then never loads Mesa's software renderer (libLLVM), 52 MiB of
#: Xvfb's 72 in an idle desktop alone.
NO_GLX = " -extension GLX"


def _logical_lines(text: str) -> list[str]:
    """The lines of an Xpra config file as Xpra 3.1 reads them: one continued with a
    trailing backslash is joined with the next (comment lines between are dropped), so
    that an option anywhere in a continued ``xvfb`` command is seen."""
    lines: list[str] = []
    pending = ""
    for line in text.splitlines():
        if pending and line.strip()[:1] in ("#", "!"):
            continue
        line = pending + line
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        lines.append(line)
        pending = ""
    if pending:
        lines.append(pending.rstrip())
    return lines


def system_config_for_launch(conf_dir: Path, screen: str = DEFAULT_SCREEN, glx: bool = True) -> str:
    """Xpra's system config (conf.d/*.conf, then xpra.conf) minus the session commands,
    with the X server's screen set to ``screen`` (its depth and other options kept; an
    X server started without ``-screen 0``, e.g. Xorg with the dummy driver, as it is),
    and without GLX unless ``glx``."""
    files = [*sorted((conf_dir / "conf.d").glob("*.conf")), conf_dir / "xpra.conf"]
    kept = []
    has_xvfb = False
    for conf_file in files:
        if not conf_file.is_file():
            continue
        for line in _logical_lines(conf_file.read_text(errors="replace")):
            key = line.split("=", 1)[0].strip()
            if key in SESSION_KEYS:
                continue
            if key == "xvfb":
                has_xvfb = True
                line = _XVFB_SCREEN.sub(lambda m: m.group(1) + screen, line)
                if not glx:
                    line = _PLUS_GLX.sub("", line) + NO_GLX
            kept.append(line)
    if not has_xvfb:
        xvfb = DEFAULT_XVFB.format(screen=screen)
        kept.append("xvfb = " + (_PLUS_GLX.sub("", xvfb) + NO_GLX if not glx else xvfb))
    return "\n".join(kept) + "\n"


def user_config_dir(env: Mapping[str, str], uid: int) -> Path | None:
    """The user's own Xpra configuration directory, if they have one with a file in it.

    Xpra 3.1 reads ``$XDG_CONFIG_HOME/xpra`` (or ``~/.config/xpra``) and ``~/.xpra``
    (never for root), or only ``$XPRA_USER_CONF_DIRS``, and writes a template
    ``xpra.conf`` into the first one when none holds a configuration.
    """
    home = Path(env.get("HOME") or Path.home())
    if env.get(USER_CONF_DIRS_VARIABLE):
        candidates = [Path(env[USER_CONF_DIRS_VARIABLE]).expanduser()]
    elif uid > 0:
        config_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
        candidates = [config_home / "xpra", home / ".xpra"]
    else:
        candidates = []
    for conf_dir in candidates:
        if (conf_dir / "xpra.conf").is_file() or any((conf_dir / "conf.d").glob("*.conf")):
            return conf_dir
    return None


#: Where a launch links its web root (``--html=APP_DIR/web/www``): Xpra 3.1 reads the
#: headers it sends from ``WWW/../http-headers``, which the link keeps beside ``www``.
WEB_LINK = "web"
#: Sent with every file instead of Xpra's own ``no-cache, no-store, must-revalidate``:
#: the browser keeps the files and revalidates each (Xpra sends ``Last-Modified``, the
#: Jupyter server answers 304: ``AppSpec.answer_unchanged``), so a reload or another
#: desktop does not download them again, and after an upgrade gets the new ones. The
#: entry page, which carries the launch password, is made ``no-store`` by the Jupyter
#: server. Later header files replace the values of earlier ones, hence the name.
CACHE_HEADERS = {"Cache-Control": "private, no-cache"}
HEADERS_FILE = "http-headers/99_hpc_proxies_cache.txt"


def installed_share(executable: str) -> Path | None:
    """Xpra's ``share/xpra`` (its HTML5 client in ``www``, its headers in
    ``http-headers``) beside the program the launch runs, else the system's."""
    prefix = Path(os.path.realpath(executable)).parent.parent
    for share in (prefix / "share/xpra", Path("/usr/share/xpra"), Path("/usr/local/share/xpra")):
        if (share / "www" / "index.html").is_file():
            return share
    return None


def link_web_root(launch: Launch) -> None:
    """Link the launch's web root: Xpra's installed client compressed once, with our
    headers (:mod:`hpc_proxies.webroot`); nothing if its client is not where we look."""
    share = installed_share(launch.executable)
    if share is not None:
        webroot.link_web_root(
            launch.app_dir / WEB_LINK,
            share,
            {"www": share / "www", "http-headers": share / "http-headers"},
            {HEADERS_FILE: "".join(f"{name}={value}\n" for name, value in CACHE_HEADERS.items())},
            compress=("www",),
        )


def html_option(launch: Launch) -> str:
    """Xpra serves the launch's web root if prepare linked one, else finds its own."""
    linked = launch.app_dir / WEB_LINK / "www"
    return f"--html={linked}" if linked.is_dir() else "--html=on"


def prepare(launch: Launch) -> None:
    """Write the filtered system config, private to the user, make the stand-in home,
    and link the web root."""
    conf_dir = launch.app_dir / "xpra-conf"
    conf_dir.mkdir(mode=0o700)
    system_dir = Path(os.environ.get("XPRA_SYSTEM_CONF_DIRS", DEFAULT_SYSTEM_CONF_DIR))
    screen = str(launch.settings.get("screen", DEFAULT_SCREEN))
    glx = bool(launch.settings.get("glx", True))
    write_private_file(conf_dir / "xpra.conf", system_config_for_launch(system_dir, screen, glx))
    stand_in_home(launch.app_dir)
    link_web_root(launch)


#: Set for Xpra alone (environment()): the session's programs get the user's own
#: values, or none, so that their GTK may use OpenGL and their malloc is glibc's.
XPRA_ONLY_VARIABLES = (
    "GDK_GL",
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
)


def session_environment(env: Mapping[str, str]) -> list[str]:
    """Xpra options that give the session ``env``'s values of XPRA_ONLY_VARIABLES back:
    ``--start-env`` for those set, an ``env -u`` wrapper for the others."""
    options = [f"--start-env={name}={env[name]}" for name in XPRA_ONLY_VARIABLES if name in env]
    unset = [f"-u {name}" for name in XPRA_ONLY_VARIABLES if name not in env]
    if unset:
        options.append(f"--exec-wrapper={ENV} {' '.join(unset)}")
    return options


def encrypted(settings: Mapping[str, object]) -> bool:
    return settings.get("encryption") == ENCRYPTION


def more_secrets(settings: Mapping[str, object]) -> tuple[str, ...]:
    """A new AES key per start, when the site turns encryption on."""
    return (KEY_FILE,) if encrypted(settings) else ()


def encryption_options(launch: Launch) -> list[str]:
    """The server's side of the stream's encryption: the key's file, never the key."""
    if not encrypted(launch.settings):
        return []
    key = launch.more_secret(KEY_FILE)
    return [f"--tcp-encryption={ENCRYPTION}", f"--tcp-encryption-keyfile={key}"]


def command(launch: Launch) -> list[str]:
    mode = "start-desktop" if launch.settings.get("mode") == "desktop" else "start"
    session = str(launch.settings.get("session", DEFAULT_SESSION))
    home = stand_in_home(launch.app_dir)
    xpra = [
        launch.executable,
        mode,
        "--daemon=no",
        f"--bind={launch.socket}",
        f"--socket-dirs={launch.app_dir}",
        f"--log-dir={launch.app_dir}",
        f"--auth=file,filename={launch.secret_file}",
        *encryption_options(launch),
        html_option(launch),
        f"--start={session}",
        "--exit-with-children=no",
        "--sharing=yes",
        "--clipboard=yes",
        "--mdns=no",
        "--pulseaudio=no",
        "--speaker=off",
        "--microphone=off",
        "--webcam=no",
        "--printing=no",
        "--notifications=no",
        "--dbus-launch=",
        "--dbus-proxy=no",
        "--dbus-control=no",
        "--systemd-run=no",
        "--start-via-proxy=no",
        # Video: the HTML5 client decodes h264 (Broadway) and mpeg1 (JSMpeg). x264 keeps
        # h264 for moving content; Xpra's other video modules are not loaded (ffmpeg's
        # mpeg1/mp4/webm, vpx, x265, and the decoders, which only a proxy or a webcam
        # uses): Xpra 144 -> 113 MiB in a desktop alone (ffmpeg alone was 16 of the 31).
        "--video-encoders=x264",
        "--video-decoders=none",
        # The OpenGL probe, a second Xpra process at every start, only tells clients
        # what the display can render; the HTML5 client does not ask.
        "--opengl=noprobe",
        *session_environment(os.environ),
        # The session gets the user's home back (Xpra runs with the stand-in). Xpra
        # expands $VARIABLES in these values: a home whose path has a "$" would not
        # arrive intact.
        *(f"--start-env={name}={value}" for name, value in home.user.items()),
    ]
    return home.argv(xpra)


def environment(launch: Launch) -> dict[str, str]:
    """The filtered system config, and the user's own config.

    ``XPRA_USER_CONF_DIRS`` is always set, because Xpra's helpers (its OpenGL probe)
    run with the session's environment, the user's real home: it names the user's
    configuration if there is one (only the first, if both of Xpra's places hold one),
    else a directory in the stand-in home, where Xpra's template then goes.
    """
    user_conf = user_config_dir(os.environ, os.getuid())
    stand_in = stand_in_home(launch.app_dir).path / ".config" / "xpra"
    return {
        "XPRA_SYSTEM_CONF_DIRS": str(launch.app_dir / "xpra-conf"),
        USER_CONF_DIRS_VARIABLE: str(user_conf or stand_in),
        # glibc's malloc gives each of Xpra's threads an arena of its own, and a browser
        # connection's threads left theirs behind: +8 MiB per 10 connections, never
        # returned. Two arenas: +1 MiB per 10, and 9 MiB less idle
        # (bench/desktop_memory_bench.py). A site's own value (`environment`) wins.
        "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2"),
        # The h264 encoder's frame buffers (MiBs each) went to the heap once glibc had
        # raised its mmap threshold, and stayed: +3.8 MiB per 10 connections. A fixed
        # threshold maps them and gives them back on free: +0.5, and 2 MiB less idle.
        "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "131072"),
        "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_", "131072"),
        # GTK would load Mesa (libLLVM) into Xpra only to list the display's OpenGL
        # visuals, which Xpra never uses: Xpra 144 -> 116 MiB; with GLX on, the X
        # server still maps libLLVM, unshared then, so the desktop saves 10 MiB.
        "GDK_GL": "disable",
        # With encryption on, no plain connection on any socket type (Xpra's default
        # leaves its own protocol on the unix socket plain).
        **(
            {"XPRA_ENCRYPTED_SOCKET_TYPES": ENCRYPTED_SOCKET_TYPES}
            if encrypted(launch.settings)
            else {}
        ),
    }


def page_script(password: str, more: Mapping[str, str]) -> str:
    """The HTML5 client reads ``password``, ``sharing`` and, with encryption on,
    ``encryption`` and ``key`` from sessionStorage, so no secret goes through a URL; the
    password it drops itself, the key our script drops once the client has read it."""
    secrets = {"password": password}
    if KEY_FILE in more:
        secrets |= {"encryption": ENCRYPTION, "key": more[KEY_FILE]}
    return render_template(
        "page_secret.html", password=secrets, js=static_text("xpra-credentials.js")
    )


def requires(settings) -> tuple[Requirement, ...]:
    session = shlex.split(str(settings.get("session") or DEFAULT_SESSION))[0]
    return (
        Requirement(XPRA, "on Debian/Ubuntu: apt install xpra"),
        Requirement("Xvfb", "on Debian/Ubuntu: apt install xvfb"),
        Requirement(
            session,
            f"the program the session runs; on Debian/Ubuntu: apt install {session}, or set "
            "[apps.xpra] session in the site configuration",
        ),
    )


APP = AppSpec(
    name="xpra",
    title="Xpra Desktop",
    icon="xpra",
    description="A remote X desktop in the browser, served by Xpra's HTML5 client.",
    requires=requires,
    command=command,
    environment=environment,
    prepare=prepare,
    secret=True,
    x_display=True,
    page_script=page_script,
    more_secrets=more_secrets,
    answer_unchanged=True,
    timeout=60.0,
    version_args=("--version",),
    settings=(
        Setting(
            "session",
            str,
            DEFAULT_SESSION,
            "The command the session runs: in seamless mode its windows appear in the "
            "browser; in desktop mode it is the whole desktop (e.g. 'openbox-session', "
            "'startxfce4').",
            example="xterm",
        ),
        Setting(
            "mode",
            str,
            "seamless",
            "'seamless' (windows float in the browser page) or 'desktop' (one whole "
            "desktop, run `session` as its window manager or desktop session).",
            choices=("seamless", "desktop"),
        ),
        Setting(
            "screen",
            str,
            DEFAULT_SCREEN,
            "The size of the desktop's X screen (Xvfb's, fixed when it starts): the largest "
            "area a browser window can show. A larger screen costs memory for every desktop "
            "(Xvfb: about 26 MiB at 1920x1200, 73 MiB at Xpra's own default 5760x2560).",
            example="2560x1600",
            pattern=SCREEN_SIZE,
        ),
        glx_setting("an Xpra desktop", with_glx=72, without=20),
        Setting(
            "encryption",
            str,
            "",
            "'AES' encrypts the desktop's stream from Xpra to the browser with a new key "
            "per start (handed to the page like the password, never in a URL); '' leaves "
            "it to the connection. Turn it on where a hop between the browser and the "
            "Jupyter server is plain HTTP: a JupyterHub whose proxy reaches servers on "
            "compute nodes without internal TLS.",
            choices=("", ENCRYPTION),
            example=ENCRYPTION,
        ),
    ),
)
