"""Each tile as the user sees it in chromium, wherever JupyterLab is: through the hub
(``/user/<name>/``) or a plain ``jupyter lab``. Each check clicks the tile (or runs the
notebook), waits for the first picture the user would recognise, checks its pixels and
returns the seconds from the click to it.

The checks are those of the apps' own browser tests (``test_*_browser.py``), reused:
Xpra's xterm on the HTML5 client's canvas, VNC's xterm where the session has it on
noVNC's canvas, TensorBoard's chart lines, the RStudio stand-in's page, and ParaView's
view (rendered by pvserver) turning under a drag.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import paraview_notebook
from browser import Box, screenshot, stats, tile, wait_for, wait_for_xpra_xterm
from playwright.sync_api import BrowserContext, Page
from processes import find_process, launcher_runtime_dir, launchers
from tb_events import write_experiments
from test_tensorboard_browser import Browser as TensorBoardBrowser
from test_tensorboard_browser import evaluate
from test_vnc_browser import (
    CANVAS_JS,
    CONNECTED_JS,
    NOVNC_OVERLAYS_JS,
    Session,
    looks_like_xterm,
    on_page,
    x_env,
    xterm_window,
)

from hpc_proxies import procs

CHECKOUT = Path(__file__).resolve().parents[2]
PARAVIEW_NOTEBOOK = CHECKOUT / "examples" / "paraview.ipynb"
TIMEOUT = 120  # an app's first start in a job on a loaded 2-core machine
WAKE_AFTER = 3  # openbox may leave the xterm unmapped until its next X event


@dataclass
class Lab:
    """A user's JupyterLab as the browser reaches it. ``base`` is its URL without the
    trailing slash (``http://127.0.0.1:8000/user/ada``); ``processes`` lists the
    processes of the user's server; ``log`` is what a failure shows."""

    base: str
    name: str  # the screenshots' prefix
    processes: Callable[[], set[int]]
    log: Callable[[], str]

    @property
    def path(self) -> str:
        return urlsplit(self.base).path

    def launcher(self, app: str) -> int:
        found = launchers(self.processes())
        assert app in found, f"no launcher of {app} among the user's processes"
        return found[app]


def open_tile(context: BrowserContext, page: Page, title: str) -> tuple[Page, float]:
    """Click the tile; the new tab and when it was clicked."""
    card = tile(page, title)
    card.wait_for(state="visible", timeout=TIMEOUT * 1000)
    with context.expect_page(timeout=30_000) as new_tab:
        clicked = time.monotonic()
        card.click()
    return new_tab.value, clicked


def xpra(lab: Lab, context: BrowserContext, page: Page) -> float:
    tab, clicked = open_tile(context, page, "Xpra Desktop")
    wait_for_xpra_xterm(tab, f"{lab.name}-tile", lab)
    seconds = time.monotonic() - clicked
    assert urlsplit(tab.url).path.startswith(f"{lab.path}/xpra/"), tab.url
    return seconds


def vnc_session(lab: Lab) -> Session | None:
    """The VNC desktop's X display and processes, once its xterm runs."""
    try:
        launcher = lab.launcher("vnc")
        pids = {launcher} | procs.descendants(launcher)
        xterm = find_process(pids, "xterm")
        rfb = launcher_runtime_dir(launcher) / "app/rfb.sock"
        return Session(x_env(xterm), find_process(pids, "Xtigervnc"), xterm, rfb)
    except (AssertionError, OSError, KeyError):
        return None


def vnc(lab: Lab, context: BrowserContext, page: Page) -> float:
    tab, clicked = open_tile(context, page, "VNC Desktop")
    shot_name = f"{lab.name}-vnc"
    # (evaluate: None while our progress page reloads into noVNC's)
    wait_for("noVNC to connect", lambda: evaluate(tab, CONNECTED_JS), lab, tab, TIMEOUT)
    woken = [0]

    def drawn() -> bool:
        session = vnc_session(lab)
        win = xterm_window(session) if session else None
        if win is None:
            if time.monotonic() - clicked > WAKE_AFTER * (woken[0] + 1):
                c = evaluate(tab, CANVAS_JS)
                if c is None:
                    return False
                tab.mouse.click(c["x"] + c["w"] - 20, c["y"] + c["h"] - 20)
                woken[0] += 1
            return False
        if evaluate(tab, CANVAS_JS) is None:
            return False
        box = on_page(tab, win)
        overlays = [Box.of(o) for o in evaluate(tab, NOVNC_OVERLAYS_JS) or []]
        shot = screenshot(tab, shot_name)
        if any(o.overlaps(box) for o in overlays):
            return False
        return looks_like_xterm(stats(box.crop(shot)))

    wait_for("the VNC xterm to be drawn", drawn, lab, tab, TIMEOUT, interval=0.2)
    seconds = time.monotonic() - clicked
    assert urlsplit(tab.url).path.startswith(f"{lab.path}/vnc/"), tab.url
    return seconds


def tensorboard(lab: Lab, context: BrowserContext, page: Page, home: Path) -> float:
    """TensorBoard on the event files of ``home`` (the server's root directory), which
    must have been written (``write_runs``) before TensorBoard starts."""
    tab, clicked = open_tile(context, page, "TensorBoard")
    b = TensorBoardBrowser(lab, context, page, prefix=f"{lab.name}-tensorboard")
    loss = b.chart(tab, "loss", "loss")
    seconds = time.monotonic() - clicked
    assert loss.falls, f"the loss line does not fall: {loss}"
    assert b.chart(tab, "accuracy", "accuracy").rises
    assert urlsplit(tab.url).path == f"{lab.path}/tensorboard/", tab.url
    return seconds


def write_runs(home: Path, give: Callable[[Path], None]) -> None:
    """Real event files in ``home/experiments``, the user's own."""
    write_experiments(home)
    give(home / "experiments")


def rstudio(lab: Lab, context: BrowserContext, page: Page) -> float:
    tab, clicked = open_tile(context, page, "RStudio")
    tab.wait_for_selector("#redirect", timeout=TIMEOUT * 1000)  # past the progress page
    seconds = time.monotonic() - clicked
    screenshot(tab, f"{lab.name}-rstudio")
    assert tab.title() == "RStudio" and urlsplit(tab.url).path == f"{lab.path}/rstudio/"
    # rserver's redirect to another host comes back through the same JupyterLab URL.
    tab.click("#redirect")
    tab.wait_for_selector("#landed", timeout=30_000)
    assert urlsplit(tab.url).path == f"{lab.path}/rstudio/landed", tab.url
    return seconds


def copy_notebook(home: Path, give: Callable[[Path], None]) -> str:
    """examples/paraview.ipynb in the user's home; its name there."""
    return paraview_notebook.copy_notebook(home, give)


def paraview(lab: Lab, context: BrowserContext, notebook: str) -> float:
    """The example notebook run in JupyterLab and its view turned under a drag
    (:func:`paraview_notebook.run_and_turn`); seconds from "Run All" to the picture."""
    return paraview_notebook.run_and_turn(lab, context, notebook, TIMEOUT).seconds
