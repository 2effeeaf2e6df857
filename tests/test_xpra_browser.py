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

import secrets
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from browser import (
    VIEWPORT,
    XPRA_CONNECTED_JS,
    XPRA_XTERM_JS,
    Box,
    Stats,
    chromium,
    differing,
    log_in,
    log_tail,
    looks_like_background,
    looks_like_xpra_xterm,
    page_state,
    screenshot,
    stats,
    tile,
    tile_icon,
    wait_for,
    wait_for_xpra_xterm,
)
from conftest import ARTIFACTS
from PIL import Image
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

pytestmark = pytest.mark.browser

TITLE = "Xpra Desktop"


def background_box(xterm: Box) -> Box:
    """A patch of Xpra's page background, below the floating menu and beside the window."""
    if xterm.x >= 120:
        return Box(10, 300, 100, 200)
    return Box(VIEWPORT["width"] - 110, 300, 100, 200)


def assert_xterm_pixels(shot: Image.Image, box: Box, name: str) -> Stats:
    """The xterm white with text, on Xpra's dark blue page background."""
    term, back = stats(box.crop(shot)), stats(background_box(box).crop(shot))
    where = f"({name}: xterm {box} {term}; background {back}; see ARTIFACTS/xpra-{name}.png)"
    assert looks_like_xpra_xterm(term), f"the xterm region is not white with text {where}"
    assert looks_like_background(back), f"the page background looks wrong {where}"
    assert abs(term.mean[0] - back.mean[0]) > 100, f"xterm and background look alike {where}"
    return term


def type_into_xterm(page: Page, box: Box, text: str) -> None:
    """Click into the xterm (gives it the focus) and type ``text`` and Enter."""
    page.bring_to_front()
    page.mouse.click(box.x + box.w // 2, box.y + box.h // 2)
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def wait_for_file(path: Path, jupyter, page: Page) -> None:
    wait_for(f"{path} to be made by the command typed in the browser", path.exists, jupyter, page)


def dark_pixels(page: Page, box: Box, name: str) -> int:
    """Dark pixels (text) in ``box`` on a new screenshot, ``ARTIFACTS/xpra-<name>.png``."""
    return stats(box.crop(screenshot(page, f"xpra-{name}"))).dark


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
    card = tile(lab, TITLE)
    try:
        card.wait_for(state="visible", timeout=90_000)
    except PlaywrightTimeout:
        raise AssertionError(
            f"no {TITLE!r} tile in the launcher{page_state(lab)}{log_tail(jupyter)}"
        ) from None

    # 2. The tile and its icon, in the DOM and on screen.
    assert TITLE in card.inner_text()
    drawn_icon = tile_icon(lab, TITLE, "xpra", "xpra-launcher")
    icon_responses = [r for r in responses if r[0].endswith("/server-proxy/icon/xpra")]
    assert icon_responses and icon_responses[-1][1] == 200, icon_responses
    assert "svg" in icon_responses[-1][2].get("content-type", ""), icon_responses
    icon_stats = stats(drawn_icon)
    # The card is white; the drawn icon is a dark blue monitor.
    assert icon_stats.white < 0.9 and min(icon_stats.mean) < 230, (
        f"the icon is not visible on the launcher screenshot: {icon_stats}"
    )

    # 3. Click the tile: a new tab, our progress page, then the HTML5 client.
    with context.expect_page(timeout=30_000) as popup_info:
        card.click()
    tab1 = popup_info.value
    box1, shot1 = wait_for_xpra_xterm(tab1, "tab1", jupyter)
    assert tab1.url.rstrip("/").endswith("/xpra"), tab1.url
    xpra_pages = [r for r in responses if urlsplit(r[0]).path == "/xpra/"]
    assert xpra_pages, responses
    _, first_status, first_headers = xpra_pages[0]
    assert first_status == 202 and "x-hpc-proxies-state" in first_headers, (
        f"the tab did not start on the progress page: {xpra_pages}"
    )
    assert any(s == 200 and "x-hpc-proxies-state" not in h for _, s, h in xpra_pages), xpra_pages
    term1 = assert_xterm_pixels(shot1, box1, "tab1")

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
        lambda: dark_pixels(tab1, box1, "tab1-typed") > term1.dark + 200,
        jupyter,
        tab1,
    )

    # 5. A second tab on the same desktop, without taking it from the first.
    tab2 = context.new_page()
    tab2.goto(f"{jupyter.url}/xpra/")
    box2, shot2 = wait_for_xpra_xterm(tab2, "tab2", jupyter)
    assert_xterm_pixels(shot2, box2, "tab2")
    assert (box2.w, box2.h) == (box1.w, box1.h), (box1, box2)
    assert tab2.evaluate(XPRA_XTERM_JS)["wid"] == tab1.evaluate(XPRA_XTERM_JS)["wid"]
    # Same xterm contents in both tabs (the line typed from tab 1 included).
    same = wait_for(
        "both tabs to show the same xterm",
        lambda: (
            differing(
                box1.crop(screenshot(tab1, "xpra-tab1-shared")),
                box2.crop(screenshot(tab2, "xpra-tab2")),
            )
            < 0.02
        ),
        jupyter,
        tab2,
    )
    assert same

    before = dark_pixels(tab1, box1, "tab1-before-tab2-typed")
    typed2 = jupyter.root_dir / f"typed-in-xpra-tab2-{tag}"
    type_into_xterm(tab2, box2, f"touch {typed2}")
    wait_for_file(typed2, jupyter, tab2)
    # Tab 1 is still connected and receives what tab 2 did.
    wait_for(
        "tab 1 to show the command typed in tab 2",
        lambda: dark_pixels(tab1, box1, "tab1-after-tab2-typed") > before + 200,
        jupyter,
        tab1,
    )
    assert tab1.evaluate(XPRA_CONNECTED_JS), f"tab 1 was disconnected{page_state(tab1)}"
    assert tab2.evaluate(XPRA_CONNECTED_JS), f"tab 2 was disconnected{page_state(tab2)}"

    # And tab 1 can still type, after tab 2 joined.
    typed3 = jupyter.root_dir / f"typed-in-xpra-again-{tag}"
    type_into_xterm(tab1, box1, f"touch {typed3}")
    wait_for_file(typed3, jupyter, tab1)
    assert tab1.evaluate(XPRA_CONNECTED_JS) and tab2.evaluate(XPRA_CONNECTED_JS)
    assert_xterm_pixels(screenshot(tab1, "xpra-tab1-final"), box1, "tab1-final")
    assert_xterm_pixels(screenshot(tab2, "xpra-tab2-final"), box2, "tab2-final")

    # The password never travels in a URL (pages, requests, websockets).
    urls = [lab.url, tab1.url, tab2.url, *requested]
    assert not [u for u in urls if secret in u], "the Xpra secret appeared in a URL"
    assert not [u for u in (tab1.url, tab2.url) if "password" in u.lower()], (tab1.url, tab2.url)
    assert not [u for u in requested if "password=" in u.lower()], "a request carried password="


