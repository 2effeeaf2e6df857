"""In Debian's chromium: JupyterLab's "RStudio" tile opens RStudio (the stand-in rserver:
rstudio-server cannot be installed here), and a redirect that rserver aims at another
host and port brings the browser back through Jupyter.

Screenshots: ``ARTIFACTS/rstudio-<step>.png`` (``rstudio-failure-<n>.png`` on failure).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from browser import chromium, rgb, screenshot, tile, tile_icon
from conftest import jupyter_with_site
from test_rstudio_integration import RSERVER

pytestmark = pytest.mark.browser


def test_tile_opens_rstudio_and_its_redirects_stay_behind_jupyter(tmp_path):
    toml = f'[apps.rstudio]\nexecutable = "{RSERVER}"\n'
    with jupyter_with_site(tmp_path, toml) as server, chromium("rstudio-failure") as context:
        lab = context.new_page()
        lab.goto(f"{server.url}/lab?token={server.token}")
        card = tile(lab, "RStudio")
        card.wait_for(state="visible", timeout=90_000)
        pixels = rgb(tile_icon(lab, "RStudio", "rstudio", "rstudio-launcher"))
        blue = sum(1 for r, g, b in pixels if b > r + 60 and b > 150)  # #4a8bc2
        assert blue > 0.2 * len(pixels), f"the blue R icon is not drawn: {blue}/{len(pixels)}"

        with context.expect_page(timeout=30_000) as new_tab:
            card.click()
        tab = new_tab.value
        tab.wait_for_selector("#redirect", timeout=60_000)  # past the progress page
        assert tab.title() == "RStudio" and urlsplit(tab.url).path == "/rstudio/"
        screenshot(tab, "rstudio-page")

        # rserver answers this link with a redirect to rserver-elsewhere.invalid:8787.
        tab.click("#redirect")
        tab.wait_for_selector("#landed", timeout=30_000)
        url = urlsplit(tab.url)
        assert url.netloc == f"127.0.0.1:{server.port}", tab.url
        assert url.path == "/rstudio/landed" and url.query == "from=redirect", tab.url
        screenshot(tab, "rstudio-landed")
