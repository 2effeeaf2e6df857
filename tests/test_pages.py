"""The pages we serve ourselves: what a user sees on them, and that the wheel ships the
templates and the CSS and JS they inline."""

from __future__ import annotations

import zipfile
from html.parser import HTMLParser
from pathlib import Path

from hpc_proxies import pages
from hpc_proxies.problems import ChoiceForm, Problem
from hpc_proxies.vnc import page_script

PACKAGE = Path(pages.__file__).resolve().parent
EVIL = "<script>alert('x')</script>"
VOID = {"meta", "input", "br", "img", "link", "hr"}


class Page(HTMLParser):
    """A page as a user reads it: its title, the blocks in its ``<main>`` in order (tag,
    text with whitespace collapsed, except in ``<pre>``), and every element's tag and
    attributes (entities decoded, as a browser would)."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.blocks: list[list[str]] = []
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self._open: list[str] = []
        self.feed(html)
        self.close()
        self.blocks = [
            [tag, text if tag == "pre" else " ".join(text.split())] for tag, text in self.blocks
        ]

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if self._open and self._open[-1] == "main":
            self.blocks.append([tag, ""])
        if tag not in VOID:
            self._open.append(tag)

    def handle_endtag(self, tag):
        if tag in self._open:
            while self._open.pop() != tag:
                pass

    def handle_data(self, data):
        if self._open and self._open[-1] == "title":
            self.title += data
        elif "main" in self._open[:-1] and self.blocks:
            self.blocks[-1][1] += data

    def ids(self) -> set[str]:
        return {attrs["id"] for _, attrs in self.elements if attrs.get("id")}

    def tags(self, name: str) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.elements if tag == name]


FULL = Problem(
    code="bad-logdir",
    summary="cannot open this run directory",
    details=("The directory /data/x does not exist.", "It may be on a file system not mounted."),
    items=("/data is mounted", "/scratch is not"),
    fix="Run `ls /data` in a terminal.",
    status=404,
    tail=("first line", "last line"),
    form=ChoiceForm(name="logdir", label="run directory", value="/data/x"),
    hint="Any run directory can also be opened from the address bar: `/tensorboard/?logdir=…`.",
)


def test_a_problem_page_shows_every_part_in_order():
    page = Page(pages.problem_page("TensorBoard", FULL, home="/lab"))
    assert page.title == "TensorBoard: TensorBoard cannot open this run directory"
    assert page.blocks == [
        ["h1", "TensorBoard cannot open this run directory"],
        ["p", "The directory /data/x does not exist."],
        ["ul", "/data is mounted /scratch is not"],
        ["p", "It may be on a file system not mounted."],
        ["form", "Open another run directory: Open"],
        ["p", "Run ls /data in a terminal."],
        ["p", "Any run directory can also be opened from the address bar: /tensorboard/?logdir=…."],
        ["p", "Last lines of its output:"],
        ["pre", "first line\nlast line"],
        ["p", "Try again Back to JupyterLab"],
    ]
    assert [attrs.get("class") for attrs in page.tags("h1")] == ["bad"]
    assert [attrs["id"] for attrs in page.tags("pre")] == ["log"]
    assert page.tags("a") == [{"href": "/lab"}]
    (form,) = page.tags("form")
    assert form["method"] == "get" and form["class"] == "actions"
    (field,) = page.tags("input")
    assert field["name"] == "logdir" and field["value"] == "/data/x"


def test_a_problem_page_escapes_every_field():
    problem = Problem(
        code="x",
        summary=EVIL,
        details=(EVIL, EVIL),
        items=(EVIL,),
        fix=EVIL,
        tail=(EVIL,),
        form=ChoiceForm(name=f"n'{EVIL}", label=EVIL, value=f"v'{EVIL}"),
        hint=EVIL,
    )
    html = pages.problem_page(EVIL, problem, home=f"/lab'{EVIL}")
    assert "<script" not in html.lower()  # the page has no scripts of its own
    page = Page(html)
    assert page.title == f"{EVIL}: {EVIL} {EVIL}"
    assert [text for _, text in page.blocks] == [
        f"{EVIL} {EVIL}",
        EVIL,
        EVIL,
        EVIL,
        f"Open another {EVIL}: Open",
        EVIL,
        EVIL,
        "Last lines of its output:",
        EVIL,
        "Try again Back to JupyterLab",
    ]
    (field,) = page.tags("input")
    assert field["name"] == f"n'{EVIL}" and field["value"] == f"v'{EVIL}"
    assert page.tags("a") == [{"href": f"/lab'{EVIL}"}]


def test_spans_between_backticks_are_code():
    problem = Problem(
        code="x",
        summary="cannot find `vncserver`",
        details=("Run `module load <vnc>` first; a lone ` stays.",),
        items=("`a` and `b`",),
        fix="Or ask for `x & y`.",
    )
    html = pages.problem_page("VNC Desktop", problem)
    assert "<h1 class='bad'>VNC Desktop cannot find <code>vncserver</code></h1>" in html
    assert "<code>module load &lt;vnc&gt;</code> first; a lone ` stays." in html
    assert "<li><code>a</code> and <code>b</code></li>" in html
    assert "Or ask for <code>x &amp; y</code>." in html
    # The title shows no markup: the backticks stay there.
    assert Page(html).title == "VNC Desktop: VNC Desktop cannot find `vncserver`"


def test_a_long_value_is_cut_in_the_form():
    problem = Problem(code="x", summary="s", form=ChoiceForm("logdir", "run", "x" * 5000))
    (field,) = Page(pages.problem_page("T", problem)).tags("input")
    assert field["value"] == "x" * pages.SHOWN_MAX


def test_without_retry_or_home_there_is_no_button_or_link():
    problem = Problem(code="x", summary="is disabled here", details=("Ask your admin.",))
    page = Page(pages.problem_page("Xpra", problem, retry=False))
    assert page.blocks == [["h1", "Xpra is disabled here"], ["p", "Ask your admin."]]
    assert not page.tags("button") and not page.tags("a") and "log" not in page.ids()

    page = Page(pages.problem_page("Xpra", problem, retry=False, home="/lab"))
    assert page.blocks[-1] == ["p", "Back to JupyterLab"]
    assert not page.tags("button")

    page = Page(pages.problem_page("Xpra", problem))
    assert page.blocks[-1] == ["p", "Try again"]
    assert [b["onclick"] for b in page.tags("button")] == ["location.reload()"]


def test_the_progress_page_keeps_its_ids_headers_and_style():
    html = pages.progress_page("Xpra Desktop", 1.5, 60, ["line <1>"], note="Loading <x>")
    page = Page(html)
    assert page.title == "Starting Xpra Desktop"
    assert {"bar", "secs", "log"} <= page.ids()
    assert ["h1", "Starting Xpra Desktop…"] in page.blocks
    started = "Started 1.5 s ago; this page opens the app by itself as soon as it answers"
    assert ["p", f"{started} (at most 60 s)."] in page.blocks
    assert ["p", "Loading <x>"] in page.blocks
    assert ["pre", "line <1>"] in page.blocks
    assert pages.PROBE_HEADER in html and pages.STATE_HEADER in html
    assert "location.reload()" in html
    # Standalone: the style and the script are in the page, nothing is fetched.
    assert "@keyframes spin" in html and not page.tags("link")
    assert all("src" not in attrs for attrs in page.tags("script"))


def test_the_progress_page_without_output_hides_the_log():
    (log,) = Page(pages.progress_page("Xpra Desktop", 0.0, 60, [])).tags("pre")
    assert log == {"id": "log", "hidden": None}


def test_the_confirm_page_keeps_its_ids_and_header():
    html = pages.confirm_page(
        "TensorBoard", [("run directory", "/d/<two>", "/d/one")], "/tensorboard/", True
    )
    page = Page(html)
    assert {"confirm", "keep"} <= page.ids()
    assert ["h1", "Open TensorBoard on /d/<two>?"] in page.blocks
    assert ["table", "run directory/d/<two>now/d/one"] in page.blocks
    assert ["p", "Opening it restarts TensorBoard, which is running now."] in page.blocks
    assert ["p", "Open this run directory Keep TensorBoard as it is"] in page.blocks
    assert page.tags("a") == [{"id": "keep", "href": "/tensorboard/"}]
    assert pages.CONFIRM_HEADER in html


def test_the_vnc_password_cannot_end_its_script():
    """The script is injected into noVNC's page: a password, whatever it holds, stays
    inside it."""

    class Scripts(HTMLParser):
        def __init__(self):
            super().__init__()
            self.starts: list[str] = []

        def handle_starttag(self, tag, attrs):
            self.starts.append(tag)

    parsed = Scripts()
    parsed.feed(page_script("pw</script><b>x</b><!--<script>", {}))
    assert parsed.starts == ["script"]


def test_the_wheel_ships_every_template_and_static_file(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    shipped = [
        path.relative_to(PACKAGE.parent).as_posix()
        for folder in ("templates", "static")
        for path in sorted((PACKAGE / folder).iterdir())
        if path.is_file()
    ]
    assert shipped, "no templates or static files found"
    missing = [name for name in shipped if name not in names]
    assert not missing, f"not in the wheel: {missing}"
