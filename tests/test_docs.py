"""The README is the front door and the docs are the reference: guard both.

Once a script pasted one block into the README 43,279 times (81 MB, shipped in every
wheel's METADATA). These checks fail on that, on a README that lost its head or its two
commands, on a broken link from the README, on a generated page that no longer matches
the code, and on screenshots too large for a docs page. The docs build itself
(`sphinx-build -W`) runs in `./bootstrap.sh test`.
"""

from __future__ import annotations

import re
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MAX_TEXT = 64 * 1024
MAX_README_LINES = 300
FIRST_SCREEN_LINES = 50
MAX_SCREENSHOT = 150 * 1024
COMMANDS = ("./bootstrap.sh lab", "./bootstrap.sh test")
APPS = ("xpra", "vnc", "paraview", "tensorboard", "rstudio")

sys.path.insert(0, str(DOCS))


def paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks, white space folded; short ones (a lone fence, a
    one-word line) are too common to count as repeats."""
    blocks = (" ".join(block.split()) for block in re.split(r"\n\s*\n", text))
    return [block for block in blocks if len(block) >= 40]


def repeated(text: str) -> list[str]:
    return [block[:80] for block, n in Counter(paragraphs(text)).items() if n > 1]


def local_links(text: str) -> list[str]:
    """Markdown link targets that are files of this repository (not URLs or anchors)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:|#", t)]


def doc_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)


# ------------------------------------------------------------------- the README
def test_readme_starts_with_its_title():
    assert README.read_text().splitlines()[0] == "# hpc-proxies"


def test_readme_is_small():
    size = README.stat().st_size
    lines = README.read_text().count("\n")
    assert size <= MAX_TEXT, f"README.md is {size} bytes; the limit is {MAX_TEXT}"
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; keep it a front door"


def test_readme_shows_the_two_commands_on_its_first_screen():
    first_screen = "\n".join(README.read_text().splitlines()[:FIRST_SCREEN_LINES])
    for command in COMMANDS:
        assert command in first_screen, f"{command!r} is not in the README's first screen"


@pytest.mark.parametrize("path", [README, *doc_pages()], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_paragraph_is_repeated(path):
    assert repeated(path.read_text()) == [], f"{path.name} repeats these paragraphs"


def test_readme_links_resolve():
    text = README.read_text()
    missing = [link for link in local_links(text) if not (ROOT / link).exists()]
    assert missing == [], f"README.md links to files that do not exist: {missing}"


def test_readme_links_every_app_page_the_reference_and_the_security_model():
    linked = {Path(link) for link in local_links(README.read_text())}
    wanted = [Path(f"docs/apps/{app}.md") for app in APPS] + [
        Path("docs/admins/config-reference.md"),
        Path("docs/security.md"),
    ]
    assert [page for page in wanted if page not in linked] == []


# ------------------------------------------------------------------- the docs
def test_generated_pages_match_the_code():
    import generate

    assert generate.stale_pages() == [], "run `python docs/generate.py`"


def test_every_page_starts_with_a_title():
    for page in doc_pages():
        lines = [line for line in page.read_text().splitlines() if not line.startswith("<!--")]
        first = next(line for line in lines if line.strip())
        assert first.startswith("# "), f"{page} does not start with its title"


def test_config_reference_names_every_declared_key():
    from hpc_proxies import config
    from hpc_proxies.apps import load_app

    text = (DOCS / "admins" / "config-reference.md").read_text()
    for app in APPS:
        assert f"[apps.{app}]" in text
        for setting in config.settings_of(load_app(app)):
            assert f"`{setting.name}`" in text


def test_screenshots_are_small_and_used():
    shots = sorted((DOCS / "_static" / "screenshots").glob("*.png"))
    assert shots, "the user docs show no screenshot"
    pages = "\n".join(page.read_text() for page in doc_pages())
    for shot in shots:
        size = shot.stat().st_size
        assert size <= MAX_SCREENSHOT, f"{shot.name} is {size} bytes; re-run docs/screenshots.py"
        assert f"screenshots/{shot.name}" in pages, f"no page shows {shot.name}"
    for app in APPS:
        assert any(shot.name.startswith(app) for shot in shots), f"no screenshot of {app}"


# ------------------------------------------------------------------- the wheel
def test_wheel_metadata_is_small(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (metadata,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        size = zf.getinfo(metadata).file_size
        text = zf.read(metadata).decode()
    assert size <= MAX_TEXT, f"the wheel's METADATA is {size} bytes"
    assert "# hpc-proxies" in text  # the README is the long description
