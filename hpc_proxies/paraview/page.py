"""The ParaView tile's pages: the live status page, and the page of a view that is gone."""

from __future__ import annotations

from ..pages import home_url, render_template, static_text

SNIPPET = """import hpc_proxies.paraview as pvh
from paraview.simple import *

pvh.connect()
Show(Sphere())
pvh.show()"""


def status_page(prefix: str) -> str:
    """Polls ``api/status`` every second; the buttons post to ``api/stop|restart``
    with the Jupyter server's XSRF token (a cookie-authenticated POST needs it)."""
    return render_template(
        "paraview_status.html",
        page_title="ParaView server",
        home=home_url(prefix),
        snippet=SNIPPET,
        js=static_text("paraview-status.js"),
    )


def view_gone_page() -> str:
    """The page of a view whose kernel is gone: what to run to get one back."""
    return render_template("paraview_gone.html", page_title="ParaView view")
