"""The one place that speaks jupyter-server-proxy: building and checking its server dicts.

jupyter-server-proxy (4.x) has quirks a plugin must work around, and this module is
where all of them are handled (``tests/test_engine_contract.py`` fails if any of them
changes under us):

* every string of ``command`` and ``environment`` goes through ``str.format``, so
  literal braces are doubled here (:func:`template_literal`);
* callables get their arguments by *parameter name*, read from ``__code__``, so only
  plain closures are passed (no ``functools.partial``, no bound methods);
* unknown keys are silently ignored, so every dict is validated here
  (:func:`validate_server_process`);
* ``unix_socket: True`` makes a private directory that nobody removes, and readiness
  is a single GET with any status: the per-launch supervisor (``hpc_proxies.launcher``)
  owns that directory, answers at once with a progress page, and removes it at exit.

jupyter-server-proxy buffers every response body (and fails one over 100 MiB): its
handler classes for our apps get :class:`~.streaming.StreamingMixin` in front, which
streams the large responses no rewrite hook needs (:func:`instance_handler`, and
:func:`stream_first_instances` for the class it registers at ``/<app>/`` itself).

It also holds what the Jupyter side does for apps in their responses (``rewrite_response``):
the launch secret put into the entry page, redirects to another host made to point
here, and a URL parameter chosen while the app runs passed on to its launcher.

Instances (``/<app>@<instance>/``, see :mod:`.instances`) are served by
jupyter-server-proxy's own handler classes, made here by its own ``ServerProcess``
from the same server dict (:func:`instance_handler`); and its activity hook
(``update_last_activity``, called with the handler for every proxied request and
websocket message) is how the instance manager learns of activity, and of the state
jupyter-server-proxy keeps for the first instance (:meth:`AppServerProxy.record_activity`).
"""

from __future__ import annotations

import difflib
import gzip
import http.client
import json
import logging
import os
import socket
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from jupyter_server.utils import url_path_join
from tornado.routing import Rule
from tornado.web import Application

from .. import config, pages
from ..apps import icon_path
from ..layout import LaunchLayout
from ..origins import request_origin
from ..runtime import read_secret
from ..spec import AppSpec
from .streaming import streaming_handler

#: Under the server's "ServerApp" logger, so messages land in the Jupyter log.
log = logging.getLogger("ServerApp.hpc_proxies")

#: Keys jupyter-server-proxy 4.x understands in a server dict.
SERVER_KEYS = frozenset(
    {
        "command",
        "environment",
        "timeout",
        "absolute_url",
        "port",
        "unix_socket",
        "mappath",
        "launcher_entry",
        "new_browser_tab",
        "request_headers_override",
        "rewrite_response",
        "update_last_activity",
        "exclude_last_activity_patterns",
        "raw_socket_proxy",
    }
)
LAUNCHER_ENTRY_KEYS = frozenset({"enabled", "icon_path", "title", "path_info", "category"})

#: How long jupyter-server-proxy waits for the launcher itself to answer (it binds at
#: once; the app's own, configurable timeout is enforced by the launcher).
LAUNCHER_TIMEOUT = 30.0
#: How long a request waits for the launcher to take a URL parameter (it answers in
#: milliseconds: it only checks the value and takes its socket back).
CONTROL_TIMEOUT = 5.0


class InvalidServerProcess(ValueError):
    """A server dict has a key jupyter-server-proxy would silently ignore."""


def _unknown(keys, allowed: frozenset[str], where: str) -> list[str]:
    problems = []
    for key in sorted(set(keys) - allowed):
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"unknown key {where}{key!r}{hint}")
    return problems


def validate_server_process(name: str, server: dict) -> dict:
    """Return ``server`` unchanged, or raise if jupyter-server-proxy would ignore part of it."""
    problems = _unknown(server, SERVER_KEYS, "")
    entry = server.get("launcher_entry", {})
    if isinstance(entry, dict):
        problems += _unknown(entry, LAUNCHER_ENTRY_KEYS, "launcher_entry.")
    if problems:
        raise InvalidServerProcess(f"server process {name!r}: " + "; ".join(problems))
    return server


def template_literal(value: str) -> str:
    """Protect ``value`` from jupyter-server-proxy's ``str.format`` templating."""
    return value.replace("{", "{{").replace("}", "}}")


