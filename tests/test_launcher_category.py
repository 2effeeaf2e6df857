"""hpc-proxies' tiles in a row of their own in JupyterLab's launcher: the category "HPC
apps" by default, another name where the site gives one (``[defaults] category``, or
``[systems.<name>.defaults]`` for one system). Checked in chromium, as a user sees the
launcher, with all five tiles (RStudio's stand-in ``rserver`` makes the fifth)."""

from __future__ import annotations

import io

import pytest
from browser import chromium, rgb, screenshot
from conftest import jupyter_with_site
from PIL import Image
from test_cli import run as run_cli
from test_rstudio_integration import RSERVER
from waiting import until

pytestmark = pytest.mark.browser

TITLES = ("Xpra Desktop", "VNC Desktop", "ParaView", "TensorBoard", "RStudio")
#: The apps a user may run several instances of: "New … instance" items of their own.
SEVERAL = ("Xpra Desktop", "VNC Desktop", "TensorBoard")

SECTIONS_JS = """() => Object.fromEntries([...document.querySelectorAll('.jp-Launcher-section')]
  .map(s => [s.querySelector('.jp-Launcher-sectionTitle')?.textContent.trim(),
             [...s.querySelectorAll('.jp-LauncherCard-label')].map(l => l.textContent.trim())]))"""
#: Every card of ours: the tiles, and the "New … instance" items of the apps that allow
#: several (Xpra, VNC, TensorBoard).
OURS_JS = """() => [...document.querySelectorAll('.jp-LauncherCard')].filter(c =>
  / \\[↗\\]$|^New .* instance$/.test(
    c.querySelector('.jp-LauncherCard-label')?.textContent.trim() || ''))"""
ICON_BOXES_JS = (
    "() => (" + OURS_JS + ")().map(c => {"
    " const r = c.querySelector('.jp-LauncherCard-icon').getBoundingClientRect();"
    " return [r.x, r.y, r.width, r.height]; })"
)


def drawn(shot, box) -> float:
    """The share of an icon box's pixels that are not the card's white or grey."""
    x, y, w, h = (round(v) for v in box)
    pixels = rgb(shot.crop((x, y, x + w, y + h)))
    return sum(1 for r, g, b in pixels if max(r, g, b) - min(r, g, b) > 40) / max(1, len(pixels))


def launcher_sections(server, name: str) -> dict[str, list[str]]:
    """The launcher's sections, each with its cards' labels, once every card of ours
    shows with its icon drawn (JupyterLab draws a kernelIconUrl only in the kernel
    categories; the labextension's style sheet draws ours elsewhere)."""
    count = len(TITLES) + len(SEVERAL)
    with chromium(f"{name}-failure", {"width": 1280, "height": 1000}) as context:
        page = context.new_page()
        page.goto(f"{server.url}/lab?token={server.token}")
        page.wait_for_function(f"() => ({OURS_JS})().length >= {count}", timeout=90_000)
        shares: list[float] = []

        def icons_drawn() -> bool:
            nonlocal shares
            shot = Image.open(io.BytesIO(page.screenshot()))
            shares = [drawn(shot, box) for box in page.evaluate(ICON_BOXES_JS)]
            return len(shares) >= count and min(shares) > 0.05

        until(icons_drawn, 30, "every card of ours to have its icon drawn", interval=0.5)
        sections = page.evaluate(SECTIONS_JS)
        screenshot(page, name)
    return sections


def ours(labels: list[str]) -> list[str]:
    """The cards of hpc-proxies among ``labels``: the tiles and the "New … instance" items."""
    names = {f"{t} [↗]" for t in TITLES} | {f"New {t} instance" for t in SEVERAL}
    return sorted(label for label in labels if label in names)


@pytest.mark.parametrize(
    "site, category",
    [
        ("", "HPC apps"),
        ('[defaults]\ncategory = "JURECA apps"\n', "JURECA apps"),
    ],
    ids=["default", "renamed"],
)
def test_the_tiles_have_a_row_of_their_own(tmp_path, site, category):
    toml = site + f'[apps.rstudio]\nexecutable = "{RSERVER}"\n'
    with jupyter_with_site(tmp_path, toml) as server:
        sections = launcher_sections(server, f"launcher-category-{category.split()[0].lower()}")
    assert category in sections, sections
    assert len(ours(sections[category])) == len(TITLES) + len(SEVERAL), sections[category]
    notebooks = sections.get("Notebook", [])
    assert not ours(notebooks), f"cards of ours left in the Notebook row: {notebooks}"
    assert "Python 3 (ipykernel)" in notebooks, sections


def test_example_config_shows_the_category(tmp_path):
    done = run_cli("example-config")
    assert '# category = "JURECA apps"' in done.stdout, done.stdout
    site = tmp_path / "site.toml"
    site.write_text(
        '[defaults]\ncategory = "JURECA apps"\n[systems.x]\nmatch = ["x*"]\n'
        '[systems.x.defaults]\ncategory = "X apps"\n'
    )
    assert run_cli("check", str(site)).returncode == 0
