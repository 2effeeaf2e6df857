"""The pages a user sees while an app starts, or when it cannot start.

They are served by the launcher on the app's own socket, so they arrive through the
same authenticated Jupyter URL as the app itself. Every piece of text that comes
from outside (app output, paths, error messages) is HTML-escaped.
"""

from __future__ import annotations

import functools
import json
import re
from html import escape
from importlib import resources
from typing import TYPE_CHECKING

from .problems import Problem

if TYPE_CHECKING:
    import jinja2
    from markupsafe import Markup

#: Response header that marks a page as ours, not the app's. The progress page polls
#: with it, and the Jupyter-side rewrite leaves such pages alone.
STATE_HEADER = "X-HPC-Proxies-State"
#: Request header the progress page sends when it only wants the state, as JSON.
PROBE_HEADER = "X-HPC-Proxies-Probe"
#: Request header the confirmation page's button sends: no page on another site can add
#: it to a request that carries the user's login (see ``launcher.request_origin``).
CONFIRM_HEADER = "X-HPC-Proxies-Confirm"
#: Response header of the confirmation page: no other site may frame it and trick a
#: click on its button (proxied pages lose Jupyter's own ``frame-ancestors``).
FRAME_POLICY = ("Content-Security-Policy", "frame-ancestors 'self'")

#: What a page or a log line shows of a value that came from outside (a URL, an app's
#: output line) at the most: a 64 kB query string must not fill the log or the page.
SHOWN_MAX = 300


def shorten(text: str, limit: int = SHOWN_MAX) -> str:
    """``text``, or its start and how long it was, if it is longer than ``limit``."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters in all)"


def home_url(prefix: str) -> str:
    """JupyterLab, next to an app: an app's prefix is ``{base_url}{app}/``."""
    return prefix.rstrip("/").rsplit("/", 1)[0] + "/lab"


#: A span between backticks in problem text: shown as code.
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
#: What must not appear inside a ``<script>`` element's text, even in a JSON string.
_SCRIPT_BREAK = re.compile(r"<(?=/script|!--)", re.IGNORECASE)


def code_spans(text: str) -> Markup:
    """``text`` escaped, with each span between backticks as ``<code>``: problem text is
    plain text, and a command or path in it reads better as code. An unmatched backtick
    stays as it is."""
    from markupsafe import Markup

    # split() with one group: plain text at even indices, the spans' text at odd ones.
    # html.escape, as every page escaped before templates (' as &#x27;).
    parts = [escape(part) for part in _CODE_SPAN.split(text)]
    spans = (f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))
    return Markup("".join(spans))  # noqa: S704 (every part escaped above)


def script_json(value: object) -> Markup:
    """``value`` as a JavaScript literal for the text of a ``<script>`` element: JSON,
    with the sequences that would end or derail the element (``</script``, ``<!--``)
    spelled with ``\\u003c``. Not HTML-escaped: a script's text is not HTML."""
    from markupsafe import Markup

    return Markup(_SCRIPT_BREAK.sub(r"\\u003c", json.dumps(value)))  # noqa: S704


@functools.cache
def _environment() -> jinja2.Environment:
    """The templates of ``hpc_proxies/templates``, autoescaped. Made on first use, not at
    import: the ParaView kernel's Python imports this module for ``STATE_HEADER`` and
    need not have Jinja."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hpc_proxies", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["code_spans"] = code_spans
    env.filters["script_json"] = script_json
    return env


@functools.cache
def static_text(name: str) -> str:
    """A file of ``hpc_proxies/static`` (CSS, JS), to inline into a page: the pages come
    from an app's private socket through a proxy, so they cannot link to other files."""
    return resources.files("hpc_proxies").joinpath("static", name).read_text(encoding="utf-8")


def warm_up() -> None:
    """Compile the pages' templates now, before the first request: a compile takes about
    0.1 s, and while it runs a fast app can get ahead of its own progress page."""
    environment = _environment()
    for name in ("progress.html", "problem.html", "confirm.html"):
        environment.get_template(name)
    static_text("pages.css")


def render_template(name: str, **values: object) -> str:
    """A template of ``hpc_proxies/templates`` with ``values`` (escaped unless a template
    marks one safe) and the house style as ``css``."""
    template = _environment().get_template(name)
    return template.render(css=static_text("pages.css"), **values)


def progress_page(
    title: str, elapsed: float, timeout: float, tail: list[str], note: str = ""
) -> str:
    """The page shown while the app starts; it reloads into the app once it answers."""
    return render_template(
        "progress.html",
        page_title=f"Starting {title}",
        title=title,
        percent=f"{min(100.0, 100 * elapsed / timeout):.0f}",
        elapsed=f"{elapsed:.1f}",
        timeout=f"{timeout:.0f}",
        note=note,
        tail=tail,
        probe_header=PROBE_HEADER,
        state_header=STATE_HEADER,
        js=static_text("progress.js"),
    )


def problem_page(title: str, problem: Problem, retry: bool = True, home: str | None = None) -> str:
    """The page of a :class:`Problem`: what is wrong, why, what to do, the app's last
    output lines. All of its text is escaped (spans between backticks become code)."""
    heading = f"{title} {problem.summary}"
    return render_template(
        "problem.html",
        page_title=f"{title}: {heading}",
        title=title,
        problem=problem,
        shown_max=SHOWN_MAX,
        retry=retry,
        home=home,
    )


def confirm_page(
    title: str, changes: list[tuple[str, str, str]], keep_url: str, running: bool
) -> str:
    """The question asked before a request that may come from another site relaunches an
    app with other URL parameters. ``changes`` are (label, new value, current value or
    ""). The button asks again from this page, with ``CONFIRM_HEADER``, then reloads
    (the app is then relaunched); the link goes back to the app as it is."""
    if len(changes) == 1:
        label, value, _ = changes[0]
        heading, action, shown = f"Open {title} on {value}?", f"Open this {label}", "value"
    else:
        heading, action = f"Relaunch {title} with other values?", f"Relaunch {title}"
        shown = "values"
    return render_template(
        "confirm.html",
        page_title=heading,
        title=title,
        heading=heading,
        action=action,
        shown=shown,
        changes=changes,
        running=running,
        keep_url=keep_url,
        confirm_header=CONFIRM_HEADER,
        js=static_text("confirm.js"),
    )


def status_json(**info: object) -> str:
    """The JSON the progress page polls for."""
    return json.dumps(info)
