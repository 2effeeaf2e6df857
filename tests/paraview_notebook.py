"""examples/paraview.ipynb as a user runs it in JupyterLab: Run All Cells on the
ParaView kernel, pvserver's picture in the PNG cell, then a drag in the interactive view
turns it. Used wherever JupyterLab is: a plain ``jupyter lab`` with each pvserver engine
(``test_paraview_notebook_engines``) and through the hub (``tests/deployment``).

``lab`` is anything with ``base`` (JupyterLab's URL without the trailing slash),
``path``, ``name`` (the screenshots' prefix) and ``log()``, as ``tiles.Lab``.
"""

from __future__ import annotations

import base64
import io
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from browser import Box, differing, screenshot, wait_for
from PIL import Image
from playwright.sync_api import BrowserContext
from test_paraview import sphere_visible

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "paraview.ipynb"


@dataclass
class NotebookRun:
    seconds: float  # from "Run All Cells" to pvserver's picture in the PNG cell
    png: bytes  # that picture, as the cell shows it


def copy_notebook(home: Path, give: Callable[[Path], None]) -> str:
    """examples/paraview.ipynb in the user's home; its name there."""
    target = home / EXAMPLE.name
    shutil.copy(EXAMPLE, target)
    give(target)
    return target.name


VIEW_FRAME_JS = """() => {
  for (const f of document.querySelectorAll('.jp-OutputArea-output iframe')) {
    const r = f.getBoundingClientRect();
    if (/paraview\\/view\\//.test(f.src) && r.width > 100 && r.height > 100)
      return {src: f.getAttribute('src'), x: r.left, y: r.top, w: r.width, h: r.height};
  }
  return null;
}"""
PNG_OUTPUT_JS = """() => {
  const img = document.querySelector('.jp-OutputArea-output img');
  return !!(img && img.complete && img.naturalWidth > 100);
}"""
PNG_SOURCE_JS = "() => document.querySelector('.jp-OutputArea-output img').src"


def run_and_turn(lab, context: BrowserContext, notebook: str, timeout: float) -> NotebookRun:
    """Open the example notebook in JupyterLab, run all its cells on the ParaView
    kernel, and drag in the interactive view: the picture turns."""
    page = context.new_page()
    page.goto(f"{lab.base}/lab/tree/{notebook}")
    wait_for(
        "the ParaView kernel to be idle",
        lambda: "ParaView (pvpython) | Idle" in page.inner_text(".jp-StatusBar-Widget"),
        lab,
        page,
        timeout,
        interval=0.25,
    )
    page.click("li.lm-MenuBar-item:has-text('Run')")
    started = time.monotonic()
    page.click("li.lm-Menu-item:has-text('Run All Cells')")
    wait_for("pvserver's picture", lambda: page.evaluate(PNG_OUTPUT_JS), lab, page, timeout)
    seconds = time.monotonic() - started
    source = page.evaluate(PNG_SOURCE_JS)
    assert source.startswith("data:image/png;base64,"), source[:80]
    png = base64.b64decode(source.split(",", 1)[1])
    frame = wait_for("the interactive view", lambda: page.evaluate(VIEW_FRAME_JS), lab, page, 60)
    assert frame["src"].startswith(f"{lab.path}/paraview/view/"), frame
    page.evaluate("() => document.querySelector('.jp-OutputArea-output iframe').scrollIntoView()")
    frame = page.evaluate(VIEW_FRAME_JS)
    view = Box.of(frame, inset=4)
    inner = page.frame_locator(".jp-OutputArea-output iframe").first

    def frames() -> int:
        return inner.locator("body").evaluate("() => (window.paraviewFrames || []).length")

    wait_for("the view's first frame", lambda: frames() >= 1, lab, page, 60)
    page.wait_for_timeout(500)  # the frame's image is decoded and drawn
    before = view.crop(screenshot(page, f"{lab.name}-paraview-before"))
    ok, why = sphere_visible(png_bytes(before))
    assert ok, why
    count = frames()
    cx, cy = view.x + view.w // 2, view.y + view.h // 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    for step in range(1, 16):
        page.mouse.move(cx + step * 10, cy + step * 3)
        page.wait_for_timeout(30)
    page.mouse.up()
    wait_for("a new frame after the drag", lambda: frames() > count, lab, page, 60)
    page.wait_for_timeout(800)
    after = view.crop(screenshot(page, f"{lab.name}-paraview-after"))
    # The sphere's colours (one per rank) hardly change as it turns: what shows the turn
    # is the orientation axes in the view's lower left corner, which turn with it.
    w, h = before.size
    corner = (0, int(h * 0.7), int(w * 0.2), h)
    changed = differing(before.crop(corner), after.crop(corner))
    assert changed > 0.01, f"only {changed:.2%} of the orientation axes' pixels changed"
    ok, why = sphere_visible(png_bytes(after))
    assert ok, why
    return NotebookRun(seconds, png)


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
