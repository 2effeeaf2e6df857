"""End to end, in Debian's chromium: JupyterLab's "VNC Desktop" tile to a TigerVNC desktop.

The tests share one Jupyter server and one chromium (see the fixtures below); each has
its own, freshly started desktop and its own browser context (a fresh profile). The
user logs in with the token and clicks the tile: a new tab shows our progress page,
then noVNC, which connects through the bridge's websocket to TigerVNC. Nobody types the
VncAuth password: the Jupyter server put a script into ``vnc.html`` that answers
noVNC's credentials dialog. The tests whose story is not the tile (resizing, the
clipboard, a dropped websocket, the xterm appearing by itself) log in without loading
JupyterLab and open ``/vnc/`` directly, as a bookmark would: the same page the tile
opens, without JupyterLab's 4 s start. The tests check what the user sees and what the
session gets:

* the session's xterm is drawn on noVNC's canvas (pixels of screenshots), and keys
  typed in the browser run a command in it;
* resizing the browser resizes the remote desktop (``resize=remote``; ``xdpyinfo``);
* text put into noVNC's clipboard panel becomes the session's CLIPBOARD and PRIMARY
  (TigerVNC sets both), and a program copying in the session fills the panel;
* a dropped websocket reconnects by itself (``reconnect=1``) to the same desktop;
* closing the tab leaves the desktop running, and the tile reconnects to it;
* no URL the browser requested contains the password.

Where the xterm is comes from the session (``xwininfo`` with the xterm's ``DISPLAY``
and ``XAUTHORITY``), not from guessing: the default session starts it from openbox
(``openbox --startup xterm``), which places it, centred; a session's xterm mapped before
its window manager ran would be at the top left, without the focus. noVNC reports
"connected" before the session has mapped any window, and keys sent then are lost; so
keys are typed only after a click into the xterm has made it the active window
(``_NET_ACTIVE_WINDOW``). For its first 2 s, noVNC shows its control bar (left edge)
and its status line (top) over the desktop; the pixels are checked where neither is.

Screenshots: ``ARTIFACTS/vnc-<test>-<step>.png`` (``…-failure-<n>.png`` on failure).
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from browser import (
    VIEWPORT,
    Box,
    SharedChromium,
    Stats,
    chromium,
    differing,
    log_in,
    log_tail,
    looks_like_background,
    rgb,
    screenshot,
    stats,
    tile,
    tile_icon,
    wait_for,
)
from conftest import ARTIFACTS, jupyter_with_site
from PIL import Image
from playwright.sync_api import BrowserContext, Locator, Page
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from processes import environ_of, find_process
from test_xpra_clipboard import xclip_owner
from waiting import until

from hpc_proxies import procs

pytestmark = pytest.mark.browser

TITLE = "VNC Desktop"
START_TIMEOUT = 90  # the launcher, Jupyter's login, JupyterLab: seconds, if the machine is slow
TIMEOUT = 20  # anything else a user would wait for (it takes a second or two)
LOG_OUT_TIMEOUT = 20  # logging out of a desktop stops it in well under a second
WAKE_AFTER = 3  # seconds without an xterm before the user clicks on the desktop
SAME = 0.02  # at most this fraction of an xterm's pixels may differ to count as "the same"

# noVNC's UI object: importing the page's own module URL again gives the same instance.
UI = "(await import(new URL('app/ui.js', location.href))).default"
CONNECTED_JS = "() => document.documentElement.classList.contains('noVNC_connected')"
BAR_CLOSED_JS = (
    "() => !document.getElementById('noVNC_control_bar').classList.contains('noVNC_open')"
)
# noVNC's control bar (left edge) and status line (top) while they are shown or slide in
# or out (it shows both when it connects, and closes them by itself 2 s later), each
# where it is when fully shown: the bar with its handle (15 px beyond it) and shadow.
NOVNC_OVERLAYS_JS = """() => {
  const shown = [];
  for (const id of ['noVNC_control_bar', 'noVNC_status']) {
    const el = document.getElementById(id);
    if (!el.classList.contains('noVNC_open') && !el.getAnimations({subtree: true}).length)
      continue;
    const r = el.getBoundingClientRect();
    shown.push(id === 'noVNC_status' ? {x: 0, y: 0, w: innerWidth, h: r.height + 6}
                                     : {x: 0, y: r.top, w: r.width + 21, h: r.height + 6});
  }
  return shown;
}"""
NOVNC_STATE_JS = """() => ({
  url: location.href, state: document.documentElement.className,
  status: (document.getElementById('noVNC_status') || {}).innerText,
  credentials_dialog: !!document.querySelector('#noVNC_credentials_dlg.noVNC_open')})"""
CANVAS_JS = """() => {
  const c = document.querySelector('#noVNC_container canvas');
  if (!c) return null;
  const r = c.getBoundingClientRect();
  return {x: r.left, y: r.top, w: r.width, h: r.height, fb_w: c.width, fb_h: c.height};
}"""
# Records noVNC's connection states (the classes of <html>) from now on.
RECORD_STATES_JS = """() => {
  window.__vncStates = [];
  new MutationObserver(() => window.__vncStates.push(document.documentElement.className))
    .observe(document.documentElement, {attributes: true, attributeFilter: ['class']});
}"""
# What a network drop does to noVNC: its websocket closes under a connected session.
# (It also keeps the UI object in ``window``, for RECONNECTED_JS: wait_for_function
# does not wait for promises, so its expressions cannot import.)
DROP_WEBSOCKET_JS = f"""async () => {{
  const UI = window.__vncUI = {UI};
  UI.rfb.__dropped = true;
  UI.rfb._sock._websocket.close();
}}"""
RECONNECTED_JS = """() => {
  const UI = window.__vncUI;
  return !!(UI.connected && UI.rfb && !UI.rfb.__dropped
            && document.documentElement.classList.contains('noVNC_connected'));
}"""


# ---------------------------------------------------------------- the session's side
@dataclass(frozen=True)
class Session:
    """The running desktop, seen from outside: its X display and its processes."""

    env: dict[str, str]
    xvnc: int  # Xtigervnc
    xterm: int
    rfb_socket: Path

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=15)

    def x(self, *argv: str) -> str:
        out = self.run(*argv)
        assert out.returncode == 0, f"{' '.join(argv)}: exit {out.returncode} {out.stderr}"
        return out.stdout


@dataclass(frozen=True)
class XWindow:
    id: int
    x: int
    y: int
    w: int
    h: int


def find_session(jupyter) -> Session:
    launcher = jupyter.launcher_pid("vnc")
    pids = {launcher} | procs.descendants(launcher)
    xterm = find_process(pids, "xterm")
    rfb_socket = jupyter.runtime_dir("vnc") / "app" / "rfb.sock"
    return Session(x_env(xterm), find_process(pids, "Xtigervnc"), xterm, rfb_socket)


def x_env(pid: int) -> dict[str, str]:
    """What a program needs to reach the X display of process ``pid``: its ``DISPLAY``
    and ``XAUTHORITY``."""
    environ = environ_of(pid)
    return {
        "PATH": "/usr/bin:/bin",
        "DISPLAY": environ["DISPLAY"],
        "XAUTHORITY": environ["XAUTHORITY"],
    }


def find_session_when_up(jupyter) -> Session:
    """The xterm starts a moment after the VNC server answers."""
    return wait_for("the session's xterm to start", lambda: _try(find_session, jupyter), jupyter)


def _try(func: Callable, *args):
    try:
        return func(*args)
    except (AssertionError, OSError, KeyError):
        return None


def xterm_window(session: Session) -> XWindow | None:
    """The xterm's window once openbox manages it (it has a frame) and it is mapped."""
    out = session.run("xwininfo", "-name", "xterm")
    if out.returncode or "IsViewable" not in out.stdout:
        return None
    wid = int(re.search(r"Window id: (0x[0-9a-f]+)", out.stdout).group(1), 16)
    frame = session.run("xprop", "-id", hex(wid), "_NET_FRAME_EXTENTS").stdout
    if "=" not in frame:
        return None  # not managed yet: openbox may still move it

    def num(label: str) -> int:
        return int(re.search(rf"{label}:\s+(-?\d+)", out.stdout).group(1))

    return XWindow(
        wid, num("Absolute upper-left X"), num("Absolute upper-left Y"), num("Width"), num("Height")
    )


