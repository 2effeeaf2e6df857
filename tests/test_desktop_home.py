"""The desktops leave the user's home directory as they found it.

Run as an ordinary user (root gets no Xpra user config, so only such a user shows what
a centre's users see), with HOME a fresh empty directory: start each desktop, use it
as the browser would (a websocket login; for Xpra with the HTML5 client's screen
sizes, which is what makes Xpra save its fake-Xinerama files), stop Jupyter, and
compare the home directory with what it was. The only files allowed are the ones the
app's documentation page names (``EXPECTED``), and the test checks they are named there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from conftest import JupyterServer, jupyter_with_site, python_for_anyone
from processes import LocalUser, assert_stopping_leaves_nothing, find_process, ordinary_user
from rfb_wire import handshake as rfb_handshake
from waiting import until
from xpra_wire import PacketReader, challenge_response, encode_packet, make_hello

from hpc_proxies import procs

DOCS = Path(__file__).parent.parent / "docs" / "apps"
#: What the HTML5 client says about its screen (Client.js ``_get_screen_sizes``): one
#: screen with one monitor, full display data, as a 96 dpi browser window of 1280x800.
SCREEN = ["HTML", 1280, 800, 339, 212, [["Canvas", 0, 0, 1280, 800, 339, 212]], 0, 0, 1280, 800]


@pytest.fixture(scope="module")
def owner() -> LocalUser:
    """The ordinary user whose Jupyter server runs the desktops."""
    return ordinary_user("hpcp-home-owner")


@pytest.fixture(scope="module")
def python() -> Iterator[str]:
    """An interpreter with this venv's packages that the owner can run."""
    directory = Path(tempfile.mkdtemp(prefix="hpcp-python-"))
    directory.chmod(0o755)
    try:
        yield python_for_anyone(directory)
    finally:
        shutil.rmtree(directory)


@pytest.fixture
def home_and_base(owner: LocalUser) -> Iterator[tuple[Path, Path]]:
    """A fresh empty home directory, and a directory for the Jupyter server, both the
    owner's (pytest's own tmp_path is root's and closed to other users)."""
    base = Path(tempfile.mkdtemp(prefix="hpcp-home-test-"))
    try:
        for path in (base, base / "home", base / "root"):
            path.mkdir(mode=0o700, exist_ok=True)
            os.chown(path, owner.uid, owner.gid)
        yield base / "home", base
    finally:
        shutil.rmtree(base)


#: Caches whose contents vary (a key per installed version): listed as the directory.
CACHES = ("~/.cache/hpc-proxies/web-roots/",)


def listing(home: Path) -> set[str]:
    """Every file and empty directory (with a trailing ``/``) below ``home``, relative to
    it, as ``~/...``; anything in one of ``CACHES`` as that cache."""
    found = {
        f"~/{path.relative_to(home)}" + ("/" if path.is_dir() else "")
        for path in home.rglob("*")
        if not path.is_dir() or path.is_symlink() or not any(path.iterdir())
    }
    return {next((c for c in CACHES if name.startswith(c)), name) for name in found}


async def xpra_session(url: str, password: str, headers: dict[str, str]) -> str:
    """Log in like the HTML5 client (with its desktop and screen sizes), wait for the
    server's hello, then send a ``desktop_size`` as a resized browser window does."""
    sizes = {"desktop_size": [1280, 800], "screen_sizes": [SCREEN], "dpi": 96}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, protocols=("binary",), headers=headers) as ws,
    ):
        await ws.send_bytes(encode_packet(["hello", make_hello(challenge=True, **sizes)]))
        reader = PacketReader()
        async for msg in ws:
            assert msg.type == aiohttp.WSMsgType.BINARY, msg
            for packet in reader.feed(msg.data):
                kind = packet[0].decode()
                if kind == "challenge":
                    response, salt = challenge_response(packet, password)
                    hello = make_hello(
                        challenge_response=response, challenge_client_salt=salt, **sizes
                    )
                    await ws.send_bytes(encode_packet(["hello", hello]))
                elif kind == "hello":
                    resized = [*SCREEN[:1], 1200, 760, *SCREEN[3:]]
                    await ws.send_bytes(encode_packet(["desktop_size", 1200, 760, [resized]]))
                    await ws.send_bytes(encode_packet(["ping", 1]))
                elif kind == "ping_echo":
                    return "used"
                elif kind == "disconnect":
                    return f"disconnect: {packet[1:]}"
    return "closed"


