"""Who may relaunch an app with other URL parameters: where a request comes from.

Both the Jupyter side (a parameter chosen while the app runs) and the per-launch
supervisor (a request that reaches it) decide with :func:`request_origin`.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import pages

#: The origins (``request_origin``) whose new URL parameters relaunch an app at once;
#: no page on another site can make a request that has one of them.
MAY_RELAUNCH = frozenset({"same-origin", "none", "token", "confirmed"})


def request_origin(headers: Mapping[str, str]) -> str:
    """Where a request that chooses URL parameters comes from, as far as relaunching the
    app goes (``MAY_RELAUNCH``): "token" (``Authorization: token …`` or ``Bearer``, from
    scripts), "confirmed" (our confirmation page's ``CONFIRM_HEADER``), else the
    browser's ``Sec-Fetch-Site`` ("same-origin", "none" for the address bar or a
    bookmark, "same-site", "cross-site"), or "unknown" without one (an old browser, a
    client with only the cookie). A page on another site can add neither header to a
    request that carries the user's cookie (that needs a CORS preflight, which Jupyter's
    login refuses), and browsers set ``Sec-Fetch-Site`` themselves. (A ``Basic`` login
    counts for nothing: browsers add a cached one to links from any site.) ``headers``:
    lower-case names, or case-insensitive (tornado's, aiohttp's)."""
    scheme = headers.get("authorization", "").strip().split(" ", 1)[0].lower()
    if scheme in ("token", "bearer"):
        return "token"
    if headers.get(pages.CONFIRM_HEADER.lower()):
        return "confirmed"
    site = headers.get("sec-fetch-site", "").strip().lower()
    return site if site in ("same-origin", "none", "same-site", "cross-site") else "unknown"