def active_window(session: Session) -> int | None:
    out = session.run("xprop", "-root", "_NET_ACTIVE_WINDOW").stdout
    found = re.search(r"window id # (0x[0-9a-f]+)", out)
    return int(found.group(1), 16) if found else None


def desktop_size(session: Session) -> tuple:
    """The X screen's size if ``xdpyinfo`` and ``xrandr`` agree on it, else both answers."""
    dims = re.search(r"dimensions:\s+(\d+)x(\d+) pixels", session.x("xdpyinfo"))
    randr = re.search(r"current (\d+) x (\d+)", session.x("xrandr", "--current"))
    assert dims and randr, "no screen size from xdpyinfo or xrandr"
    size = (int(dims.group(1)), int(dims.group(2)))
    if size != (int(randr.group(1)), int(randr.group(2))):  # asked while it changed
        return (dims.group(0), randr.group(0))
    return size


def selection(session: Session, name: str) -> str | None:
    """What a program in the session gets when it pastes selection ``name``."""
    try:
        out = session.run("xclip", "-out", "-selection", name)
    except subprocess.TimeoutExpired:
        return None
    return out.stdout if out.returncode == 0 else None


def rfb_connections(session: Session) -> int:
    """Connections the VNC server has accepted on its socket (from the bridge)."""
    out = subprocess.run(["ss", "-xnH"], capture_output=True, text=True, timeout=15).stdout
    return sum(
        1
        for line in out.splitlines()
        if len(cols := line.split()) > 4
        and cols[1] == "ESTAB"
        and cols[4] == str(session.rfb_socket)
    )


