"""End to end, in Debian's chromium: JupyterLab's "TensorBoard" tile to a drawn scalar chart.

The test writes real event files (``tb_events``), logs in with the token, finds the
tile and its icon, clicks it, and checks **on the screenshot pixels** that each scalar
card draws its run's line with the shape written (a falling loss, a rising accuracy).
Then the user switches the run directory from the browser, without a terminal: through
the address bar (``?logdir=``), which relaunches TensorBoard on the other runs, and,
after a directory that does not exist, through the form on the page that says so.

A link to ``?logdir=`` on another site (a page on ``localhost`` while Jupyter is on
``127.0.0.1``) gets a page that asks first, whose button relaunches TensorBoard and whose
link leaves it as it is. That test is not about the tile: it logs in without loading
JupyterLab and opens TensorBoard by its URL.

Each test has its own Jupyter server and its own browser context (a fresh profile), in
the module's one chromium.

Screenshots: ``ARTIFACTS/tensorboard-<step>.png`` and
``ARTIFACTS/tensorboard_cross_site-<step>.png`` (``…-failure-<n>.png`` on failure).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from browser import (
    Box,
    SharedChromium,
    chromium,
    log_in,
    log_tail,
    rgb,
    screenshot,
    tile,
    tile_icon,
    wait_for,
)
from conftest import ARTIFACTS
from PIL import Image
from playwright.sync_api import BrowserContext, Page
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from tb_events import write_experiments
from test_tensorboard_integration import tensorboard_pid

from hpc_proxies import pages

pytestmark = pytest.mark.browser

TITLE = "TensorBoard"
START_TIMEOUT = 90  # JupyterLab's first load and a TensorBoard start, on a slow machine
TIMEOUT = 45  # a relaunch and a chart
MIN_LINE_PIXELS = 150  # a 100-step line across a ~270 px wide chart colours more than this

# The card of one scalar tag, its chart canvas, and the runs listed beside the charts.
CARD_JS = """(tag) => {
  for (const card of document.querySelectorAll('scalar-card')) {
    if (!card.innerText.trim().startsWith(tag)) continue;
    const canvas = card.querySelector('canvas');
    if (!canvas) return null;
    canvas.scrollIntoView({block: 'center'});  // cards below the fold are not drawn
    const r = canvas.getBoundingClientRect();
    return {x: r.x, y: r.y, w: r.width, h: r.height};
  }
  return null;
}"""
TAGS_JS = """() => [...document.querySelectorAll('scalar-card')]
  .map(c => c.innerText.trim().split('\\n')[0])"""


@dataclass(frozen=True)
class Line:
    """The coloured pixels of a chart's line(s), and where they are."""

    pixels: int
    left_y: float  # mean height (screen y) of the line in the chart's left quarter
    right_y: float  # … and in its right quarter

    @property
    def falls(self) -> bool:
        return self.right_y - self.left_y > 30

    @property
    def rises(self) -> bool:
        return self.left_y - self.right_y > 30


def line_in(chart: Image.Image) -> Line:
    """A run's line is coloured (TensorBoard's palette); grid, axes and the step marker
    are grey, so pixels with a clear hue are the line."""
    w, _h = chart.size
    left, right, count = [], [], 0
    for i, (r, g, b) in enumerate(rgb(chart)):
        if max(r, g, b) - min(r, g, b) < 30 or min(r, g, b) > 200:
            continue
        count += 1
        x, y = i % w, i // w
        if x < w / 4:
            left.append(y)
        elif x > 3 * w / 4:
            right.append(y)

    def mean(ys: list[int]) -> float:
        return sum(ys) / len(ys) if ys else float("nan")

    return Line(count, mean(left), mean(right))


@dataclass(repr=False)
class Browser:
    jupyter: object
    context: BrowserContext
    lab: Page
    responses: list[tuple[str, int, dict]] = field(default_factory=list)
    prefix: str = "tensorboard"

    def shot(self, page: Page, step: str) -> Image.Image:
        return screenshot(page, f"{self.prefix}-{step}")

    def until(self, what: str, check: Callable, page: Page, timeout: float = TIMEOUT):
        """``check()`` until it returns something truthy; fail with the page and log."""
        return wait_for(what, check, self.jupyter, page, timeout, interval=0.15)

    def chart(self, page: Page, tag: str, step: str) -> Line:
        """Wait until the card of ``tag`` shows a drawn line; return it."""
        last: dict = {}

        def drawn() -> Line | None:
            box = evaluate(page, CARD_JS, tag)
            if not box or box["w"] < 100 or box["h"] < 100:
                return None
            chart = Box.of(box, inset=2).crop(self.shot(page, step))
            last["line"] = line = line_in(chart)
            return line if line.pixels >= MIN_LINE_PIXELS else None

        return self.until(f"the {tag!r} chart to be drawn ({step})", drawn, page)


