"""What the browser tests share: Debian's chromium, logging in, screenshots and their
pixels, waiting with the page's state and the server's log in the failure, and the page
of Xpra's HTML5 client (its tests and the clipboard's).

Screenshots go to ``ARTIFACTS`` (``test-artifacts/``, or ``$HPC_PROXIES_ARTIFACTS``).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from conftest import ARTIFACTS
from PIL import Image, ImageChops, ImageStat
from playwright.sync_api import Browser as PlaywrightBrowser
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, Playwright, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from waiting import until

# ---------------------------------------------------------------- chromium
#: Debian's chromium, driven by playwright (no browser download), with nothing that
#: reaches beyond this machine: this network refuses such connections anyway.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}


@contextmanager
def chromium(
    failure_prefix: str, viewport: dict | None = None, shared: SharedChromium | None = None
):
    """A browser context in Debian's chromium, closed after; if the body fails, every
    tab's screenshot is kept as ``ARTIFACTS/<failure_prefix>-N.png``.

    The context is in a chromium of its own, or in the ``shared`` one: a context is a
    fresh profile either way (no cookie, storage or cache of another), and a module of
    several browser tests saves the second that starting playwright and chromium takes.
    """
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        if shared is None:
            shared = stack.enter_context(SharedChromium())
        context = shared.browser().new_context(viewport=viewport or VIEWPORT)
        try:
            yield context
        except BaseException:
            screenshot_every_tab(context, failure_prefix)
            raise
        finally:
            context.close()


class SharedChromium:
    """Playwright and one chromium for several ``chromium()`` contexts in turn (a
    module-scoped fixture's); started when first needed, and again if it went away."""

    def __init__(self) -> None:
        self._playwright: Playwright | None = None
        self._browser: PlaywrightBrowser | None = None

    def browser(self) -> PlaywrightBrowser:
        if self._playwright is None:
            self._playwright = sync_playwright().start()
        if self._browser is None or not self._browser.is_connected():
            self._browser = self._playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS
            )
        return self._browser

    def close(self) -> None:
        browser, self._browser = self._browser, None
        playwright, self._playwright = self._playwright, None
        try:
            if browser is not None and browser.is_connected():
                browser.close()
        finally:
            if playwright is not None:
                playwright.stop()

    def __enter__(self) -> SharedChromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log_in(page: Page, jupyter) -> None:
    """Jupyter's login cookie from its token, without loading JupyterLab: for the tests
    (or steps) that open an app's URL directly rather than through its launcher tile.
    Jupyter sets the cookie on any request the token authenticates; ``/api/status`` is
    its smallest page."""
    response = page.goto(f"{jupyter.url}/api/status?token={jupyter.token}")
    assert response is not None and response.status == 200, (
        f"logging in with the token: {response and response.status}{log_tail(jupyter)}"
    )
    assert page.context.cookies(jupyter.url), "Jupyter set no login cookie"


def tile(page: Page, title: str) -> Locator:
    """An app's own launcher tile (jupyter-server-proxy's, whose ``title`` attribute is
    the app's title, then " [↗]"), not the Running panel's "New … instance" card."""
    return page.locator(f'.jp-LauncherCard[title^="{title}"]')


#: Whether the browser has the picture that an icon box's background names (a new Image
#: of the same URL comes from its cache once it has loaded).
ICON_LOADED_JS = """([selector, app]) => {
  const box = document.querySelector(selector);
  const background = box ? getComputedStyle(box).backgroundImage : '';
  if (!background.includes('/server-proxy/icon/' + app)) return false;
  const url = background.slice(background.indexOf('(') + 1, -1).replace(/^"|"$/g, '');
  const probe = new Image();
  probe.src = url;
  return probe.complete && probe.naturalWidth > 0;
}"""