def inject_into_head(body: bytes, encoding: str, snippet: str) -> bytes | None:
    """Put ``snippet`` right after ``<head>``; None if the body cannot be rewritten."""
    if encoding == "gzip":
        body = gzip.decompress(body)
    elif encoding == "deflate":
        body = zlib.decompress(body)
    elif encoding not in ("", "identity"):
        return None
    lower = body.lower()
    start = lower.find(b"<head")
    if start < 0:
        return None
    end = lower.find(b">", start)
    return body[: end + 1] + snippet.encode() + body[end + 1 :]


def redirect_to_this_host(location: str, host: str) -> str | None:
    """``location`` made to point at ``host`` (the one the browser used) if the app
    named another host or port in it (it believes it runs at ``localhost:8787``); None
    if it needs no change. The result is scheme-relative (``//host/path``), so a page
    reached by https behind a TLS proxy stays on https."""
    parsed = urlsplit(location)
    if not parsed.netloc or parsed.netloc == host:
        return None
    return urlunsplit(("", host, parsed.path or "/", parsed.query, parsed.fragment))


def unchanged(request_headers, response_headers) -> bool:
    """Whether a revalidation (``If-None-Match``, else ``If-Modified-Since``) names the
    very version the app has just sent whole. Only an identical ``Last-Modified`` counts,
    not an earlier one: after a downgrade the older file is new to the browser. Never a
    response the app says not to store (the entry page with the launch password)."""
    if "no-store" in response_headers.get("Cache-Control", ""):
        return False
    if_none_match = request_headers.get("If-None-Match")
    if if_none_match is not None:
        etag = response_headers.get("ETag", "").removeprefix("W/")
        tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
        return bool(etag) and (etag in tags or "*" in tags)
    since = request_headers.get("If-Modified-Since", "").strip()
    return bool(since) and since == response_headers.get("Last-Modified", "").strip()


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP to a server on a unix socket (the supervisor's control API)."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.unix_path))
        self.sock = sock


def ask_launcher(control: Path, message: dict, timeout: float = CONTROL_TIMEOUT) -> dict | None:
    """POST ``message`` to a supervisor's control API (``/params``); its JSON answer,
    or None if it did not give one."""
    connection = _UnixHTTPConnection(control, timeout)
    try:
        connection.request(
            "POST", "/params", json.dumps(message), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        reply = json.loads(response.read()) if response.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    return reply if isinstance(reply, dict) else None


def _replace_body(response, code: int, body: bytes, content_type: str | None) -> None:
    """Give ``response`` a new status and body, without the app's caching, encoding and
    content policy (which would block the new page's own script)."""
    for header in (
        "Content-Encoding",
        "Content-Type",
        "ETag",
        "Last-Modified",
        "Expires",
        "Content-Security-Policy",
    ):
        if header in response.headers:
            del response.headers[header]
    if content_type:
        response.headers["Content-Type"] = content_type
    response.headers["Cache-Control"] = "no-store"
    response.code = code
    response.body = body


#: Where the Jupyter server's settings hold the instance manager (the activity hook
#: finds it through the handler it is given).
MANAGER_SETTING = "hpc_proxies_instances"
#: The name of an app's first instance, the one at ``/<app>/``.
DEFAULT_INSTANCE = "default"


def rewritten_paths(app: AppSpec) -> frozenset[str]:
    """The paths whose responses our rewrite hooks may change, besides redirects: the
    entry pages, for the launch secret and URL parameters. Any other large response is
    streamed (:mod:`.streaming`)."""
    if app.page_script is None and not app.parameters:
        return frozenset()
    return frozenset(app.html_paths)


def url_name(app: str, instance: str) -> str:
    """The instance's URL path segment: ``xpra`` for the first, ``xpra@2`` for others."""
    return app if instance == DEFAULT_INSTANCE else f"{app}@{instance}"


class AppServerProxy:
    """One instance of an app as jupyter-server-proxy sees it: its server dict, and the
    hooks that the dict's callables forward to.

    jupyter-server-proxy tells a plugin where a launch lives only through ``command``'s
    ``unix_socket`` argument; the rewrite hooks need that place too (the launch secret,
    the control API), so :meth:`command` records it as ``layout``, the launch this
    Jupyter server runs now (never a secret: only paths).
    """

    def __init__(
        self, app: AppSpec, site: config.SiteConfig, instance: str = DEFAULT_INSTANCE
    ) -> None:
        self.app = app
        self.site = site
        self.instance = instance
        self.url_name = url_name(app.name, instance)
        self.settings = site.for_app(app.name) if app.name in site.apps else None
        self.layout: LaunchLayout | None = None
        #: Said on the next launch's progress page (why it starts again), then cleared.
        self.next_note = ""

    @property
    def enabled(self) -> bool:
        return self.site.error is None and (self.settings is None or self.settings.enabled)

    def command(self, unix_socket: str, base_url: str) -> list[str]:
        """Run our supervisor on the launch's socket (called at each launch)."""
        self.layout = LaunchLayout(Path(unix_socket))
        argv = [
            sys.executable,
            "-m",
            "hpc_proxies.launcher",
            "--app",
            self.app.name,
            "--socket",
            unix_socket,
            "--prefix",
            f"{base_url}{self.url_name}/",
            "--parent-pid",
            str(os.getpid()),
        ]
        note, self.next_note = self.next_note, ""
        if note:
            argv += ["--note", note]
        return [template_literal(arg) for arg in argv]

    def record_activity(self, handler) -> bool:
        """jupyter-server-proxy's activity hook: tell the instance manager (if the
        server extension runs) that this instance was used, and keep Jupyter's own
        activity tracking (True)."""
        manager = handler.settings.get(MANAGER_SETTING)
        if manager is not None:
            manager.activity(self, handler.state)
        return True

    def give_secret_to_page(self, response, path: str) -> None:
        """Hand the launch secret to the app's entry page, never through its URL."""
        page_script = self.app.page_script
        if page_script is None or path not in self.app.html_paths or response.code != 200:
            return
        if pages.STATE_HEADER in response.headers:
            return  # our own progress or error page
        if "html" not in response.headers.get("Content-Type", ""):
            return
        if self.layout is None or not self.layout.secret_file.exists():
            return
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        secret = read_secret(self.layout.secret_file)
        more = self.app.more_secrets(self.settings.values if self.settings is not None else {})
        found = {name: self.layout.app_dir / name for name in more}
        values = {name: read_secret(path) for name, path in found.items() if path.exists()}
        body = inject_into_head(response.body, encoding, page_script(secret, values))
        if body is None:
            return
        response.body = body
        if "Content-Encoding" in response.headers:
            del response.headers["Content-Encoding"]
        response.headers["Cache-Control"] = "no-store"

    def keep_redirects_here(self, request, response) -> None:
        """The app's redirects to another host or port lead back through Jupyter."""
        location = response.headers.get("Location")
        fixed = redirect_to_this_host(location, request.host) if location else None
        if fixed is not None:
            response.headers["Location"] = fixed

    def answer_unchanged(self, request, response) -> None:
        """A file the browser revalidates and the app sent whole again, unchanged,
        goes to the browser as 304 without its body (``AppSpec.answer_unchanged``)."""
        if request.method not in ("GET", "HEAD") or response.code != 200:
            return
        if unchanged(request.headers, response.headers):
            response.code = 304
            response.body = b""
            for header in ("Content-Encoding", "Content-Type"):
                if header in response.headers:
                    del response.headers[header]

    def pass_parameters_on(self, request, response, path: str) -> None:
        """A URL parameter chosen while the app runs (``?logdir=DIR``) goes to the
        supervisor, with where the request came from (``request_origin``): the app is
        relaunched with it and this request is sent to its own URL again (where the
        progress page now answers); or, while the app keeps running, a page says what
        is wrong with it, or asks the user first (a link from another site)."""
        if request.method != "GET" or path not in self.app.html_paths:
            return
        if pages.STATE_HEADER in response.headers:
            return  # the supervisor answered this request and took the parameter itself
        query = parse_qs(request.query)
        names = [param.name for param in self.app.parameters]
        wanted = {name: query[name][-1] for name in names if query.get(name)}
        if not wanted or self.layout is None:
            return
        message = {"params": wanted, "origin": request_origin(request.headers)}
        reply = ask_launcher(self.layout.control, message)
        if reply is None:
            log.warning("%s: the launcher did not take the URL parameters", self.app.name)
            return
        result = reply.get("result")
        if result == "switching":
            _replace_body(response, 303, b"", None)
            response.headers["Location"] = "?" + request.query
        elif result in ("error", "confirm"):
            page = str(reply.get("page", "")).encode()
            status = int(reply.get("status", 404))
            _replace_body(response, status, page, "text/html; charset=utf-8")
            state = "failed" if result == "error" else str(reply.get("state", "running"))
            response.headers[pages.STATE_HEADER] = state
            if result == "confirm":
                response.headers[pages.FRAME_POLICY[0]] = pages.FRAME_POLICY[1]

    def server_dict(self) -> dict:
        """The dict for jupyter-server-proxy. Its callables are plain functions with the
        parameter names it passes by (it reads ``__code__``: no bound methods)."""
        title = str(self.settings["title"]) if self.settings is not None else self.app.title
        category = str(self.settings["category"]) if self.settings is not None else None

        def command(unix_socket, base_url):
            return self.command(unix_socket, base_url)

        def update_last_activity(handler):
            return self.record_activity(handler)

        server = {
            "command": command,
            "update_last_activity": update_last_activity,
            "unix_socket": True,
            "timeout": LAUNCHER_TIMEOUT,
            "absolute_url": self.app.absolute_url,
            "new_browser_tab": True,
            "launcher_entry": {
                "enabled": self.enabled,
                "title": title,
                "icon_path": icon_path(self.app.icon),
                # A row of its own in JupyterLab's launcher, not "Notebook".
                "category": category or config.LAUNCHER_CATEGORY,
            },
        }
        rewrites = []
        if self.app.page_script is not None:

            def give_secret_to_page(response, path):
                self.give_secret_to_page(response, path)

            rewrites.append(give_secret_to_page)
        if self.app.fix_redirect_host:

            def keep_redirects_here(request, response):
                self.keep_redirects_here(request, response)

            rewrites.append(keep_redirects_here)
        if self.app.parameters:

            def pass_parameters_on(request, response, path):
                self.pass_parameters_on(request, response, path)

            rewrites.append(pass_parameters_on)
        if self.app.answer_unchanged:  # last: after the entry page got no-store

            def answer_unchanged(request, response):
                self.answer_unchanged(request, response)

            rewrites.append(answer_unchanged)
        if rewrites:
            server["rewrite_response"] = rewrites if len(rewrites) > 1 else rewrites[0]
        return validate_server_process(self.app.name, server)


def instance_handler(proxy: AppServerProxy) -> tuple[type, dict]:
    """jupyter-server-proxy's own handler class for one more instance of an app, and the
    state dict it keeps the instance's process in: made by its ``ServerProcess`` from
    the instance's server dict, exactly as it makes the handler of ``/<app>/``."""
    from jupyter_server_proxy.config import ServerProcess

    server = ServerProcess(name=proxy.url_name, **proxy.server_dict())
    handler, kwargs = server.make_proxy_handler()
    if handler is None or set(kwargs) != {"state"}:
        raise InvalidServerProcess(f"jupyter-server-proxy made no handler for {proxy.url_name}")
    return streaming_handler(handler, rewritten_paths(proxy.app)), kwargs["state"]


def _rules(router: object) -> Iterator[Rule]:
    """Every rule of a tornado router, and of the routers it holds, depth first."""
    for rule in getattr(router, "rules", ()):
        yield rule
        yield from _rules(rule.target)


def stream_first_instances(web_app: Application, apps: dict[str, AppSpec]) -> list[str]:
    """Put the streaming mixin in front of the handler class jupyter-server-proxy
    registered for each app's first instance (``/<app>/``, from our entry points), in
    every rule that routes to it; the names of the apps done. Run once every server
    extension has added its routes and before the server takes requests (then the
    rule's state dict, the first instance's, stays jupyter-server-proxy's own)."""
    from jupyter_server_proxy.handlers import SuperviseAndProxyHandler

    base = web_app.settings["base_url"]
    patterns = {url_path_join(base, name, "(.*)") + "$": name for name in apps}
    done = set()
    for rule in [*_rules(web_app.default_router), *_rules(web_app.wildcard_router)]:
        name = patterns.get(getattr(getattr(rule.matcher, "regex", None), "pattern", ""))
        target = rule.target
        if name is None or not isinstance(target, type):
            continue
        if issubclass(target, SuperviseAndProxyHandler):
            rule.target = streaming_handler(target, rewritten_paths(apps[name]))
            done.add(name)
    for name in sorted(set(apps) - done):
        log.warning("%s: no route of jupyter-server-proxy's to stream through", name)
    return sorted(done)


def server_process(app: AppSpec, site: config.SiteConfig | None = None) -> dict:
    """The jupyter-server-proxy dict for ``app``: run our supervisor on a private socket.

    Nothing is created here (this runs when the entry point is loaded, whether or
    not the app is ever opened); everything happens at launch, in the supervisor. The
    site configuration decides the tile's title and whether it is shown at all; a
    disabled app keeps its URL, where the supervisor explains why it is off.
    """
    site = config.load() if site is None else site
    if site.error is not None:
        log.error(
            "%s is disabled: the hpc-proxies site configuration is invalid:\n  %s",
            app.name,
            "\n  ".join(site.error.problems),
        )
    elif app.name in site.apps and not site.apps[app.name].enabled:
        log.info("%s is %s", app.name, site.disabled_reason(app.name))
    return AppServerProxy(app, site).server_dict()