def use_xpra(server: JupyterServer) -> None:
    server.wait_for_app("/xpra/")
    password = (server.runtime_dir("xpra") / "app" / "secret").read_text()
    url = f"ws://127.0.0.1:{server.port}/xpra/"
    headers = {"Authorization": f"token {server.token}"}
    assert asyncio.run(asyncio.wait_for(xpra_session(url, password, headers), 30)) == "used"


def use_vnc(server: JupyterServer) -> None:
    server.wait_for_app("/vnc/")
    password = (server.runtime_dir("vnc") / "app" / "secret").read_text()
    url = f"ws://127.0.0.1:{server.port}/vnc/websockify"
    ok = rfb_handshake(url, password, headers={"Authorization": f"token {server.token}"})
    assert ok[0] == "ok", ok


#: The files each desktop may leave in the home directory, as ``listing`` shows them;
#: each is named in docs/apps/<app>.md. VNC's are the default session's: openbox, the
#: window manager, keeps its log there (its programs see the real home, as they should).
EXPECTED: dict[str, set[str]] = {
    # The HTML5 client's files compressed once, per installed version (hpc_proxies.webroot).
    "xpra": {"~/.cache/hpc-proxies/web-roots/"},
    "vnc": {"~/.cache/openbox/openbox.log", "~/.cache/openbox/sessions/"},
}


#: The session's first program: its environment is what the desktop's programs get.
SESSION_PROGRAM = {"xpra": "xterm", "vnc": "openbox"}


def session_home(server: JupyterServer, app: str, timeout: float = 15) -> str:
    """HOME as the session's first program sees it (once it has started)."""

    def session_program() -> int | None:
        try:
            return find_process(procs.descendants(server.launcher_pid(app)), SESSION_PROGRAM[app])
        except AssertionError:
            return None  # not started yet

    pid = until(session_program, timeout, f"{SESSION_PROGRAM[app]} to start", interval=0.1)
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in environ if b"=" in item)["HOME"]


@pytest.mark.parametrize(
    ("app", "toml", "use"),
    [
        ("xpra", None, use_xpra),
        ("xpra", '[apps.xpra]\nmode = "desktop"\nsession = "xterm"\n', use_xpra),
        ("vnc", None, use_vnc),
    ],
    ids=["xpra-seamless", "xpra-desktop", "vnc"],
)
def test_a_desktop_leaves_the_home_directory_as_it_found_it(
    home_and_base, owner, python, app, toml, use
):
    """Nothing new in the home while the desktop runs and after it stopped, but the
    documented files; the session itself still sees the real home. Before the stand-in
    home, Xpra left ~/.fakexinerama, ~/.:0-fakexinerama (while running),
    ~/.config/xpra/xpra.conf and ~/.cache/dconf/user, and VNC ~/.vnc/<host>:1.log."""
    home, base = home_and_base
    before = listing(home)
    # Jupyter's own files go elsewhere: only the desktop's are looked for in the home.
    env = {
        "HOME": str(home),
        "JUPYTER_DATA_DIR": str(base / "jupyter" / "data"),
        "IPYTHONDIR": str(base / "ipython"),
        "npm_config_cache": str(base / "npm"),
    }
    with jupyter_with_site(base, toml, env_update=env, user=owner, python=python) as server:
        use(server)
        while_running = listing(home) - before
        assert session_home(server, app) == str(home), "the session must see the user's home"
        assert_stopping_leaves_nothing(server, app)
    after = listing(home) - before
    assert (while_running, after) == (EXPECTED[app], EXPECTED[app])
    page = (DOCS / f"{app}.md").read_text()
    for name in EXPECTED[app]:
        assert name in page, f"docs/apps/{app}.md must name {name}"
