"""Make the user docs' screenshots from the browser tests.

Run it from the repository's root, in the venv that ``./bootstrap.sh`` made::

    .venv/bin/python docs/screenshots.py

It runs the few browser tests (Debian's chromium through playwright) that take the
pictures, with ``HPC_PROXIES_ARTIFACTS`` set to a fresh temporary directory, then picks
one picture per subject, shrinks it to at most 960 px wide, and saves it as an optimized
palette PNG in ``docs/_static/screenshots/``. It prints each file's size.

It exits non-zero, naming the reason, when a test fails, when a test leaves out a
picture it should have taken, or when a picture does not fit in 150 KB.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "_static" / "screenshots"

# The smallest set of tests that take every picture below.
TESTS = [
    "tests/test_launcher_category.py::test_the_tiles_have_a_row_of_their_own[default]",
    "tests/test_rstudio_browser.py::test_tile_opens_rstudio_and_its_redirects_stay_behind_jupyter",
    "tests/test_xpra_browser.py::test_xpra_desktop_in_chromium",
    "tests/test_vnc_browser.py::test_the_xterm_appears_by_itself",
    "tests/test_tensorboard_browser.py::"
    "test_tile_draws_the_charts_and_the_logdir_is_switched_from_the_browser",
    "tests/test_paraview.py::test_interactive_view_in_the_browser",
    "tests/test_paraview_mpi.py::test_two_ranks_each_render_their_partition",
    "tests/test_paraview_slurm_page.py::"
    "test_the_status_page_follows_pvservers_job_from_the_queue_to_stop",
    "tests/test_running_panel_browser.py::"
    "test_a_second_desktop_from_the_launcher_draws_its_own_xterm",
    "tests/test_running_panel_browser.py::"
    "test_show_log_displays_the_apps_lines_and_a_failed_app_its_problem",
]


class Picture(NamedTuple):
    source: str  # the test artifact it is made from
    dither: bool = False  # for shaded renderings; UI text stays crisper without


# docs/_static/screenshots/<name> and what it is made from.
PICTURES = {
    # Every tile (the rserver stand-in makes RStudio's) in the "HPC apps" row.
    "launcher.png": Picture("launcher-category-hpc.png"),
    # Before anything is typed: the typed commands carry long pytest paths.
    "xpra.png": Picture("xpra-tab1.png"),
    "vnc.png": Picture("vnc-by-itself-untouched.png"),
    "tensorboard.png": Picture("tensorboard-tile-accuracy.png"),
    "rstudio.png": Picture("rstudio-page.png"),
    # After a drag has turned it: the sphere is coloured by its normals' X.
    "paraview-view.png": Picture("paraview-view-after.png", dither=True),
    "paraview-status.png": Picture("paraview-status.png"),
    # pvserver on 2 MPI ranks: a sphere coloured by ProcessId, one colour per rank.
    "paraview-mpi-2-ranks.png": Picture("paraview-mpi-2-ranks.png", dither=True),
    # pvserver as Slurm job of its own, running: the status page's "Slurm job" rows.
    "paraview-slurm-running.png": Picture("paraview-slurm-running.png"),
    # JupyterLab's Running panel with two desktops, then one's log opened from it.
    "running-panel.png": Picture("running-panel-two.png"),
    "running-log.png": Picture("running-panel-log.png"),
}

MAX_WIDTH = 960
MAX_BYTES = 150 * 1024
# Fewer colours only when a picture does not fit in MAX_BYTES with more.
PALETTES = (128, 96, 64)


def run_tests(artifacts: Path) -> None:
    env = dict(os.environ, HPC_PROXIES_ARTIFACTS=str(artifacts))
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rs", *TESTS]
    print("$", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
    if result.returncode != 0:
        sys.exit(f"the browser tests failed (pytest exited {result.returncode})")


def shrink(source: Path) -> Image.Image:
    image = Image.open(source).convert("RGB")
    if image.width > MAX_WIDTH:
        height = round(image.height * MAX_WIDTH / image.width)
        image = image.resize((MAX_WIDTH, height), Image.Resampling.LANCZOS)
    return image


def to_palette(image: Image.Image, colors: int, dither: bool) -> Image.Image:
    if not dither:
        return image.quantize(colors=colors)  # Pillow does not dither here
    palette = image.quantize(colors=colors)
    return image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)


def save_small(image: Image.Image, target: Path, dither: bool) -> int:
    """Save ``image`` as a palette PNG with as many colours as fit; return its size."""
    size = 0
    for colors in PALETTES:
        to_palette(image, colors, dither).save(target, optimize=True)
        size = target.stat().st_size
        if size <= MAX_BYTES:
            break
    return size


def main() -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hpc-proxies-screenshots-") as tmp:
        artifacts = Path(tmp)
        run_tests(artifacts)
        missing = [p.source for p in PICTURES.values() if not (artifacts / p.source).is_file()]
        if missing:
            wrote = ", ".join(sorted(p.name for p in artifacts.glob("*.png"))) or "nothing"
            sys.exit(f"missing screenshot(s): {', '.join(missing)} (the tests wrote: {wrote})")
        OUT.mkdir(parents=True, exist_ok=True)
        too_big: list[str] = []
        for name, (src, dither) in PICTURES.items():
            image = shrink(artifacts / src)
            size = save_small(image, OUT / name, dither)
            width, height = image.size
            shown = OUT.relative_to(ROOT) / name
            print(f"{shown}: {size / 1024:.1f} KB, {width}x{height} px (from {src})")
            if size > MAX_BYTES:
                too_big.append(name)
    if too_big:
        sys.exit(f"over {MAX_BYTES // 1024} KB: {', '.join(too_big)}")
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
