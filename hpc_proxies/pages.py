"""The pages a user sees while an app starts, or when it cannot start.

They are served by the launcher on the app's own socket, so they arrive through the
same authenticated Jupyter URL as the app itself. Every piece of text that comes
from outside (app output, paths, error messages) is HTML-escaped.
"""

from __future__ import annotations

import json
from html import escape

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

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       background: #f5f5f5; color: #1f1f1f; }
main { max-width: 52rem; margin: 8vh auto; background: #fff; border-radius: 8px;
       box-shadow: 0 1px 4px rgba(0,0,0,.15); padding: 2rem 2.5rem; }
h1 { font-size: 1.4rem; margin: 0 0 1rem; display: flex; align-items: center; gap: .8rem; }
p { line-height: 1.5; }
code { background: #f0f0f0; padding: .1em .3em; border-radius: 3px; }
pre { background: #1e1e1e; color: #ddd; padding: .8rem 1rem; border-radius: 6px;
      overflow: auto; max-height: 22rem; font-size: .8rem; white-space: pre-wrap; }
.muted { color: #666; font-size: .9rem; }
.spinner { width: 1.4rem; height: 1.4rem; border: 3px solid #ddd; border-top-color: #f37726;
           border-radius: 50%; animation: spin 1s linear infinite; }
.bar { height: 4px; background: #eee; border-radius: 2px; overflow: hidden; }
.bar > div { height: 100%; width: 0; background: #f37726; transition: width .25s linear; }
button { font-size: 1rem; padding: .5rem 1.2rem; border-radius: 4px; border: 1px solid #ccc;
         background: #f37726; color: #fff; cursor: pointer; }
.bad { color: #b00020; }
.actions { display: flex; gap: 1.5rem; align-items: center; }
.secondary { background: #fff; color: #1f1f1f; }
button:disabled { opacity: .5; cursor: default; }
table.facts th { text-align: left; padding: .2rem 1.5rem .2rem 0; color: #666; font-weight: 500; }
table.values th { white-space: nowrap; vertical-align: top; }
.state.running { color: #1b7a2f; } .state.failed { color: #b00020; }
h2 { font-size: 1.1rem; margin-top: 2rem; }
@keyframes spin { to { transform: rotate(360deg); } }
"""


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


def document(title: str, body: str) -> str:
    """A whole page in the house style; ``body`` is HTML (callers escape what they insert)."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _log_block(lines: list[str], element_id: str = "log") -> str:
    text = escape("\n".join(lines)) if lines else ""
    hidden = "" if lines else " hidden"
    return f"<pre id='{element_id}'{hidden}>{text}</pre>"


def progress_page(
    title: str, elapsed: float, timeout: float, tail: list[str], note: str = ""
) -> str:
    """The page shown while the app starts; it reloads into the app once it answers."""
    note_html = f"<p class='muted'>{escape(note)}</p>" if note else ""
    script = f"""
<script>
(function () {{
  const bar = document.getElementById('bar'), secs = document.getElementById('secs');
  const log = document.getElementById('log');
  async function poll() {{
    let r;
    try {{
      r = await fetch(location.href, {{headers: {{'{PROBE_HEADER}': '1'}}, cache: 'no-store',
                                      credentials: 'same-origin'}});
    }} catch (e) {{ setTimeout(poll, 1000); return; }}
    const state = r.headers.get('{STATE_HEADER}');
    if (!state) {{ location.reload(); return; }}          // the app itself answered
    if (state !== 'starting') {{ location.reload(); return; }}  // show why it stopped
    const info = await r.json();
    secs.textContent = info.elapsed.toFixed(1);
    bar.style.width = Math.min(100, 100 * info.elapsed / info.timeout) + '%';
    if (info.tail.length) {{ log.hidden = false; log.textContent = info.tail.join('\\n');
                            log.scrollTop = log.scrollHeight; }}
    setTimeout(poll, 250);
  }}
  setTimeout(poll, 200);
}})();
</script>"""
    body = (
        f"<h1><span class='spinner' aria-hidden='true'></span>Starting {escape(title)}…</h1>"
        f"<div class='bar'><div id='bar' style='width:{min(100.0, 100 * elapsed / timeout):.0f}%'>"
        "</div></div>"
        f"<p>Started <span id='secs'>{elapsed:.1f}</span> s ago; this page opens the app "
        f"by itself as soon as it answers (at most {timeout:.0f} s).</p>"
        f"{note_html}{_log_block(tail)}{script}"
    )
    return document(f"Starting {title}", body)


def error_page(
    title: str,
    heading: str,
    paragraphs: list[str],
    tail: list[str] | None = None,
    retry: bool = True,
    home: str | None = None,
) -> str:
    """A readable failure page. ``paragraphs`` are HTML; callers escape what they insert."""
    parts = [f"<h1 class='bad'>{escape(heading)}</h1>"]
    parts += [f"<p>{p}</p>" for p in paragraphs]
    if tail:
        parts.append("<p class='muted'>Last lines of its output:</p>")
        parts.append(_log_block(tail))
    actions = []
    if retry:
        actions.append("<button onclick='location.reload()'>Try again</button>")
    if home:
        actions.append(f"<a href='{escape(home)}'>Back to JupyterLab</a>")
    if actions:
        parts.append("<p class='actions'>" + " ".join(actions) + "</p>")
    return document(f"{title}: {heading}", "".join(parts))


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
    rows = "".join(
        f"<tr><th>{escape(label)}</th><td><code>{escape(value)}</code></td></tr>"
        + (
            f"<tr class='muted'><th>now</th><td><code>{escape(current)}</code></td></tr>"
            if current
            else ""
        )
        for label, value, current in changes
    )
    effect = (
        f"Opening it restarts {escape(title)}, which is running now."
        if running
        else f"{escape(title)} starts with it."
    )
    script = f"""
<script>
(function () {{
  const button = document.getElementById('confirm');
  button.addEventListener('click', async function () {{
    button.disabled = true;
    try {{
      await fetch(location.href, {{headers: {{'{CONFIRM_HEADER}': '1'}}, cache: 'no-store',
                                  credentials: 'same-origin'}});
    }} catch (e) {{
      console.error(e);  // the reload below shows whatever the server says now
    }}
    location.replace(location.href);
  }});
}})();
</script>"""
    body = (
        f"<h1>{escape(heading)}</h1>"
        f"<table class='facts values'>{rows}</table>"
        f"<p>This address asks to relaunch {escape(title)} with the {shown} shown. The "
        f"request did not come from {escape(title)}'s own pages (it may come from a link "
        "on another web site), so nothing changes until you confirm it here.</p>"
        f"<p class='muted'>{effect}</p>"
        f"<p class='actions'><button id='confirm' type='button'>{escape(action)}</button> "
        f"<a id='keep' href='{escape(keep_url)}'>Keep {escape(title)} as it is</a></p>"
        f"{script}"
    )
    return document(heading, body)


def status_json(**info: object) -> str:
    """The JSON the progress page polls for."""
    return json.dumps(info)