def alive(pid: int) -> bool:
    info = procs.proc_info(pid)
    return info is not None and info.state != "Z"


def desktop_processes(jupyter) -> tuple[int | None, set[int]]:
    """The VNC launcher (None before the first ``/vnc/`` request) and what runs below it:
    the desktop and the bridge, nothing when no desktop runs."""
    try:
        launcher = jupyter.launcher_pid("vnc")
    except AssertionError:
        return None, set()
    return launcher, procs.descendants(launcher)


def log_out(jupyter) -> None:
    """Log out of the desktop, as openbox's "Exit" does (``openbox --exit``), and wait
    until the launcher has stopped what was left and removed the desktop's directory.
    The next ``/vnc/`` request then starts a fresh desktop (see docs/users.md)."""
    launcher, running = desktop_processes(jupyter)
    if not running:
        return
    app_dir = jupyter.runtime_dir("vnc") / "app"
    openbox = find_process(running, "openbox")
    # Its exit status says little: the X server it asked may be gone before it hangs up.
    out = subprocess.run(
        ["openbox", "--exit"], env=x_env(openbox), capture_output=True, text=True, timeout=15
    )
    try:
        until(
            lambda: not procs.descendants(launcher) and not app_dir.exists(),
            LOG_OUT_TIMEOUT,
            "the desktop to stop after logging out",
        )
    except AssertionError as err:
        said = f"openbox --exit: exit {out.returncode} {out.stderr.strip()}"
        raise AssertionError(f"{err}\n{said}{log_tail(jupyter)}") from None


# ---------------------------------------------------------------- the browser's side
@dataclass(repr=False)  # short assertion messages
class Browser:
    jupyter: object
    name: str  # the test's, in the screenshots' names
    context: BrowserContext
    lab: Page  # the first tab: JupyterLab, or the page that logged in without it
    urls: list[str] = field(default_factory=list)  # pages, requests and websockets
    responses: list[tuple[str, int, dict]] = field(default_factory=list)
    vnc_websockets: list[str] = field(default_factory=list)
    secret: str = ""

    def shot(self, page: Page, step: str) -> Image.Image:
        return screenshot(page, f"vnc-{self.name}-{step}")

    def state(self, page: Page | None, log: bool = True) -> str:
        try:
            shown = page.evaluate(NOVNC_STATE_JS) if page is not None else None
        except PlaywrightError as err:
            shown = f"(cannot evaluate: {err})"
        return f"\n--- noVNC ---\n{shown}" + (log_tail(self.jupyter) if log else "")

    def until(self, what: str, check: Callable, page: Page | None = None, timeout=TIMEOUT):
        """``check()`` until it returns something truthy; fail with the page and log."""
        try:
            return wait_for(what, check, self.jupyter, None, timeout, 0.1)
        except AssertionError as err:  # it has the log's tail already
            raise AssertionError(f"{err}{self.state(page, log=False)}") from None

    def until_js(self, page: Page, expression: str, what: str, timeout=TIMEOUT) -> None:
        try:
            page.wait_for_function(expression, timeout=timeout * 1000, polling=100)
        except PlaywrightTimeout:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}{self.state(page)}"
            ) from None

    def check(self, ok: object, message: str, page: Page | None = None) -> None:
        if not ok:
            raise AssertionError(f"{message}{self.state(page)}")