def evaluate(page: Page, expression: str, arg: object = None) -> object:
    """``page.evaluate``, or None while the page navigates (the progress page reloads)."""
    try:
        return page.evaluate(expression, arg)
    except PlaywrightError:
        return None


@contextmanager
def tensorboard_browser(
    jupyter, shared: SharedChromium, prefix: str = "tensorboard", lab: bool = True
) -> Iterator[Browser]:
    """A context of the ``shared`` chromium (a fresh profile) logged in to ``jupyter``
    (its cookie, from ``?token=``), on JupyterLab's launcher (without ``lab``: logged in
    only, JupyterLab not loaded); screenshots are ``ARTIFACTS/<prefix>-<step>.png``."""
    for stale in ARTIFACTS.glob(f"{prefix}-*.png"):
        stale.unlink()
    with chromium(f"{prefix}-failure", shared=shared) as context:
        b = Browser(jupyter, context, lab=None, prefix=prefix)  # type: ignore[arg-type]
        context.on("response", lambda r: b.responses.append((r.url, r.status, dict(r.headers))))
        b.lab = context.new_page()
        if lab:
            b.lab.goto(f"{jupyter.url}/lab?token={jupyter.token}")
        else:
            log_in(b.lab, jupyter)
        yield b


@pytest.fixture(scope="module")
def shared_chromium() -> Iterator[SharedChromium]:
    """One chromium for the module; each test has a context (a fresh profile) of its own."""
    with SharedChromium() as shared:
        yield shared


def progress_then_app(b: Browser, query: str) -> None:
    """The page at ``/tensorboard/?query`` was our progress page first, then TensorBoard."""
    seen = [
        (status, pages.STATE_HEADER.lower() in headers)
        for url, status, headers in b.responses
        if urlsplit(url).path == "/tensorboard/" and urlsplit(url).query == query
    ]
    assert (202, True) in seen and (200, False) in seen, seen


def test_tile_draws_the_charts_and_the_logdir_is_switched_from_the_browser(
    jupyter, shared_chromium
):
    write_experiments(jupyter.root_dir)
    with tensorboard_browser(jupyter, shared_chromium) as b:
        # The tile and its (orange) icon.
        card = tile(b.lab, TITLE)
        try:
            card.wait_for(state="visible", timeout=START_TIMEOUT * 1000)
        except PlaywrightTimeout:
            raise AssertionError(f"no {TITLE!r} tile{log_tail(jupyter)}") from None
        pixels = rgb(tile_icon(b.lab, TITLE, "tensorboard", "tensorboard-launcher"))
        orange = sum(1 for r, g, bl in pixels if r > 200 and 90 < g < 170 and bl < 80)
        assert orange > 0.2 * len(pixels), f"the orange icon is not drawn: {orange}/{len(pixels)}"

        # Click: a new tab, our progress page, then TensorBoard draws both runs' charts.
        clicked = time.monotonic()
        with b.context.expect_page(timeout=30_000) as new_tab:
            card.click()
        tab = new_tab.value
        loss = b.chart(tab, "loss", "tile-loss")
        first_chart = time.monotonic() - clicked
        accuracy = b.chart(tab, "accuracy", "tile-accuracy")
        assert loss.falls, f"the loss line does not fall: {loss}"
        assert accuracy.rises, f"the accuracy line does not rise: {accuracy}"
        assert urlsplit(tab.url).path == "/tensorboard/", tab.url
        progress_then_app(b, "")
        assert sorted(tab.evaluate(TAGS_JS)) == ["accuracy", "loss"]
        print(f"click on the tile to the first drawn chart: {first_chart:.1f} s")

        # The address bar: another run directory relaunches TensorBoard on its runs.
        tab.goto(f"{jupyter.url}/tensorboard/?logdir=experiments/exp2")
        accuracy = b.chart(tab, "accuracy", "switched-accuracy")
        assert accuracy.rises, accuracy
        b.until("only the other run's card", lambda: evaluate(tab, TAGS_JS) == ["accuracy"], tab)
        assert "run_b" in tab.inner_text("body") and "run_a" not in tab.inner_text("body")
        progress_then_app(b, "logdir=experiments/exp2")

        # A directory that does not exist: a page that says so, with a form to fix it.
        tab.goto(f"{jupyter.url}/tensorboard/?logdir=experiments/exp3")
        heading = tab.locator("h1")
        assert heading.inner_text() == "TensorBoard cannot open this run directory"
        assert "experiments/exp3 does not exist" in tab.inner_text("body")
        b.shot(tab, "no-such-logdir")
        tab.fill("input[name=logdir]", "experiments/exp1")
        tab.click("button[type=submit]")
        loss = b.chart(tab, "loss", "form-loss")
        assert loss.falls, loss
        b.until("only the first run's card", lambda: evaluate(tab, TAGS_JS) == ["loss"], tab)
        assert "run_a" in tab.inner_text("body") and "run_b" not in tab.inner_text("body")
        assert urlsplit(tab.url).query == "logdir=experiments%2Fexp1", tab.url


