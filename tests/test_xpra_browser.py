"""End to end, in Debian's chromium: JupyterLab's "Xpra Desktop" tile to a shared xterm.

One real Jupyter server, one real browser. The test logs in with the token, checks
the launcher tile and its icon, opens the tile (a new tab: our progress page, then
Xpra's HTML5 client), and checks on the *screenshots* that the xterm window is drawn.
Typed keys must reach the session (a ``touch`` typed into the xterm makes a file), a
second tab on ``/xpra/`` must show the same desktop without taking it from the first
one, and no URL may ever carry the password.

Screenshots go to ``ARTIFACTS/xpra-*.png`` (``xpra-failure-*.png`` when it fails).
"""

from __future__ import annotations

import io
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import ARTIFACTS, VIEWPORT, chromium
from PIL import Image
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

pytestmark = pytest.mark.browser

TITLE = "Xpra Desktop"

# Pixel classes: xterm's default colours are black text on white; Xpra's page
# background (#screen) is a dark blue.
WHITE_MIN = 235
DARK_MAX = 90

# The xterm window the HTML5 client drew, found through the page's global `client`.
XTERM_JS = """() => {
  const c = window.client;
  if (!c) return null;
  for (const win of Object.values(c.id_to_window)) {
    const div = document.getElementById(String(win.wid));
    if (!div || !/xterm/i.test(div.className + ' ' + win.title)) continue;
    const canvas = div.querySelector('canvas');
    if (!canvas) continue;
    const r = canvas.getBoundingClientRect();
    if (r.width < 50 || r.height < 50) continue;
    return {wid: win.wid, title: win.title, x: r.left, y: r.top, w: r.width, h: r.height};
  }
  return null;
}"""
CONNECTED_JS = """() => !!(window.client && window.client.connected
    && !/connect\\.html/.test(location.pathname))"""


# ---------------------------------------------------------------- diagnostics
def log_tail(jupyter, lines: int = 60) -> str:
    text = jupyter.log().splitlines()[-lines:]
    return "\n--- Jupyter server log (tail) ---\n" + "\n".join(text)


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / f"xpra-{name}.png"


def snapshot(page: Page, name: str) -> Image.Image:
    """A screenshot of ``page``, saved as an artifact and returned as an RGB image."""
    png = page.screenshot()
    artifact(name).write_bytes(png)
    return Image.open(io.BytesIO(png)).convert("RGB")


def page_state(page: Page) -> str:
    try:
        state = page.evaluate(
            """() => ({url: location.href, title: document.title,
                       connected: !!(window.client && window.client.connected),
                       windows: window.client ? Object.keys(window.client.id_to_window) : null,
                       text: document.body ? document.body.innerText.slice(0, 500) : ''})"""
        )
    except PlaywrightError as err:
        state = f"(cannot evaluate: {err})"
    return f"\n--- page state ---\n{state}"


# ---------------------------------------------------------------- pixels
@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int

    @classmethod
    def of(cls, rect: dict, inset: int = 0) -> Box:
        x, y = round(rect["x"]) + inset, round(rect["y"]) + inset
        return cls(x, y, round(rect["w"]) - 2 * inset, round(rect["h"]) - 2 * inset)

    def crop(self, image: Image.Image) -> Image.Image:
        return image.crop((self.x, self.y, self.x + self.w, self.y + self.h))


@dataclass(frozen=True)
class Stats:
    white: float  # fraction of near-white pixels
    dark: int  # number of dark pixels (text, the prompt, the cursor)
    mean: tuple[float, float, float]

    def __str__(self) -> str:
        mean = ", ".join(f"{c:.0f}" for c in self.mean)
        return f"white={self.white:.1%} dark={self.dark}px mean=({mean})"


def rgb(image: Image.Image) -> list[tuple[int, int, int]]:
    data = image.tobytes()
    return list(zip(data[0::3], data[1::3], data[2::3], strict=True))


