"""Sphinx configuration: MyST Markdown pages, built with `sphinx-build -W` by the test run."""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS))

import generate  # noqa: E402

project = "hpc-proxies"
author = "the hpc-proxies developers"
copyright = "2026, the hpc-proxies developers"

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_heading_anchors = 3  # links to a page's sections: [text](page.md#a-heading)
myst_enable_extensions = ["colon_fence"]

html_theme = "pydata_sphinx_theme"
html_title = "hpc-proxies"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "header_links_before_dropdown": 7,
    "show_toc_level": 2,
}


def check_generated_pages(app) -> None:
    """A page generated from the code must match the code (a warning fails `-W`)."""
    from sphinx.util import logging

    for page in generate.stale_pages():
        logging.getLogger(__name__).warning("docs/%s is stale: run `python docs/generate.py`", page)


def setup(app) -> dict:
    app.connect("builder-inited", check_generated_pages)
    return {"parallel_read_safe": True}