@contextmanager
def vnc_browser(jupyter, shared: SharedChromium, name: str, lab: bool = True) -> Iterator[Browser]:
    """A context of the ``shared`` chromium (a fresh profile), logged in to JupyterLab
    (or, without ``lab``, only logged in: for a test that opens ``/vnc/`` directly); at
    the end, no URL may have carried the password."""
    for stale in ARTIFACTS.glob(f"vnc-{name}-*.png"):
        stale.unlink()
    with chromium(f"vnc-{name}-failure", shared=shared) as context:
        b = Browser(jupyter, name, context, lab=None)  # type: ignore[arg-type]

        def on_websocket(ws) -> None:
            b.urls.append(ws.url)
            if urlsplit(ws.url).path == "/vnc/websockify":
                b.vnc_websockets.append(ws.url)

        def on_page(page: Page) -> None:
            page.on("websocket", on_websocket)
            page.on("framenavigated", lambda frame: b.urls.append(frame.url))

        context.on("page", on_page)
        context.on("request", lambda req: b.urls.append(req.url))
        context.on("response", lambda r: b.responses.append((r.url, r.status, dict(r.headers))))
        b.lab = context.new_page()
        if lab:
            b.lab.goto(f"{jupyter.url}/lab?token={jupyter.token}")
        else:
            log_in(b.lab, jupyter)
        yield b
        assert_password_kept_out(b)


def assert_password_kept_out(b: Browser) -> None:
    assert len(b.secret) == 8, "no desktop was opened, or the secret is not VncAuth's 8 chars"
    assert b.vnc_websockets, "noVNC never opened its websocket"
    carried = [url for url in b.urls if b.secret in url]
    assert not carried, f"the VNC password appeared in URLs: {len(carried)}"
    for page in b.context.pages:
        if "/vnc/" not in page.url:
            continue
        kept = page.evaluate(
            """() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage),
                document.getElementById('noVNC_password_input').value])"""
        )
        assert b.secret not in kept, "the password stayed in the page's storage or its dialog"


def launcher_card(b: Browser) -> Locator:
    card = tile(b.lab, TITLE)
    try:
        card.wait_for(state="visible", timeout=START_TIMEOUT * 1000)
    except PlaywrightTimeout:
        raise AssertionError(f"no {TITLE!r} tile in the launcher{b.state(b.lab)}") from None
    return card


def open_from_tile(b: Browser) -> Page:
    """Click the tile: a new tab, which must end connected (the password answered for us)."""
    card = launcher_card(b)
    with b.context.expect_page(timeout=30_000) as new_tab:
        card.click()
    return connected(b, new_tab.value)


def open_directly(b: Browser) -> Page:
    """Open ``/vnc/`` in a new tab, as a bookmark would (the page the tile opens), for
    the tests whose story is not the tile: they need no JupyterLab."""
    tab = b.context.new_page()
    tab.goto(f"{b.jupyter.url}/vnc/")
    return connected(b, tab)


def connected(b: Browser, tab: Page) -> Page:
    """``tab``, once noVNC has connected (the password answered for us)."""
    b.until_js(tab, CONNECTED_JS, "noVNC to connect", timeout=START_TIMEOUT)
    b.secret = (b.jupyter.runtime_dir("vnc") / "app" / "secret").read_text().strip()
    return tab


def on_page(page: Page, win: XWindow, inset: int = 2) -> Box:
    """The window's inside (``inset`` px in from its border) in page coordinates."""
    c = page.evaluate(CANVAS_JS)
    sx, sy = c["w"] / c["fb_w"], c["h"] / c["fb_h"]
    return Box(
        round(c["x"] + (win.x + inset) * sx),
        round(c["y"] + (win.y + inset) * sy),
        round((win.w - 2 * inset) * sx),
        round((win.h - 2 * inset) * sy),
    )


def looks_like_xterm(s: Stats) -> bool:
    """White, with dark text (the prompt and the cursor at least)."""
    return s.white >= 0.80 and s.dark >= 20


