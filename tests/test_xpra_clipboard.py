"""End to end, in Debian's chromium: the clipboard works both ways through ``/xpra/``.

One real Jupyter server, one real Xpra session, one real browser, copying and pasting
the way a user does:

1. **session → browser:** a program in the X session (``xclip``, run with the xterm's
   ``DISPLAY`` and ``XAUTHORITY``) takes the CLIPBOARD selection. Xpra's server sends
   it to the HTML5 client (a ``clipboard-token`` with the data: the client says
   ``clipboard.greedy``), which keeps it (``client.clipboard_buffer``) and writes it to
   the browser's clipboard (``navigator.clipboard.writeText``). The test reads it back
   with ``navigator.clipboard.readText()`` and pastes it with Ctrl+V into a text box in
   another tab.
2. **browser → session:** text is copied in another tab (select, Ctrl+C); back in the
   desktop the user presses Ctrl+V in the xterm (2a) or clicks into it (2b). The
   client reads the browser's clipboard on its key and mouse events
   (``_poll_clipboard``) and sends a ``clipboard-token`` with the text; Xpra's server
   takes the session's CLIPBOARD (the xclip that held it exits), and ``xclip -o``
   there must get the text. From then on Xpra answers each paste in the session from
   the browser's *current* clipboard (``clipboard-request``, answered with
   ``navigator.clipboard.read``), so 2b first lets the session copy again.

Chromium lets a page use ``navigator.clipboard`` only with the ``clipboard-read`` and
``clipboard-write`` permissions, granted here to the Jupyter origin as a user would.

The texts are ASCII (with a newline and shell/HTML metacharacters): Xpra 3.1's HTML5
client garbles anything else. Session → browser, it hands the UTF-8 *bytes* to
``writeText`` as Latin-1 characters (``äöü`` arrives as ``Ã¤Ã¶Ã¼``); browser → session,
its answer to ``clipboard-request`` sends the text without encoding it to UTF-8, so
the session gets Latin-1 bytes labelled ``UTF8_STRING`` (``éß`` arrives as the bytes ``e9 df``).

Screenshots go to ``ARTIFACTS/xpra-clipboard-*.png`` (``…-failure-*.png`` on failure).
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable

import pytest
from browser import (
    XPRA_CONNECTED_JS,
    Box,
    chromium,
    log_in,
    log_tail,
    page_state,
    screenshot,
    wait_for_xpra_xterm,
)
from conftest import ARTIFACTS
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page
from processes import environ_of, find_process
from test_xpra_integration import session_pids
from waiting import until

pytestmark = pytest.mark.browser

PREFIX = "clipboard"  # screenshots: ARTIFACTS/xpra-clipboard-*.png
CLIPBOARD_TIMEOUT = 20  # seconds; a transfer takes well under one
TEXTBOX_PATH = "/xpra-clipboard-test-textbox"  # served by the test (page.route), not Jupyter
CLIENT_CLIPBOARD_JS = """() => ({
  enabled: !!(window.client && window.client.clipboard_enabled),
  buffer: window.client ? window.client.clipboard_buffer : null,
  pending: window.client ? window.client.clipboard_pending : null,
  server_buffers: window.client ? JSON.stringify(window.client.clipboard_server_buffers) : null,
})"""
READ_BROWSER_CLIPBOARD_JS = """() => navigator.clipboard.readText().then(
    text => ({ok: true, text}), err => ({ok: false, text: String(err)}))"""
# A page of the same origin (so the same permissions apply) with a text box.
TEXTBOX_HTML = (
    "<!doctype html><title>clipboard</title><textarea id='box' rows=4 cols=60></textarea>"
)


# ---------------------------------------------------------------- the X session's side
def session_display(jupyter) -> dict[str, str]:
    """``DISPLAY`` and ``XAUTHORITY`` of the session, from the xterm's environment."""
    xterm = find_process(session_pids(jupyter), "xterm")
    environ = environ_of(xterm)
    return {
        "PATH": "/usr/bin:/bin",
        "DISPLAY": environ["DISPLAY"],
        "XAUTHORITY": environ["XAUTHORITY"],
    }