def stats(region: Image.Image) -> Stats:
    pixels = rgb(region)
    white = sum(1 for p in pixels if min(p) >= WHITE_MIN)
    dark = sum(1 for p in pixels if max(p) <= DARK_MAX)
    n = max(1, len(pixels))
    mean = tuple(sum(p[i] for p in pixels) / n for i in range(3))
    return Stats(white / n, dark, mean)


def differing(a: Image.Image, b: Image.Image, tolerance: int = 40) -> float:
    """Fraction of pixels that differ by more than ``tolerance`` in some channel."""
    pa, pb = rgb(a), rgb(b)
    if len(pa) != len(pb):
        return 1.0
    bad = sum(
        1
        for x, y in zip(pa, pb, strict=True)
        if max(abs(i - j) for i, j in zip(x, y, strict=True)) > tolerance
    )
    return bad / max(1, len(pa))


def looks_like_xterm(s: Stats) -> bool:
    """Mostly white, with some text (the prompt at least) on it."""
    return s.white >= 0.80 and s.dark >= 60


def background_box(xterm: Box) -> Box:
    """A patch of Xpra's page background, below the floating menu and beside the window."""
    if xterm.x >= 120:
        return Box(10, 300, 100, 200)
    return Box(VIEWPORT["width"] - 110, 300, 100, 200)


def looks_like_background(s: Stats) -> bool:
    return s.white < 0.05 and max(s.mean) < 150