# ---------------------------------------------------------------- a reload
def client_files(responses: list) -> list:
    """The HTML5 client's own files among ``responses`` (not the entry page, whose
    path is ``/xpra/``: our progress page, then Xpra's index.html with the password)."""
    return [
        r
        for r in responses
        if urlsplit(r.url).path.startswith("/xpra/") and urlsplit(r.url).path != "/xpra/"
    ]


def test_a_reload_revalidates_the_client_files_and_downloads_none_again(jupyter):
    """The client's files come compressed and cacheable (``private, no-cache``): a
    reload asks for the entry page again (``no-store``, a new copy of the password,
    never in a URL) and only revalidates each file, which the Jupyter server answers
    304 without a body (Xpra itself never does); the xterm is drawn again (checked on
    the screenshots)."""
    responses: list = []
    requested: list[str] = []
    with chromium("xpra-reload-failure") as context:
        page = context.new_page()
        log_in(page, jupyter)
        page.on("response", lambda response: responses.append(response))
        page.on("request", lambda request: requested.append(request.url))
        page.goto(f"{jupyter.url}/xpra/")
        box, shot = wait_for_xpra_xterm(page, "reload-first", jupyter)
        assert_xterm_pixels(shot, box, "reload-first")
        first = client_files(responses)
        assert len(first) >= 30, [r.url for r in first]
        for response in first:
            assert response.status == 200, (response.url, response.status)
            assert response.headers.get("cache-control") == "private, no-cache", response.url
            assert response.headers.get("last-modified"), response.url
        script = next(r for r in first if r.url.endswith("/js/lib/forge.js"))
        assert script.headers.get("content-encoding") == "gzip"
        assert 100_000 < script.request.sizes()["responseBodySize"] < 400_000  # of 876 kB

        responses.clear()
        page.reload()
        box, shot = wait_for_xpra_xterm(page, "reload-again", jupyter)
        assert_xterm_pixels(shot, box, "reload-again")
        again = client_files(responses)
        assert {r.url for r in again} >= {r.url for r in first if r.url.endswith(".js")}
        # Nothing downloaded again: the page's requests are answered 304; its worker's
        # (Protocol.js and what it imports) Chrome reports as 200, from its cache.
        downloaded = [(r.url, r.request.sizes()["responseBodySize"]) for r in again]
        assert not [(url, size) for url, size in downloaded if size], downloaded
        assert sum(r.status == 304 for r in again) >= 30, [(r.url, r.status) for r in again]
        entry = [r for r in responses if urlsplit(r.url).path == "/xpra/"]
        assert [r.status for r in entry] == [200], entry
        assert entry[0].headers.get("cache-control") == "no-store"
        assert page.evaluate("() => sessionStorage.getItem('password')") is None

    secret = (jupyter.runtime_dir("xpra") / "app" / "secret").read_text().strip()
    assert not [u for u in requested if secret in u or "password" in u.lower()]
