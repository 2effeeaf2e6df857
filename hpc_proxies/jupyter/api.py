"""The web side of the instance manager: the REST API under ``/hpc-proxies/api/``
and the route of ``/<app>@<instance>/``. Thin handlers: the manager
(:mod:`.instances`) decides, problems come back as values and are rendered here (JSON
for the API, the problem page for a browser).

Every API handler is a Jupyter ``APIHandler``: it needs Jupyter's login (403
without it) and, for a POST or DELETE with the login cookie, the XSRF token. The
paths and fields are a public interface, described in ``docs/users/api.md``.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from urllib.parse import unquote_to_bytes

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.utils import url_path_join
from jupyter_server_proxy.handlers import AddSlashHandler
from tornado import web
from tornado.httputil import HTTPServerRequest
from tornado.iostream import StreamClosedError
from tornado.routing import PathMatches, Router

from .. import pages
from .instances import Instance, InstanceManager, InstanceRefused
from .serverproxy import DEFAULT_INSTANCE, MANAGER_SETTING

API = "hpc-proxies/api"
#: The longest a log request waits for a new line; the stream asks again after it.
LOG_WAIT_MAX = 25.0
AUTH_RESOURCE = "hpc_proxies"


class ManagerHandler(APIHandler):
    """An API handler with the manager and JSON answers for refused requests."""

    auth_resource = AUTH_RESOURCE

    @property
    def manager(self) -> InstanceManager:
        return self.settings[MANAGER_SETTING]

    def answer(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data))

    def refuse(self, refused: InstanceRefused) -> None:
        self.answer(
            {"message": refused.message, "code": refused.problem.code},
            refused.problem.status,
        )

    def instance(self, app: str, name: str) -> Instance | None:
        try:
            return self.manager.get(app, name)
        except InstanceRefused as refused:
            self.refuse(refused)
            return None

    def app_entry(self, app: str) -> dict[str, Any]:
        manager = self.manager
        return {
            "name": app,
            "title": manager.title(app),
            "category": manager.category(app),
            "url": f"{manager.base_url}{app}/",
            "enabled": manager.enabled(app),
            "max_instances": manager.max_instances(app),
            "idle_timeout": manager.idle_timeout(app),
        }


class InstancesHandler(ManagerHandler):
    """``GET``: every app and instance (and the Slurm job's walltime); ``POST``
    ``{"app": ..., "instance"?: ...}``: a new instance (201)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        manager = self.manager
        clock = self.settings.get(JOB_CLOCK_SETTING)
        instances, job = await asyncio.gather(
            manager.describe_all(), clock.get() if clock is not None else _nothing()
        )
        self.answer(
            {
                "apps": [self.app_entry(app) for app in manager.apps],
                "instances": instances,
                "job": job,
            }
        )

    @web.authenticated
    @authorized
    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
            app = str(body["app"])
            name = body.get("instance")
            name = None if name in (None, "") else str(name)
        except (ValueError, KeyError, TypeError, AttributeError):
            self.answer({"message": 'Send {"app": NAME} and, if you like, "instance".'}, 400)
            return
        try:
            instance = self.manager.create(app, name)
        except InstanceRefused as refused:
            self.refuse(refused)
            return
        self.answer(await self.manager.describe(instance), 201)


async def _nothing() -> None:
    return None


class InstanceHandler(ManagerHandler):
    """``GET``: one instance; ``DELETE``: stop it and forget it (not the first)."""

    @web.authenticated
    @authorized
    async def get(self, app: str, name: str) -> None:
        instance = self.instance(app, name)
        if instance is not None:
            self.answer(await self.manager.describe(instance))

    @web.authenticated
    @authorized
    async def delete(self, app: str, name: str) -> None:
        instance = self.instance(app, name)
        if instance is None:
            return
        if name == DEFAULT_INSTANCE:
            self.answer({"message": "The first instance stays; stop it instead."}, 400)
            return
        await self.manager.stop(instance, "stopped")
        self.manager.forget(instance)
        self.set_status(204)
        self.finish()


class ActionHandler(ManagerHandler):
    """``POST .../stop`` and ``POST .../restart``: the instance as it is afterwards."""

    @web.authenticated
    @authorized
    async def post(self, app: str, name: str, action: str) -> None:
        instance = self.instance(app, name)
        if instance is None:
            return
        try:
            if action == "stop":
                await self.manager.stop(instance, "stopped", "stopped by you")
                self.answer(await self.manager.describe(instance))
            else:
                self.answer(await self.manager.restart(instance))
        except InstanceRefused as refused:
            self.refuse(refused)


class StopAllHandler(ManagerHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        stopped = await self.manager.stop_all()
        self.answer({"stopped": [list(key) for key in stopped]})


class LogHandler(ManagerHandler):
    """``GET .../log?since=N&wait=S``: ``{"lines": [{"seq", "time", "text"}], "next"}``."""

    @web.authenticated
    @authorized
    async def get(self, app: str, name: str) -> None:
        instance = self.instance(app, name)
        if instance is None:
            return
        try:
            since = int(self.get_argument("since", "1"))
            wait = min(max(float(self.get_argument("wait", "0")), 0.0), LOG_WAIT_MAX)
        except ValueError:
            self.answer({"message": "since and wait are numbers"}, 400)
            return
        self.answer(await self.manager.read_log(instance, since, wait))


class LogStreamHandler(ManagerHandler):
    """``GET .../log/stream``: the log as server-sent events, one line per event
    (``data: {"seq", "time", "text"}``), from ``?since=N`` on, until the client leaves."""

    closed = False

    def on_connection_close(self) -> None:
        self.closed = True

    @web.authenticated
    @authorized
    async def get(self, app: str, name: str) -> None:
        instance = self.instance(app, name)
        if instance is None:
            return
        try:
            since = int(self.get_argument("since", "1"))
        except ValueError:
            self.answer({"message": "since is a number"}, 400)
            return
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-store")
        while not self.closed:
            reply = await self.manager.read_log(instance, since, LOG_WAIT_MAX)
            for line in reply["lines"]:
                self.write(f"id: {line['seq']}\ndata: {json.dumps(line)}\n\n")
            since = int(reply["next"])
            try:
                await self.flush()
            except StreamClosedError:
                break
            if instance.process is None and not reply["lines"]:
                await asyncio.sleep(1.0)  # stopped: nothing will come until it starts


class InstancePageHandler(JupyterHandler):
    """``/<app>@<instance>/`` of an instance this server does not know yet (a bookmark,
    a link from the launcher): make it, then go on to it; or say why not."""

    def initialize(self, manager: InstanceManager, app: str, name: str) -> None:
        self.manager = manager
        self.app_name = app
        self.instance_name = name

    @web.authenticated
    def get(self, *args: Any) -> None:
        try:
            self.manager.create(self.app_name, self.instance_name)
        except InstanceRefused as refused:
            self.set_status(refused.problem.status)
            home = url_path_join(self.base_url, "lab")
            self.finish(pages.problem_page(refused.title, refused.problem, False, home))
            return
        self.redirect(self.request.uri or "/")


class InstanceRouter(Router):
    """Routes ``{base_url}<app>@<instance>/...`` to jupyter-server-proxy's handler of
    that instance, with the instance's own state. One match and one dict lookup per
    request; websocket messages do not pass here."""

    #: jupyter_server checks that every handler it is given authenticates each of its
    #: methods. A router has none: every handler it picks authenticates each request
    #: (jupyter-server-proxy's in ``prepare``, ours with ``web.authenticated``).
    SUPPORTED_METHODS: tuple[str, ...] = ()

    def __init__(self, web_app: web.Application, manager: InstanceManager) -> None:
        self.web_app = web_app
        self.manager = manager
        apps = "|".join(re.escape(app) for app in manager.apps)
        self.pattern = re.compile(
            re.escape(manager.base_url) + rf"(?P<app>{apps})@(?P<name>[^/]+)(?P<rest>/.*)?$"
        )
        self.matcher = PathMatches(self.pattern.pattern)

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any):
        match = self.pattern.match(request.path)
        if match is None:
            return None
        app, name, rest = match["app"], match["name"], match["rest"]
        if rest is None:
            return self.web_app.get_handler_delegate(request, AddSlashHandler)
        instance = self.manager.instances.get((app, name))
        if instance is None or instance.handler is None:
            return self.web_app.get_handler_delegate(
                request,
                InstancePageHandler,
                {"manager": self.manager, "app": app, "name": name},
            )
        return self.web_app.get_handler_delegate(
            request,
            instance.handler,
            {"state": instance.state},
            path_args=[unquote_to_bytes(rest[1:])],
        )


#: Where the Jupyter server's settings hold the Slurm job's clock (inside a job).
JOB_CLOCK_SETTING = "hpc_proxies_job_clock"


def add_handlers(web_app: web.Application, manager: InstanceManager) -> None:
    """The API's routes and the instances' route, in the Jupyter server."""
    base = web_app.settings["base_url"]
    instance = r"/instances/(?P<app>[a-z][a-z0-9_]*)/(?P<name>[^/]+)"
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, API, "instances"), InstancesHandler),
            (url_path_join(base, API, "stop-all"), StopAllHandler),
            (url_path_join(base, API) + instance, InstanceHandler),
            (url_path_join(base, API) + instance + r"/(?P<action>stop|restart)", ActionHandler),
            (url_path_join(base, API) + instance + "/log", LogHandler),
            (url_path_join(base, API) + instance + "/log/stream", LogStreamHandler),
        ],
    )
    router = InstanceRouter(web_app, manager)
    web_app.add_handlers(".*$", [(router.matcher, router)])