def wait_for_xterm(
    b: Browser, tab: Page, session: Session, step: str, wake: bool = True, bare: bool = False
) -> tuple[Box, Image.Image]:
    """Wait until the xterm is drawn where the session has it, with neither of noVNC's
    overlays (its control bar, its status line) over the xterm or over the patch of
    desktop that ``assert_desktop_pixels`` checks; with ``bare``, with none shown at all
    (a picture of the desktop alone: the docs show it).

    With ``wake``, the user clicks on the empty desktop every few seconds while there is
    no xterm yet: openbox sometimes leaves the xterm's map request unhandled until its
    next X event (see ``test_the_xterm_appears_by_itself``).
    """
    b.until_js(tab, CONNECTED_JS, f"noVNC to be connected ({step})")
    last: dict = {"woken": 0}
    started = time.monotonic()

    def drawn():
        win = xterm_window(session)
        if win is None:
            last["xterm"] = unmanaged_xterm(session)
            if wake and time.monotonic() - started > WAKE_AFTER * (last["woken"] + 1):
                c = tab.evaluate(CANVAS_JS)
                tab.mouse.click(c["x"] + c["w"] - 20, c["y"] + c["h"] - 20)
                last["woken"] += 1
            return None
        box = on_page(tab, win)
        # Where the overlays are before and after the screenshot: one may close meanwhile.
        overlays = tab.evaluate(NOVNC_OVERLAYS_JS)
        shot = b.shot(tab, step)
        overlays = [Box.of(o) for o in overlays + tab.evaluate(NOVNC_OVERLAYS_JS)]
        last["xterm"] = (win, box, stats(box.crop(shot)), overlays)
        if any(o.overlaps(box) or o.overlaps(desktop_patch(tab)) for o in overlays):
            return None
        if bare and overlays:
            return None
        return (box, shot) if looks_like_xterm(last["xterm"][2]) else None

    try:
        return b.until(f"the xterm to be drawn ({step})", drawn, tab)
    except AssertionError as err:
        raise AssertionError(
            f"{err}\nxterm: {last.get('xterm')}; clicks on the desktop: {last['woken']}"
        ) from None


def unmanaged_xterm(session: Session) -> str:
    """Why there is no xterm to see: the window's map state and openbox's client list."""
    state = re.search(r"Map State: (\w+)", session.run("xwininfo", "-name", "xterm").stdout)
    clients = session.run("xprop", "-root", "_NET_CLIENT_LIST").stdout.strip()
    return f"xterm window {state.group(1) if state else 'absent'}; openbox's {clients}"


def desktop_patch(tab: Page) -> Box:
    """A patch of the desktop, 10 px in from the canvas' bottom right corner."""
    c = tab.evaluate(CANVAS_JS)
    return Box(round(c["x"] + c["w"]) - 110, round(c["y"] + c["h"]) - 110, 100, 100)


def assert_desktop_pixels(b: Browser, tab: Page, shot: Image.Image, box: Box, step: str) -> None:
    """The xterm white with text, on the black desktop, inside a canvas that fills the tab."""
    back = desktop_patch(tab)
    assert back.x >= box.x + box.w or back.y >= box.y + box.h, (back, box)
    term, desk = stats(box.crop(shot)), stats(back.crop(shot))
    where = (
        f"({step}: xterm {box} {term}; desktop {back} {desk}; ARTIFACTS/vnc-{b.name}-{step}.png)"
    )
    b.check(looks_like_xterm(term), f"the xterm region is not white with text {where}", tab)
    b.check(looks_like_background(desk), f"the desktop background looks wrong {where}", tab)
    b.check(term.mean[0] - desk.mean[0] > 100, f"xterm and desktop look alike {where}", tab)


def type_into_xterm(b: Browser, tab: Page, session: Session, box: Box, command: str) -> None:
    """Click into the xterm, wait until openbox made it the active window, type a command."""
    tab.bring_to_front()
    tab.mouse.click(box.x + box.w // 2, box.y + box.h // 2)
    b.until("a click to make the xterm the active window", lambda: active_xterm(session), tab)
    tab.keyboard.type(command)
    tab.keyboard.press("Enter")


def active_xterm(session: Session) -> bool:
    win = xterm_window(session)
    return win is not None and active_window(session) == win.id


def run_in_xterm(b: Browser, tab: Page, session: Session, box: Box, label: str) -> Path:
    """Type a command that shows ``label`` and writes it to a file; wait for both."""
    before = stats(box.crop(b.shot(tab, f"before-{label}")))
    path = b.jupyter.root_dir / f"typed-{label}"
    type_into_xterm(b, tab, session, box, f"echo {label}_$((6*7)) | tee {path}")
    b.until(f"{path.name} with the text typed in the browser", lambda: _read(path), tab)
    b.check(_read(path) == f"{label}_42\n", f"{path} holds {_read(path)!r}", tab)
    b.until(
        f"the command and its output on the screen ({label})",
        lambda: stats(box.crop(b.shot(tab, f"typed-{label}"))).dark > before.dark + 150,
        tab,
    )
    return path


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def same_pixels(b: Browser, tab: Page, box: Box, reference: Image.Image, step: str) -> None:
    """Wait until the xterm on ``tab`` looks like ``reference`` (the same desktop)."""
    ref = box.crop(reference)
    last: list[float] = []

    def same() -> bool:
        last[:] = [differing(box.crop(b.shot(tab, step)), ref)]
        return last[0] < SAME

    try:
        b.until(f"the xterm to show what it showed before ({step})", same, tab)
    except AssertionError as err:
        raise AssertionError(f"{err}\ndiffering pixels: {last}") from None


# ---------------------------------------------------------------- one Jupyter server
class SharedServer:
    """The module's Jupyter server: started for the first test, and again after a test
    that could not log out of its desktop (so one such failure stays one)."""

    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory
        self.stack: ExitStack | None = None
        self.server = None

    def get(self):
        if self.server is None:
            self.stack = ExitStack()
            root = self.tmp_path_factory.mktemp("jupyter")
            self.server = self.stack.enter_context(jupyter_with_site(root))
        return self.server

    def stop(self) -> None:
        stack, self.stack, self.server = self.stack, None, None
        if stack is not None:
            stack.close()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory) -> Iterator[SharedServer]:
    shared = SharedServer(tmp_path_factory)
    yield shared
    shared.stop()