def xclip_owner(env: dict[str, str], text: str) -> subprocess.Popen:
    """``xclip`` taking the session's CLIPBOARD with ``text``, as a program's "Copy" does.

    In the foreground (``-quiet``), so the test can stop it: it serves the selection
    until another program (here Xpra's server) takes it, then exits.
    """
    proc = subprocess.Popen(
        ["xclip", "-quiet", "-selection", "clipboard", "-in"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(text)
    proc.stdin.close()
    return proc


def session_clipboard(env: dict[str, str]) -> tuple[int | None, str, str]:
    """What a program in the session gets when it pastes the CLIPBOARD selection."""
    try:
        out = subprocess.run(
            ["xclip", "-out", "-selection", "clipboard"],
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired:
        return None, "", "xclip -out got no answer within 10 s"
    return out.returncode, out.stdout, out.stderr.strip()


# ---------------------------------------------------------------- the browser's side
def client_clipboard(page: Page) -> dict:
    return page.evaluate(CLIENT_CLIPBOARD_JS)


def browser_clipboard(page: Page) -> dict:
    return page.evaluate(READ_BROWSER_CLIPBOARD_JS)


def textbox_page(context, jupyter) -> Page:
    """Another tab of the Jupyter origin (so the same permissions apply) with a text box."""
    page = context.new_page()
    url = jupyter.url + TEXTBOX_PATH
    page.route(url, lambda route: route.fulfill(content_type="text/html", body=TEXTBOX_HTML))
    page.goto(url)
    return page


def copy_in_browser(page: Page, text: str) -> None:
    """What a user does to copy in the browser: select the text, press Ctrl+C."""
    page.bring_to_front()
    box = page.locator("#box")
    box.fill(text)
    box.select_text()
    page.keyboard.press("Control+C")


def click_into_xterm(page: Page, box: Box) -> None:
    page.bring_to_front()
    page.mouse.click(box.x + box.w // 2, box.y + box.h // 2)


# ---------------------------------------------------------------- waiting, diagnostics
class Watch:
    """Waits on both sides of the clipboard; failures carry the state of both."""

    def __init__(self, jupyter, page: Page, env: dict[str, str], console: list[str]):
        self.jupyter, self.page, self.env, self.console = jupyter, page, env, console

    def state(self) -> str:
        try:
            client = client_clipboard(self.page)
            browser = browser_clipboard(self.page)
        except PlaywrightError as err:
            client = browser = f"(cannot evaluate: {err})"
        console = "\n".join(self.console[-40:])
        return (
            f"\n--- clipboard state ---\nHTML5 client: {client}\n"
            f"navigator.clipboard.readText(): {browser}\n"
            f"session (xclip -out: returncode, stdout, stderr): {session_clipboard(self.env)}"
            f"{page_state(self.page)}\n--- browser console (tail) ---\n{console}"
            f"{log_tail(self.jupyter)}"
        )

    def until_equal(self, what: str, expected: object, actual: Callable[[], object]) -> None:
        """Until ``actual()`` is ``expected``; a failure shows the last value and both sides."""
        seen: list[object] = []

        def equal() -> bool:
            seen[:] = [actual()]
            return seen[0] == expected

        try:
            until(equal, CLIPBOARD_TIMEOUT, f"timed out waiting for {what}", interval=0.1)
        except AssertionError as err:
            last = f"{seen[0]!r} (expected {expected!r})"
            raise AssertionError(f"{err}; last: {last}{self.state()}") from None

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            raise AssertionError(f"{message}{self.state()}")


# ---------------------------------------------------------------- the test
def test_clipboard_both_ways(jupyter):
    for stale in ARTIFACTS.glob(f"xpra-{PREFIX}-*.png"):
        stale.unlink()
    console: list[str] = []
    owners: list[subprocess.Popen] = []

    with chromium(f"xpra-{PREFIX}-failure") as context:
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=jupyter.url)
        context.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        try:
            run_scenario(jupyter, context, console, owners)
        finally:
            for proc in owners:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(10)


def run_scenario(jupyter, context, console: list[str], owners: list[subprocess.Popen]) -> None:
    # Log in with the token (it sets Jupyter's login cookie), then open the desktop's
    # URL: the story is the clipboard, not JupyterLab or its tile (test_xpra_browser's).
    tab = context.new_page()
    log_in(tab, jupyter)
    tab.goto(f"{jupyter.url}/xpra/")
    xterm, _ = wait_for_xpra_xterm(tab, f"{PREFIX}-tab", jupyter)
    # More logging only (browser console and Xpra's log), for the failure messages.
    tab.evaluate("() => window.client.debug_categories.push('clipboard')")
    env = session_display(jupyter)
    watch = Watch(jupyter, tab, env, console)
    watch.check(client_clipboard(tab)["enabled"], "the HTML5 client has the clipboard off")
    tag = secrets.token_hex(6)

    # 1. session -> browser: a program in the session copies; the browser has it.
    from_session = f"copied in the session {tag}\n<&'\"> $HOME"
    owners.append(xclip_owner(env, from_session))
    held = session_clipboard(env)
    watch.check(held[1] == from_session, f"xclip does not own the session's CLIPBOARD: {held}")
    watch.until_equal(
        "the HTML5 client to receive the session's clipboard",
        from_session,
        lambda: client_clipboard(tab)["buffer"],
    )
    watch.until_equal(
        "the browser's clipboard to hold the session's text",
        {"ok": True, "text": from_session},
        lambda: browser_clipboard(tab),
    )
    # ... and Ctrl+V in another tab pastes it there.
    other = textbox_page(context, jupyter)
    other.locator("#box").click()
    other.keyboard.press("Control+V")
    watch.until_equal(
        "Ctrl+V in another tab to paste the session's text",
        from_session,
        lambda: other.locator("#box").input_value(),
    )

    # 2a. browser -> session with the keyboard: the xterm has the focus; the user
    # copies in another tab, comes back and presses Ctrl+V.
    click_into_xterm(tab, xterm)
    from_browser = f"copied in the browser {tag}\n<&'\"> $PATH"
    copy_in_browser(other, from_browser)
    watch.until_equal(
        "Ctrl+C in another tab to fill the browser's clipboard",
        {"ok": True, "text": from_browser},
        lambda: browser_clipboard(other),
    )
    held = session_clipboard(env)
    watch.check(
        held[1] == from_session, f"the session's CLIPBOARD changed before the paste: {held}"
    )
    tab.bring_to_front()
    tab.keyboard.press("Control+V")
    watch.until_equal(
        "Ctrl+V in the xterm to give the session the text copied in the browser",
        from_browser,
        lambda: session_clipboard(env)[1],
    )
    # Xpra's server took the CLIPBOARD from xclip, which then exits by itself.
    try:
        owners[0].wait(10)
    except subprocess.TimeoutExpired:
        watch.check(False, "xclip still owns the session's CLIPBOARD after the paste")

    # 2b. browser -> session with the mouse. Xpra's server answers every paste in the
    # session from the browser's clipboard now, so first a program in the session
    # copies again (and the browser gets that), then the user copies in another tab and
    # clicks into the xterm (to paste with the mouse there, say): the click brings it.
    from_session_again = f"copied in the session again {tag}"
    owners.append(xclip_owner(env, from_session_again))
    watch.until_equal(
        "the browser's clipboard to hold the session's second text",
        {"ok": True, "text": from_session_again},
        lambda: browser_clipboard(tab),
    )
    from_browser_again = f"copied in the browser again {tag}"
    copy_in_browser(other, from_browser_again)
    watch.until_equal(
        "Ctrl+C in another tab to fill the browser's clipboard (again)",
        {"ok": True, "text": from_browser_again},
        lambda: browser_clipboard(other),
    )
    held = session_clipboard(env)
    watch.check(
        held[1] == from_session_again, f"the session's CLIPBOARD changed before the click: {held}"
    )
    click_into_xterm(tab, xterm)
    watch.until_equal(
        "a click into the xterm to give the session the text copied in the browser",
        from_browser_again,
        lambda: session_clipboard(env)[1],
    )
    watch.check(tab.evaluate(XPRA_CONNECTED_JS), "the HTML5 client disconnected")
    screenshot(tab, f"xpra-{PREFIX}-done")