@contextmanager
def another_site(link: str) -> Iterator[str]:
    """A page on another site (``localhost``; Jupyter is on ``127.0.0.1``, and different
    hosts are different sites) with one link, ``#link``, to ``link``; its URL."""
    page = (
        "<!DOCTYPE html><html><head><title>Another site</title></head><body>"
        f"<h1>Another site</h1><p><a id='link' href='{escape(link)}'>a link</a></p>"
        "</body></html>"
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            """Quiet: the test output is for the test."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def follow_the_link(b: Browser, tab: Page, site: str, step: str) -> None:
    """On the other site, click its link; the browser says so (``Sec-Fetch-Site``) and
    the confirmation page is shown."""
    tab.goto(site)
    with tab.expect_request(lambda r: "/tensorboard/?logdir=" in r.url) as sent:
        tab.click("#link")
    assert sent.value.all_headers().get("sec-fetch-site") == "cross-site", sent.value.headers
    tab.locator("#confirm").wait_for(state="visible", timeout=TIMEOUT * 1000)
    b.shot(tab, step)


def test_a_link_on_another_site_asks_before_tensorboard_is_relaunched(jupyter, shared_chromium):
    write_experiments(jupyter.root_dir)
    exp2 = jupyter.root_dir / "experiments" / "exp2"
    link = f"{jupyter.url}/tensorboard/?logdir=experiments/exp2"
    # The story is the link, not the tile: no JupyterLab (its start takes 4 s of CPU
    # that TensorBoard's own start shares), TensorBoard opened by its URL.
    with (
        another_site(link) as site,
        tensorboard_browser(jupyter, shared_chromium, "tensorboard_cross_site", lab=False) as b,
    ):
        tab = b.context.new_page()
        tab.goto(f"{jupyter.url}/tensorboard/")
        b.chart(tab, "loss", "before")
        both = ["accuracy", "loss"]
        b.until("both runs' cards", lambda: sorted(evaluate(tab, TAGS_JS) or []) == both, tab)
        running = tensorboard_pid(jupyter)

        # The link: a page that asks; TensorBoard runs on, on the same runs.
        mark = len(jupyter.log())
        follow_the_link(b, tab, site, "confirm")
        assert tab.inner_text("h1") == f"Open TensorBoard on {exp2}?"
        assert urlsplit(tab.url).query == "logdir=experiments/exp2", tab.url
        since = jupyter.log()[mark:]
        assert f"asking the user to confirm logdir={exp2} (request: cross-site)" in since
        assert "relaunching with" not in since
        assert tensorboard_pid(jupyter) == running

        # "Keep TensorBoard as it is": back to the same TensorBoard, nothing relaunched.
        tab.click("#keep")
        b.chart(tab, "loss", "kept")
        b.until("both runs' cards", lambda: sorted(evaluate(tab, TAGS_JS) or []) == both, tab)
        assert urlsplit(tab.url).path == "/tensorboard/" and not urlsplit(tab.url).query
        assert "relaunching with" not in jupyter.log()[mark:]
        assert tensorboard_pid(jupyter) == running

        # The link again, and this time the button: TensorBoard on the other runs.
        follow_the_link(b, tab, site, "confirm-again")
        tab.click("#confirm")
        accuracy = b.chart(tab, "accuracy", "confirmed")
        assert accuracy.rises, accuracy
        b.until("only the other run's card", lambda: evaluate(tab, TAGS_JS) == ["accuracy"], tab)
        assert "run_b" in tab.inner_text("body") and "run_a" not in tab.inner_text("body")
        assert urlsplit(tab.url).query == "logdir=experiments/exp2", tab.url
        assert f"relaunching with logdir={exp2} (request: confirmed)" in jupyter.log()[mark:]
        assert tensorboard_pid(jupyter) != running
