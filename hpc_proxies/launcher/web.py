"""The supervisor's HTTP side, on aiohttp: thin routes over the :class:`Launcher`.

On the launch socket (until the app answers there), every path gets the page for the
current state: the progress page (202) while the app starts, the problem's page when
it cannot, or JSON for the progress page's probe (``PROBE_HEADER``) and for programs
(``Accept: application/json``: the ParaView kernel client). A request for the page
also starts a stopped app.

On the control socket (0600, beside the launch socket), the Jupyter server
(:mod:`hpc_proxies.jupyter`) asks and tells the supervisor:

* ``POST /params``: a URL parameter chosen while the app runs;
* ``GET /status``: state, processes, memory, connections, last exit (the Running panel);
* ``GET /log?since=N&wait=S``: the log lines numbered N and after, waiting up to S
  seconds for a first one;
* ``POST /restart``: stop the app and start it again (or start it, if it is stopped).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from aiohttp import web

from .. import pages
from ..problems import Problem
from . import lifecycle as lc
from .handover import OwnedListener
from .params import Choice, request_origin
from .supervisor import Launcher

LAUNCHER = web.AppKey("launcher", Launcher)
PAGE_TAIL = 15
#: How long the progress page's probe is held while the app starts (the page shows the
#: seconds and the log's tail from each answer).
PROBE_HOLD = 0.5
HTML = "text/html"


def page_app(launcher: Launcher) -> web.Application:
    app = web.Application()
    app[LAUNCHER] = launcher
    app.router.add_route("*", "/{path:.*}", page)
    return app


def control_app(launcher: Launcher) -> web.Application:
    app = web.Application()
    app[LAUNCHER] = launcher
    app.router.add_post("/params", take_parameters)
    app.router.add_get("/status", status)
    app.router.add_get("/log", read_log)
    app.router.add_post("/restart", restart)
    return app


def respond(
    launcher: Launcher,
    status: int,
    body: str,
    content_type: str = HTML,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """One of our answers: marked as ours, never cached, on a connection that closes
    (the next request may have to reach the app, on the same path)."""
    response = web.Response(
        status=status,
        text=body,
        content_type=content_type,
        headers={
            pages.STATE_HEADER: launcher.state,
            "Cache-Control": "no-store",
            **(headers or {}),
        },
    )
    if status in (202, 503):
        response.headers["Retry-After"] = "1"
    response.force_close()
    return response


def status_json(launcher: Launcher, problem: Problem | None = None) -> str:
    return pages.status_json(
        app=launcher.app.name,
        state=launcher.state,
        elapsed=launcher.elapsed(),
        timeout=launcher.timeout,
        tail=list(launcher.tail)[-PAGE_TAIL:],
        problem=problem.to_json() if problem is not None else None,
    )


def problem_html(launcher: Launcher, problem: Problem) -> str:
    return pages.problem_page(
        launcher.title, problem, retry=not problem.permanent, home=launcher.home_url
    )


def confirm_html(launcher: Launcher, choice: Choice) -> str:
    return pages.confirm_page(
        launcher.title, list(choice.changes), keep_url=launcher.prefix, running=launcher.active
    )


async def settle_choice(
    launcher: Launcher, query: Mapping[str, list[str]], origin: str
) -> tuple[str, int, str]:
    """Apply a request's URL parameters: (result, status, page), the page "" unless the
    request is to be answered with it ("error" or "confirm") instead of going on."""
    choice = await launcher.params.choose(query, origin, active=launcher.active)
    if choice.result == "switching":
        launcher.dispatch(lc.Relaunch())
    elif choice.result == "error" and choice.problem is not None:
        return choice.result, choice.problem.status, problem_html(launcher, choice.problem)
    elif choice.result == "confirm":
        return choice.result, 409, confirm_html(launcher, choice)
    return choice.result, 0, ""


async def page(request: web.Request) -> web.Response:
    launcher = request.app[LAUNCHER]
    if pages.PROBE_HEADER in request.headers:
        # Held while the app starts (at most PROBE_HOLD): the page reloads the moment
        # the app answers, instead of at its next poll.
        await launcher.while_starting(PROBE_HOLD)
        return respond(launcher, 200, status_json(launcher), "application/json")
    if launcher.app.parameters:
        query = {key: request.query.getall(key) for key in request.query}
        result, status, body = await settle_choice(launcher, query, request_origin(request.headers))
        if body:
            framing = dict([pages.FRAME_POLICY]) if result == "confirm" else {}
            return respond(launcher, status, body, headers=framing)
    launcher.dispatch(lc.Requested())
    wants_json = "application/json" in request.headers.get("Accept", "")
    state = launcher.lifecycle
    if state.phase == lc.Phase.FAILED and state.problem is not None:
        launcher.dispatch(lc.ProblemShown())  # a passing problem is shown once
        if wants_json:
            body = status_json(launcher, state.problem)
            return respond(launcher, state.problem.status, body, "application/json")
        return respond(launcher, state.problem.status, problem_html(launcher, state.problem))
    if wants_json:
        return respond(launcher, 202, status_json(launcher), "application/json")
    html = pages.progress_page(
        launcher.title,
        launcher.elapsed(),
        launcher.timeout,
        list(launcher.tail)[-PAGE_TAIL:],
        state.note,
    )
    # 202 Accepted: the start is under way. (A 5xx would also have the Jupyter server
    # log every progress page as an error, with the request's headers.)
    return respond(launcher, 202, html)


async def take_parameters(request: web.Request) -> web.Response:
    """``{"params": {...}, "origin": ...}`` in (``origin``: :func:`request_origin` of
    the browser's request; without it the request counts as one from another site);
    ``{"result": ...}`` out, with the page and our state for "error" and "confirm"."""
    launcher = request.app[LAUNCHER]
    try:
        message = json.loads(await request.text())
        params = {str(k): [str(v)] for k, v in message["params"].items()}
        origin = str(message.get("origin", "unknown"))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        launcher.log(f"ignored a control request that is not ours ({type(err).__name__})")
        return web.json_response({"error": "not a control request"}, status=400)
    result, status, body = await settle_choice(launcher, params, origin)
    reply: dict[str, object] = {"result": result}
    if body:
        reply.update(status=status, page=body, state=launcher.state)
    return web.json_response(reply)


#: The longest a log reader may wait for a new line (a long poll, not a stream).
LOG_WAIT_MAX = 30.0


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[LAUNCHER].status())


async def read_log(request: web.Request) -> web.Response:
    """``{"lines": [{"seq", "time", "text"}...], "next": N}``: ask again with ``since=N``."""
    launcher = request.app[LAUNCHER]
    try:
        since = int(request.query.get("since", "1"))
        wait = min(max(float(request.query.get("wait", "0")), 0.0), LOG_WAIT_MAX)
    except ValueError:
        return web.json_response({"error": "since and wait are numbers"}, status=400)
    lines = await launcher.logbook.wait_since(since, wait)
    return web.json_response({"lines": lines, "next": launcher.logbook.next_seq})


async def restart(request: web.Request) -> web.Response:
    launcher = request.app[LAUNCHER]
    launcher.restart()
    return web.json_response(launcher.status())


async def serve_web(launcher: Launcher) -> tuple[OwnedListener, list[web.AppRunner]]:
    """Serve the pages on the launch socket (listening at once) and the control API on
    its own 0600 socket."""
    pages.warm_up()
    pages_runner = web.AppRunner(page_app(launcher), access_log=None)
    await pages_runner.setup()
    assert pages_runner.server is not None
    listener = OwnedListener(
        launcher.layout.socket, pages_runner.server, launcher.log, bound=launcher.bound
    )
    listener.listen()
    control = launcher.layout.control
    control.unlink(missing_ok=True)
    control_runner = web.AppRunner(control_app(launcher), access_log=None)
    await control_runner.setup()
    await web.UnixSite(control_runner, str(control)).start()
    os.chmod(control, 0o600)
    return listener, [pages_runner, control_runner]