# ---------------------------------------------------------------- waiting
def wait_for(
    what: str,
    check: Callable[[], object],
    jupyter,
    page: Page | None = None,
    timeout: float = 30,
    interval: float = 0.25,
):
    """Call ``check`` until it returns something truthy; fail with the log tail if not."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            extra = page_state(page) if page is not None else ""
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}"
                f"{extra}{log_tail(jupyter)}"
            )
        time.sleep(interval)


def wait_js(page: Page, expression: str, what: str, jupyter, timeout: float = 60) -> None:
    try:
        page.wait_for_function(expression, timeout=timeout * 1000, polling=100)
    except PlaywrightTimeout:
        raise AssertionError(
            f"timed out after {timeout:.0f} s waiting for {what}"
            f"{page_state(page)}{log_tail(jupyter)}"
        ) from None


def xterm_box(page: Page) -> Box | None:
    rect = page.evaluate(XTERM_JS)
    return None if rect is None else Box.of(rect)


def wait_for_xterm(page: Page, name: str, jupyter) -> tuple[Box, Image.Image]:
    """Wait until the client is connected and the xterm is drawn *on screen*."""
    wait_js(page, CONNECTED_JS, f"the HTML5 client to connect ({name})", jupyter)
    box = wait_for(f"the xterm window in the DOM ({name})", lambda: xterm_box(page), jupyter, page)
    # Inset by 2px: the canvas edge touches the window border.
    inner = Box(box.x + 2, box.y + 2, box.w - 4, box.h - 4)
    state: dict = {}

    def drawn() -> bool:
        shot = snapshot(page, name)
        state["shot"], state["xterm"] = shot, stats(inner.crop(shot))
        return looks_like_xterm(state["xterm"])

    try:
        wait_for(f"the xterm to be drawn ({name})", drawn, jupyter, page)
    except AssertionError as err:
        raise AssertionError(f"{err}\nxterm region {inner}: {state.get('xterm')}") from None
    return inner, state["shot"]


def assert_xterm_pixels(shot: Image.Image, box: Box, name: str, jupyter) -> Stats:
    term, back = stats(box.crop(shot)), stats(background_box(box).crop(shot))
    where = f"({name}: xterm {box} {term}; background {back}; see {artifact(name)})"
    assert looks_like_xterm(term), f"the xterm region is not white with text {where}"
    assert looks_like_background(back), f"the page background looks wrong {where}"
    assert abs(term.mean[0] - back.mean[0]) > 100, f"xterm and background look alike {where}"
    return term


def type_into_xterm(page: Page, box: Box, text: str) -> None:
    """Click into the xterm (gives it the focus) and type ``text`` and Enter."""
    page.bring_to_front()
    page.mouse.click(box.x + box.w // 2, box.y + box.h // 2)
    page.keyboard.type(text, delay=15)
    page.keyboard.press("Enter")


def wait_for_file(path: Path, jupyter, page: Page) -> None:
    wait_for(f"{path} to be made by the command typed in the browser", path.exists, jupyter, page)


# ---------------------------------------------------------------- the test
def test_xpra_desktop_in_chromium(jupyter):
    tag = secrets.token_hex(4)
    for stale in ARTIFACTS.glob("xpra-*.png"):
        stale.unlink()
    requested: list[str] = []
    responses: list[tuple[str, int, dict]] = []

    with chromium("xpra-failure") as context:
        context.on("request", lambda req: requested.append(req.url))
        context.on("response", lambda r: responses.append((r.url, r.status, dict(r.headers))))
        context.on("page", lambda p: p.on("websocket", lambda ws: requested.append(ws.url)))
        lab = context.new_page()
        run_scenario(jupyter, context, lab, tag, requested, responses)


def run_scenario(jupyter, context, lab: Page, tag, requested, responses) -> None:
    # 1. Log in to JupyterLab with the token and wait for the launcher.
    lab.goto(f"{jupyter.url}/lab?token={jupyter.token}")
    card = lab.locator(".jp-LauncherCard", has_text=TITLE)
    try:
        card.wait_for(state="visible", timeout=90_000)
    except PlaywrightTimeout:
        raise AssertionError(
            f"no {TITLE!r} tile in the launcher{page_state(lab)}{log_tail(jupyter)}"
        ) from None

    # 2. The tile and its icon, in the DOM and on screen.
    assert TITLE in card.inner_text()
    icon = card.locator(".jp-LauncherCard-icon img")
    assert "/server-proxy/icon/xpra" in (icon.get_attribute("src") or "")
    wait_js(
        lab,
        """() => {
          const img = document.querySelector(
            '.jp-LauncherCard[title^="Xpra Desktop"] .jp-LauncherCard-icon img');
          return img && img.complete && img.naturalWidth > 0 && img.naturalHeight > 0;
        }""",
        "the Xpra tile's icon to load",
        jupyter,
        timeout=30,
    )
    icon_responses = [r for r in responses if r[0].endswith("/server-proxy/icon/xpra")]
    assert icon_responses and icon_responses[-1][1] == 200, icon_responses
    assert "svg" in icon_responses[-1][2].get("content-type", ""), icon_responses
    icon_rect = icon.bounding_box()
    assert icon_rect and icon_rect["width"] >= 16 and icon_rect["height"] >= 16, icon_rect
    lab_shot = snapshot(lab, "launcher")
    icon_stats = stats(
        Box.of(
            {
                "x": icon_rect["x"],
                "y": icon_rect["y"],
                "w": icon_rect["width"],
                "h": icon_rect["height"],
            }
        ).crop(lab_shot)
    )
    # The card is white; the drawn icon is a dark blue monitor.
    assert icon_stats.white < 0.9 and min(icon_stats.mean) < 230, (
        f"the icon is not visible on the launcher screenshot: {icon_stats}"
    )

    # 3. Click the tile: a new tab, our progress page, then the HTML5 client.
    with context.expect_page(timeout=30_000) as popup_info:
        card.click()
    tab1 = popup_info.value
    box1, shot1 = wait_for_xterm(tab1, "tab1", jupyter)
    assert tab1.url.rstrip("/").endswith("/xpra"), tab1.url
    xpra_pages = [r for r in responses if urlsplit(r[0]).path == "/xpra/"]
    assert xpra_pages, responses
    _, first_status, first_headers = xpra_pages[0]
    assert first_status == 202 and "x-hpc-proxies-state" in first_headers, (
        f"the tab did not start on the progress page: {xpra_pages}"
    )
    assert any(s == 200 and "x-hpc-proxies-state" not in h for _, s, h in xpra_pages), xpra_pages
    term1 = assert_xterm_pixels(shot1, box1, "tab1", jupyter)

    secret = (jupyter.runtime_dir("xpra") / "app" / "secret").read_text().strip()
    assert len(secret) >= 16
    assert tab1.evaluate("() => sessionStorage.getItem('password')") is None, (
        "the client page left the password in sessionStorage"
    )

    # 4. Keys typed in the browser reach the session.
    typed1 = jupyter.root_dir / f"typed-in-xpra-{tag}"
    type_into_xterm(tab1, box1, f"touch {typed1}")
    wait_for_file(typed1, jupyter, tab1)
    # The command and a new prompt are now on tab 1's screen: more dark pixels.
    wait_for(
        "tab 1 to show the typed command",
        lambda: stats(box1.crop(snapshot(tab1, "tab1-typed"))).dark > term1.dark + 200,
        jupyter,
        tab1,
    )

    # 5. A second tab on the same desktop, without taking it from the first.
    tab2 = context.new_page()
    tab2.goto(f"{jupyter.url}/xpra/")
    box2, shot2 = wait_for_xterm(tab2, "tab2", jupyter)
    assert_xterm_pixels(shot2, box2, "tab2", jupyter)
    assert (box2.w, box2.h) == (box1.w, box1.h), (box1, box2)
    assert tab2.evaluate(XTERM_JS)["wid"] == tab1.evaluate(XTERM_JS)["wid"]
    # Same xterm contents in both tabs (the line typed from tab 1 included).
    same = wait_for(
        "both tabs to show the same xterm",
        lambda: (
            differing(box1.crop(snapshot(tab1, "tab1-shared")), box2.crop(snapshot(tab2, "tab2")))
            < 0.02
        ),
        jupyter,
        tab2,
    )
    assert same

    before = stats(box1.crop(snapshot(tab1, "tab1-before-tab2-typed")))
    typed2 = jupyter.root_dir / f"typed-in-xpra-tab2-{tag}"
    type_into_xterm(tab2, box2, f"touch {typed2}")
    wait_for_file(typed2, jupyter, tab2)
    # Tab 1 is still connected and receives what tab 2 did.
    wait_for(
        "tab 1 to show the command typed in tab 2",
        lambda: stats(box1.crop(snapshot(tab1, "tab1-after-tab2-typed"))).dark > before.dark + 200,
        jupyter,
        tab1,
    )
    assert tab1.evaluate(CONNECTED_JS), f"tab 1 was disconnected{page_state(tab1)}"
    assert tab2.evaluate(CONNECTED_JS), f"tab 2 was disconnected{page_state(tab2)}"

    # And tab 1 can still type, after tab 2 joined.
    typed3 = jupyter.root_dir / f"typed-in-xpra-again-{tag}"
    type_into_xterm(tab1, box1, f"touch {typed3}")
    wait_for_file(typed3, jupyter, tab1)
    assert tab1.evaluate(CONNECTED_JS) and tab2.evaluate(CONNECTED_JS)
    final1 = snapshot(tab1, "tab1-final")
    final2 = snapshot(tab2, "tab2-final")
    assert_xterm_pixels(final1, box1, "tab1-final", jupyter)
    assert_xterm_pixels(final2, box2, "tab2-final", jupyter)

    # The password never travels in a URL (pages, requests, websockets).
    urls = [lab.url, tab1.url, tab2.url, *requested]
    assert not [u for u in urls if secret in u], "the Xpra secret appeared in a URL"
    assert not [u for u in (tab1.url, tab2.url) if "password" in u.lower()], (tab1.url, tab2.url)
    assert not [u for u in requested if "password=" in u.lower()], "a request carried password="