@pytest.fixture(scope="module")
def shared_chromium() -> Iterator[SharedChromium]:
    """One chromium for the module; each test has a context (a fresh profile) of its own."""
    with SharedChromium() as shared:
        yield shared


@pytest.fixture
def jupyter(shared_server):
    """The module's one Jupyter server (its start is 2 s of each test's time otherwise),
    with no desktop running: each test starts from the state a fresh server is in.

    After each test, the user logs out of the desktop (``log_out``: openbox's "Exit"),
    and the launcher stops what is left, as it does when a user logs out; the next test's
    ``/vnc/`` request starts a new desktop, with our progress page first. So every test
    still gets a fresh desktop: not one that another test left at another size (the
    resize test ends at 1440x900, and a desktop is only resized when noVNC connects) or
    with another test's commands in its xterm (the typing checks count the text's dark
    pixels on the screen, which a full, scrolling xterm would not grow). What persists
    is the Jupyter server and its root directory, where each test's typed commands
    write files of their own names, and the launcher process, which a fresh server
    would start on the first request. Should logging out fail, the server is stopped
    too, and the next test gets a new one.
    """
    server = shared_server.get()
    _, running = desktop_processes(server)
    assert not running, f"a desktop is still running before the test: {sorted(running)}"
    yield server
    try:
        log_out(server)
    except BaseException:
        shared_server.stop()
        raise


# ---------------------------------------------------------------- the tests
def test_tile_connects_without_a_password_prompt_and_keys_reach_the_xterm(jupyter, shared_chromium):
    with vnc_browser(jupyter, shared_chromium, "tile") as b:
        # The tile and its icon, in the DOM and on screen.
        launcher_card(b)
        pixels = rgb(tile_icon(b.lab, TITLE, "vnc", "vnc-launcher"))
        served = [r for r in b.responses if r[0].endswith("/server-proxy/icon/vnc")]
        assert served and served[-1][1] == 200, served
        assert "svg" in served[-1][2].get("content-type", ""), served
        green = sum(1 for r, g, bl in pixels if g > r + 40 and g > bl + 20)  # #1f6f43
        assert green > 0.2 * len(pixels), (
            f"the green monitor icon is not drawn: {green}/{len(pixels)}"
        )

        # Click: the new tab starts on our progress page, then noVNC connects.
        tab = open_from_tile(b)
        vnc_pages = [r for r in b.responses if urlsplit(r[0]).path == "/vnc/"]
        assert vnc_pages[0][1] == 202 and "x-hpc-proxies-state" in vnc_pages[0][2], vnc_pages
        assert any(s == 200 and "x-hpc-proxies-state" not in h for _, s, h in vnc_pages), vnc_pages
        url = urlsplit(tab.url)
        query = parse_qs(url.query)
        assert url.path == "/vnc/vnc.html", tab.url
        assert query.get("autoconnect") == ["1"] and query.get("reconnect") == ["1"], query
        assert query.get("resize") == ["remote"] and query.get("path") == ["vnc/websockify"], query
        assert not {"password", "token"} & set(query), query
        state = tab.evaluate(NOVNC_STATE_JS)
        assert not state["credentials_dialog"], f"the credentials dialog is still open: {state}"

        # What the user sees: the session's xterm on the desktop, the canvas filling the tab.
        session = find_session_when_up(jupyter)
        assert desktop_size(session) == (VIEWPORT["width"], VIEWPORT["height"])
        c = tab.evaluate(CANVAS_JS)
        assert (c["x"], c["y"], c["w"], c["h"]) == (0, 0, *VIEWPORT.values()), c
        box, shot = wait_for_xterm(b, tab, session, "connected")
        assert_desktop_pixels(b, tab, shot, box, "connected")

        # Keys typed in the browser run a command in the xterm.
        run_in_xterm(b, tab, session, box, f"tile_{secrets.token_hex(3)}")
        assert_desktop_pixels(b, tab, b.shot(tab, "final"), box, "final")
        assert alive(session.xvnc) and alive(session.xterm)