def tile_icon(page: Page, title: str, app: str, name: str, timeout: float = 30) -> Image.Image:
    """The app's tile's icon as the user sees it, cropped from a screenshot kept as
    ``ARTIFACTS/<name>.png``. The tiles are in a launcher category of their own, where
    JupyterLab draws no ``kernelIconUrl``: the labextension's style sheet puts
    ``/server-proxy/icon/<app>`` on the icon box. Waits until that picture has loaded
    and is painted (the box no longer blank)."""
    selector = f'.jp-LauncherCard[title^="{title}"] .jp-LauncherCard-icon'
    page.wait_for_function(ICON_LOADED_JS, arg=[selector, app], timeout=timeout * 1000)
    box = page.locator(selector).first
    box.scroll_into_view_if_needed()  # the launcher's last row may be below the fold
    rect = box.bounding_box()
    assert rect and rect["width"] >= 16 and rect["height"] >= 16, rect
    found: list[Image.Image] = []

    def painted() -> bool:
        found[:] = [Box.of_bounding_box(rect).crop(screenshot(page, name))]
        return stats(found[0]).white < 0.9

    until(painted, timeout, f"the {app} tile's icon to be painted", interval=0.2)
    return found[0]


def screenshot_every_tab(context, prefix: str) -> None:
    """On a failing browser test: keep what each tab showed, as ARTIFACTS/<prefix>-N.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for i, page in enumerate(context.pages):
        try:
            page.screenshot(path=ARTIFACTS / f"{prefix}-{i}.png")
        except PlaywrightError:
            pass  # a tab that is already gone


# ---------------------------------------------------------------- screenshots, pixels
#: Pixel classes: text on an xterm is dark on white; a desktop's background is dark.
WHITE_MIN = 235
DARK_MAX = 90


def screenshot(page: Page, name: str) -> Image.Image:
    """A screenshot of ``page``, kept as ``ARTIFACTS/<name>.png``, as an RGB image."""
    png = page.screenshot()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.png").write_bytes(png)
    return Image.open(io.BytesIO(png)).convert("RGB")


@dataclass(frozen=True)
class Box:
    """A rectangle of a screenshot, in page pixels."""

    x: int
    y: int
    w: int
    h: int

    @classmethod
    def of(cls, rect: dict, inset: int = 0) -> Box:
        """From ``{x, y, w, h}`` (what the pages' scripts return), ``inset`` px in."""
        x, y = round(rect["x"]) + inset, round(rect["y"]) + inset
        return cls(x, y, round(rect["w"]) - 2 * inset, round(rect["h"]) - 2 * inset)

    @classmethod
    def of_bounding_box(cls, rect: dict) -> Box:
        """From playwright's ``bounding_box()`` (``{x, y, width, height}``)."""
        return cls.of({"x": rect["x"], "y": rect["y"], "w": rect["width"], "h": rect["height"]})

    def overlaps(self, other: Box) -> bool:
        return (
            self.x < other.x + other.w
            and other.x < self.x + self.w
            and self.y < other.y + other.h
            and other.y < self.y + self.h
        )

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


# The pixel counts below are PIL's: a mask (255 where a test holds) per channel, combined
# with ``darker`` (all channels) or ``lighter`` (any channel), then counted by histogram.
# They give exactly what a loop over ``rgb(image)`` gives, a hundred times faster (a
# whole screenshot takes 10 ms instead of a second of the polling loops' time).
def _where(image: Image.Image, test: Callable[[int], bool], every: bool) -> int:
    """How many pixels of the RGB ``image`` have ``test(value)`` true in every channel
    (``every``) or in at least one."""
    masks = [channel.point(lambda v: 255 if test(v) else 0) for channel in image.split()]
    combine = ImageChops.darker if every else ImageChops.lighter
    mask = combine(combine(masks[0], masks[1]), masks[2])
    return mask.histogram()[255]


def stats(region: Image.Image) -> Stats:
    region = region.convert("RGB")
    n = region.width * region.height
    if n == 0:
        return Stats(0.0, 0, (0.0, 0.0, 0.0))
    white = _where(region, lambda v: v >= WHITE_MIN, every=True)
    dark = _where(region, lambda v: v <= DARK_MAX, every=True)
    mean = tuple(ImageStat.Stat(region).mean)
    return Stats(white / n, dark, mean)  # type: ignore[arg-type]


def differing(a: Image.Image, b: Image.Image, tolerance: int = 40) -> float:
    """Fraction of pixels that differ by more than ``tolerance`` in some channel."""
    if a.size != b.size:
        return 1.0
    difference = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    bad = _where(difference, lambda v: v > tolerance, every=False)
    return bad / max(1, a.width * a.height)


def looks_like_background(s: Stats) -> bool:
    """A desktop's dark background: almost no white, dark on average."""
    return s.white < 0.05 and max(s.mean) < 150


# ---------------------------------------------------------------- waiting, diagnostics
def log_tail(jupyter, lines: int = 60) -> str:
    text = jupyter.log().splitlines()[-lines:]
    return "\n--- Jupyter server log (tail) ---\n" + "\n".join(text)


def page_state(page: Page) -> str:
    """Where ``page`` is and what it shows (and, on Xpra's page, its client's state)."""
    try:
        state = page.evaluate(
            """() => ({url: location.href, title: document.title,
                       text: document.body ? document.body.innerText.slice(0, 500) : '',
                       xpra_client: window.client && window.client.id_to_window ? {
                         connected: !!window.client.connected,
                         windows: Object.keys(window.client.id_to_window)} : undefined})"""
        )
    except PlaywrightError as err:
        state = f"(cannot evaluate: {err})"
    return f"\n--- page state ---\n{state}"


def wait_for(
    what: str,
    check: Callable[[], object],
    jupyter,
    page: Page | None = None,
    timeout: float = 30,
    interval: float = 0.1,
):
    """``until(check)``; a failure shows ``page``'s state and the Jupyter log's tail."""
    try:
        return until(check, timeout, f"timed out waiting for {what}", interval)
    except AssertionError as err:
        extra = page_state(page) if page is not None else ""
        raise AssertionError(f"{err}{extra}{log_tail(jupyter)}") from None


def wait_js(page: Page, expression: str, what: str, jupyter, timeout: float = 60) -> None:
    """Until ``expression`` is true in ``page``; a failure shows the page and the log."""
    try:
        page.wait_for_function(expression, timeout=timeout * 1000, polling=100)
    except PlaywrightTimeout:
        raise AssertionError(
            f"timed out after {timeout:.0f} s waiting for {what}"
            f"{page_state(page)}{log_tail(jupyter)}"
        ) from None


# ---------------------------------------------------------------- Xpra's HTML5 client
#: The xterm window the HTML5 client drew, found through the page's global `client`.
XPRA_XTERM_JS = """() => {
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
XPRA_CONNECTED_JS = """() => !!(window.client && window.client.connected
    && !/connect\\.html/.test(location.pathname))"""


def looks_like_xpra_xterm(s: Stats) -> bool:
    """Mostly white, with some text (the prompt at least) on it."""
    return s.white >= 0.80 and s.dark >= 60


def xpra_xterm_box(page: Page) -> Box | None:
    rect = page.evaluate(XPRA_XTERM_JS)
    return None if rect is None else Box.of(rect)


def wait_for_xpra_xterm(page: Page, name: str, jupyter) -> tuple[Box, Image.Image]:
    """Wait until the client is connected and the xterm is drawn *on screen*; the box
    inside its border, and the screenshot (``ARTIFACTS/xpra-<name>.png``)."""
    wait_js(page, XPRA_CONNECTED_JS, f"the HTML5 client to connect ({name})", jupyter)
    box = wait_for(
        f"the xterm window in the DOM ({name})", lambda: xpra_xterm_box(page), jupyter, page
    )
    # Inset by 2px: the canvas edge touches the window border.
    inner = Box(box.x + 2, box.y + 2, box.w - 4, box.h - 4)
    state: dict = {}

    def drawn() -> bool:
        shot = screenshot(page, f"xpra-{name}")
        state["shot"], state["xterm"] = shot, stats(inner.crop(shot))
        return looks_like_xpra_xterm(state["xterm"])

    try:
        wait_for(f"the xterm to be drawn ({name})", drawn, jupyter, page)
    except AssertionError as err:
        raise AssertionError(f"{err}\nxterm region {inner}: {state.get('xterm')}") from None
    return inner, state["shot"]