def test_the_xterm_appears_by_itself(jupyter, shared_chromium):
    """The desktop shows the session's xterm without the user touching it.

    A session that runs ``xterm &`` and then ``exec openbox`` (the default did) maps the
    xterm's window while openbox is starting, and openbox may leave the map request
    queued until its next X event: a click, another window, or a timer about 5 s later;
    if none comes, the user looks at an empty black desktop until they click on it. The
    default session now starts the xterm from openbox (``--startup``).
    """
    with vnc_browser(jupyter, shared_chromium, "by-itself", lab=False) as b:
        tab = open_directly(b)
        session = find_session_when_up(jupyter)
        # Bare: the screenshot is the docs' picture of the desktop.
        box, shot = wait_for_xterm(b, tab, session, "untouched", wake=False, bare=True)
        assert_desktop_pixels(b, tab, shot, box, "untouched")


def test_resizing_the_browser_resizes_the_remote_desktop(jupyter, shared_chromium):
    with vnc_browser(jupyter, shared_chromium, "resize", lab=False) as b:
        tab = open_directly(b)
        session = find_session_when_up(jupyter)
        wait_for_xterm(b, tab, session, "1280x800")
        assert desktop_size(session) == (1280, 800)
        for width, height in ((1024, 640), (1440, 900)):
            resize_browser(b, tab, session, width, height)
        assert alive(session.xvnc), "the resizes stopped the VNC server"


def resize_browser(b: Browser, tab: Page, session: Session, width: int, height: int) -> None:
    step = f"{width}x{height}"
    tab.set_viewport_size({"width": width, "height": height})
    seen: dict = {}

    def became(what: str, measure: Callable, expected: object) -> None:
        def check() -> bool:
            seen[what] = measure()
            return seen[what] == expected

        try:
            b.until(f"{what} to become {step}", check, tab)
        except AssertionError as err:
            raise AssertionError(f"{err}\nlast seen: {seen}") from None

    became("the remote desktop (xdpyinfo, xrandr)", lambda: desktop_size(session), (width, height))
    became(
        "noVNC's canvas",
        lambda: tab.evaluate(CANVAS_JS),
        {"x": 0, "y": 0, "w": width, "h": height, "fb_w": width, "fb_h": height},
    )
    box, shot = wait_for_xterm(b, tab, session, step)
    assert shot.size == (width, height)
    assert_desktop_pixels(b, tab, shot, box, step)


def test_novnc_clipboard_panel_and_the_session_clipboard(jupyter, shared_chromium):
    owners: list[subprocess.Popen] = []
    try:
        with vnc_browser(jupyter, shared_chromium, "clipboard", lab=False) as b:
            tab = open_directly(b)
            session = find_session_when_up(jupyter)
            wait_for_xterm(b, tab, session, "connected")
            # Closing by itself, the bar would close the panel too, and the text with it.
            b.until_js(tab, BAR_CLOSED_JS, "noVNC's control bar to close by itself")
            tag = secrets.token_hex(4)

            # noVNC -> session: typed into the panel, sent when the text box loses the focus.
            text = f"put into noVNC {tag}\n<&'\"> $HOME äöü € 日本"
            open_clipboard_panel(b, tab)
            tab.locator("#noVNC_clipboard_text").fill(text)
            b.shot(tab, "panel")
            tab.locator("#noVNC_clipboard_button").click()  # closes the panel: the box blurs
            for name in ("clipboard", "primary"):
                b.until(
                    f"the session's {name.upper()} selection to hold the panel's text",
                    lambda name=name: selection(session, name) == text,
                    tab,
                )

            # session -> noVNC: a program in the session copies; the panel shows it.
            copied = f"copied in the session {tag} ß"
            owners.append(xclip_owner(session.env, copied))
            box = tab.locator("#noVNC_clipboard_text")
            b.until(
                "the panel to show the session's copy", lambda: box.input_value() == copied, tab
            )
            open_clipboard_panel(b, tab)
            b.shot(tab, "from-session")
            b.check(tab.evaluate(CONNECTED_JS), "noVNC disconnected", tab)
    finally:
        for proc in owners:
            proc.terminate()
            proc.wait(10)


def open_clipboard_panel(b: Browser, tab: Page) -> None:
    """What a user does: open the control bar by its handle if it is closed, then the panel."""

    def opened() -> bool:
        if tab.locator("#noVNC_clipboard.noVNC_open").count():
            return True
        try:
            if tab.evaluate(BAR_CLOSED_JS):
                tab.locator("#noVNC_control_bar_handle").click(timeout=2000)
            else:
                tab.locator("#noVNC_clipboard_button").click(timeout=2000)
        except PlaywrightTimeout:
            pass  # the bar moved (it closes by itself 2 s after connecting): try again
        return False

    b.until("noVNC's clipboard panel to open", opened, tab)
    tab.locator("#noVNC_clipboard_text").wait_for(state="visible", timeout=TIMEOUT * 1000)


def test_dropped_websocket_reconnects_to_the_same_desktop(jupyter, shared_chromium):
    with vnc_browser(jupyter, shared_chromium, "reconnect", lab=False) as b:
        tab = open_directly(b)
        session = find_session_when_up(jupyter)
        box, _ = wait_for_xterm(b, tab, session, "connected")
        run_in_xterm(b, tab, session, box, f"before_drop_{secrets.token_hex(3)}")
        before = b.shot(tab, "before-drop")
        b.until(
            "the bridge's one connection to the VNC server",
            lambda: rfb_connections(session) == 1,
            tab,
        )

        tab.evaluate(RECORD_STATES_JS)
        with tab.expect_websocket(timeout=TIMEOUT * 1000) as new_socket:
            tab.evaluate(DROP_WEBSOCKET_JS)
            assert not tab.evaluate(RECONNECTED_JS), "still connected after the drop"
        assert urlsplit(new_socket.value.url).path == "/vnc/websockify", new_socket.value.url
        b.until_js(tab, RECONNECTED_JS, "noVNC to reconnect by itself")
        states = tab.evaluate("() => window.__vncStates")
        assert any("noVNC_reconnecting" in s for s in states), states
        assert len(b.vnc_websockets) == 2, b.vnc_websockets
        b.until(
            "the VNC server to drop the old connection and keep the new one",
            lambda: rfb_connections(session) == 1,
            tab,
        )

        # The same desktop: same processes, same xterm contents, and it still takes keys.
        same_pixels(b, tab, box, before, "reconnected")
        assert alive(session.xvnc) and find_session(jupyter) == session
        run_in_xterm(b, tab, session, box, f"after_drop_{secrets.token_hex(3)}")


def test_closing_the_tab_keeps_the_desktop_and_the_tile_reconnects(jupyter, shared_chromium):
    with vnc_browser(jupyter, shared_chromium, "close-tab") as b:
        tab = open_from_tile(b)
        session = find_session_when_up(jupyter)
        box, _ = wait_for_xterm(b, tab, session, "connected")
        run_in_xterm(b, tab, session, box, f"before_close_{secrets.token_hex(3)}")
        before = b.shot(tab, "before-close")

        tab.close()
        b.until("the VNC server to see the tab go", lambda: rfb_connections(session) == 0)
        assert alive(session.xvnc) and alive(session.xterm), "closing the tab stopped the desktop"
        assert desktop_size(session) == (VIEWPORT["width"], VIEWPORT["height"])  # it answers

        seen = len(b.responses)
        again = open_from_tile(b)
        vnc_pages = [r for r in b.responses[seen:] if urlsplit(r[0]).path == "/vnc/"]
        assert vnc_pages and vnc_pages[0][1] == 200, f"not straight to the running app: {vnc_pages}"
        assert "x-hpc-proxies-state" not in vnc_pages[0][2], vnc_pages
        assert find_session(jupyter) == session, "the desktop was started again"
        box2, _ = wait_for_xterm(b, again, session, "reopened")
        assert box2 == box, (box, box2)
        same_pixels(b, again, box, before, "reopened")
        run_in_xterm(b, again, session, box, f"after_reopen_{secrets.token_hex(3)}")
