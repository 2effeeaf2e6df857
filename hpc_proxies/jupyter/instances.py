"""The apps a user started in this Jupyter server: list, stop, restart, log, idle.

jupyter-server-proxy starts an app on the first request to its URL and keeps the
process in a per-server ``state`` dict (``proc``, ``unix_socket``, ``proc_lock``);
it has no list, stop or restart. The :class:`InstanceManager` adds them on top of
that state, under jupyter-server-proxy's own lock (its invariant: while the lock is
free, ``proc`` is in the state and running, or not in it at all):

* **stop** ends the launch's supervisor (SIGTERM through simpervisor, which does not
  restart a process it was told to stop); the supervisor stops the app's whole
  process tree and removes the launch's runtime directory. Then ``proc`` and
  ``unix_socket`` leave the state, so the next request starts a fresh launch in a
  new directory, with a new secret.
* **restart** asks the running supervisor (control API): new app processes and secret.
* **instances**: ``/<app>/`` is jupyter-server-proxy's own route; ``/<app>@<name>/``
  are routed here (:mod:`.api`) to handler classes jupyter-server-proxy makes from the
  same server dict (:func:`~.serverproxy.instance_handler`), one state each.
* **idle**: with ``idle_timeout`` set, an instance with no browser connection and no
  proxied request for that long is stopped.

The manager learns of the first instance's state, and of activity, from
jupyter-server-proxy's activity hook (:meth:`activity`). Errors are
:class:`~hpc_proxies.problems.Problem` values in :class:`InstanceRefused`; the web
layer renders them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import config
from ..apps import APP_MODULES, load_app
from ..layout import LaunchLayout
from ..problems import Problem
from ..spec import AppSpec
from . import control
from .serverproxy import DEFAULT_INSTANCE, AppServerProxy, instance_handler

log = logging.getLogger("ServerApp.hpc_proxies")

#: Names a user may give an instance (a URL path segment, and part of a file name).
INSTANCE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
#: How long stopping a launch may take before its supervisor is killed: its own grace
#: for the app's processes, and some more.
STOP_MARGIN = 15.0
#: The longest the idle check waits between looks, whatever the timeouts.
IDLE_CHECK_MAX = 30.0


class InstanceRefused(Exception):
    """A request about instances that cannot be done; ``problem`` says why and what
    to do (its summary follows ``title``), ``problem.status`` is the HTTP status."""

    def __init__(self, title: str, problem: Problem) -> None:
        super().__init__(f"{title} {problem.summary}")
        self.title = title
        self.problem = problem

    @property
    def message(self) -> str:
        """The whole problem as text, for the API and the CLI."""
        return f"{self.title} {self.problem.text()}"


def iso(stamp: float | None) -> str | None:
    """A wall-clock time for JSON (UTC, ISO 8601)."""
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")


def minutes(value: float) -> str:
    return f"{value:g} min"


@dataclass
class Instance:
    """One instance of an app: jupyter-server-proxy's state for it, and what we know."""

    app: AppSpec
    name: str
    proxy: AppServerProxy
    #: jupyter-server-proxy's state dict for this instance's handler (None until it
    #: served the first instance once).
    state: dict[str, Any] | None
    #: jupyter-server-proxy's handler class (instances other than the first).
    handler: type | None = None
    last_activity: float = field(default_factory=time.time)
    last_exit: dict[str, Any] | None = None
    #: The log as it was when the instance was stopped (its supervisor is gone).
    last_log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return (self.app.name, self.name)

    @property
    def process(self):
        """jupyter-server-proxy's process of the launch (simpervisor), if one runs."""
        proc = self.state.get("proc") if self.state else None
        return proc if proc is not None and getattr(proc, "running", False) else None

    @property
    def layout(self) -> LaunchLayout | None:
        socket = self.state.get("unix_socket") if self.state else None
        return LaunchLayout(Path(socket)) if socket else None


class InstanceManager:
    """Every instance of every app in this Jupyter server (see the module's doc)."""

    def __init__(self, site: config.SiteConfig, base_url: str) -> None:
        self.site = site
        self.base_url = base_url
        self.apps: dict[str, AppSpec] = {name: load_app(name) for name in APP_MODULES}
        self.instances: dict[tuple[str, str], Instance] = {}
        self._idle_task: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- settings
    def enabled(self, app: str) -> bool:
        return self.site.error is None and self.site.for_app(app).enabled

    def title(self, app: str) -> str:
        return str(self.site.for_app(app)["title"])

    def category(self, app: str) -> str:
        """The launcher's section of the app's tiles (``category``: "HPC apps")."""
        return str(self.site.for_app(app)["category"])

    def max_instances(self, app: str) -> int:
        return int(self.site.for_app(app)["max_instances"])  # type: ignore[call-overload]

    def idle_timeout(self, app: str) -> float | None:
        value = self.site.for_app(app)["idle_timeout"]
        return float(value) if value else None  # type: ignore[arg-type]

    def url(self, instance: Instance) -> str:
        return f"{self.base_url}{instance.proxy.url_name}/"

    # ---------------------------------------------------------------- finding
    def activity(self, proxy: AppServerProxy, state: dict[str, Any]) -> None:
        """jupyter-server-proxy proxied a request or message for ``proxy``'s instance."""
        instance = self.instances.get((proxy.app.name, proxy.instance))
        if instance is None:
            # The first instance, served by jupyter-server-proxy's own route.
            instance = Instance(proxy.app, proxy.instance, proxy, state)
            self.instances[instance.key] = instance
        instance.state = state
        instance.last_activity = time.time()

    def get(self, app: str, name: str) -> Instance:
        """The instance ``app``/``name``, or InstanceRefused (404) saying what exists."""
        if app not in self.apps:
            raise InstanceRefused(
                "hpc-proxies",
                Problem(
                    "unknown-app",
                    f"has no app called {app!r}.",
                    details=("The apps are " + ", ".join(sorted(self.apps)) + ".",),
                    status=404,
                ),
            )
        instance = self.instances.get((app, name))
        if instance is None:
            if name == DEFAULT_INSTANCE:
                return self._unseen_default(app)
            raise InstanceRefused(
                self.title(app),
                Problem(
                    "unknown-instance",
                    f"has no instance called {name!r}.",
                    fix="Start a new instance from the Running panel or the launcher.",
                    status=404,
                ),
            )
        return instance

    def _unseen_default(self, app: str) -> Instance:
        """The first instance before jupyter-server-proxy served it: not running."""
        return Instance(
            self.apps[app], DEFAULT_INSTANCE, AppServerProxy(self.apps[app], self.site), None
        )

    def others(self, app: str) -> list[Instance]:
        """The instances of ``app`` other than the first."""
        return [i for (a, n), i in self.instances.items() if a == app and n != DEFAULT_INSTANCE]

    def all(self) -> list[Instance]:
        """Every instance, the first of each enabled app included, in a stable order."""
        listed = []
        for app in self.apps:
            first = self.instances.get((app, DEFAULT_INSTANCE))
            if first is not None:
                listed.append(first)
            elif self.enabled(app):
                listed.append(self._unseen_default(app))
            listed += sorted(self.others(app), key=lambda i: i.name)
        return listed

    # ---------------------------------------------------------------- creating
    def create(self, app: str, name: str | None = None) -> Instance:
        """A new instance of ``app`` (not started: its URL starts it), or the one
        called ``name`` if it exists. Past ``max_instances``, stopped instances are
        forgotten to make room; if all run, InstanceRefused (409) says so."""
        if app not in self.apps:
            self.get(app, DEFAULT_INSTANCE)  # raises the 404
        title = self.title(app)
        if not self.enabled(app):
            raise InstanceRefused(
                title,
                Problem(
                    "disabled",
                    "is not available here.",
                    details=(f"It is {self.site.disabled_reason(app)}.",),
                    status=403,
                ),
            )
        if name is not None:
            if not INSTANCE_NAME.fullmatch(name) or name == DEFAULT_INSTANCE:
                raise InstanceRefused(
                    title,
                    Problem(
                        "bad-instance-name",
                        f"cannot have an instance called {name!r}.",
                        details=(
                            "A name is 1 to 32 lower-case letters, digits and dashes, "
                            "starting with a letter or digit, and not 'default'.",
                        ),
                        status=400,
                    ),
                )
            if (app, name) in self.instances:
                return self.instances[(app, name)]
        limit = self.max_instances(app)
        others = self.others(app)
        if len(others) >= limit - 1:
            for stopped in [i for i in others if i.process is None]:
                del self.instances[stopped.key]
                others.remove(stopped)
                if len(others) < limit - 1:
                    break
        if len(others) >= limit - 1:
            raise InstanceRefused(title, self._limit_problem(app, limit))
        if name is None:
            taken = {i.name for i in others}
            name = str(next(n for n in range(2, 2 + limit + len(taken)) if str(n) not in taken))
        proxy = AppServerProxy(self.apps[app], self.site, name)
        handler, state = instance_handler(proxy)
        instance = Instance(self.apps[app], name, proxy, state, handler)
        self.instances[instance.key] = instance
        log.info("%s: new instance %r at %s", app, name, self.url(instance))
        return instance

    def _limit_problem(self, app: str, limit: int) -> Problem:
        title = self.title(app)
        if limit == 1:
            return Problem(
                "instance-limit",
                f"runs as one instance per user here (max_instances = {limit}).",
                fix=f"Use the {title} you already have at /{app}/.",
                status=409,
            )
        return Problem(
            "instance-limit",
            f"already runs {limit} instances, the most this site allows (max_instances = {limit}).",
            fix="Stop one of them first (Running panel, or `hpc-proxies stop`).",
            status=409,
        )

    def forget(self, instance: Instance) -> None:
        if instance.name != DEFAULT_INSTANCE:
            self.instances.pop(instance.key, None)

    # ---------------------------------------------------------------- describing
    async def describe(self, instance: Instance) -> dict[str, Any]:
        """What the API and the Running panel say about ``instance``."""
        now = time.time()
        data: dict[str, Any] = {
            "app": instance.app.name,
            "instance": instance.name,
            "title": self.title(instance.app.name),
            "url": self.url(instance),
            "state": "stopped",
            "started": None,
            "uptime": None,
            "memory": None,
            "pids": [],
            "connections": 0,
            "connected": False,
            "last_activity": iso(instance.last_activity if instance.state else None),
            "idle_timeout": self.idle_timeout(instance.app.name),
            "last_exit": instance.last_exit,
            "problem": None,
            "note": "",
        }
        process, layout = instance.process, instance.layout
        if process is None or layout is None:
            return data
        status = await control.status(layout.control)
        if status is None:  # the supervisor is not answering yet
            data.update(state="starting", pids=[process.pid])
            return data
        connections = int(status.get("connections") or 0)
        if connections:
            instance.last_activity = now
        started = status.get("ready") or status.get("started")
        data.update(
            state=status["state"],
            started=iso(started),
            uptime=round(now - started, 1) if started else None,
            memory=status.get("memory"),
            pids=status.get("pids", []),
            connections=connections,
            connected=connections > 0,
            last_activity=iso(instance.last_activity),
            problem=status.get("problem"),
            note=status.get("note", ""),
        )
        app_exit = status.get("last_exit")
        if app_exit and (instance.last_exit is None or app_exit["at"] > instance.last_exit["at"]):
            data["last_exit"] = {
                **app_exit,
                "at": iso(app_exit["at"]),
                "reason": "exited",
                "description": f"ended by itself ({app_exit['description']})",
            }
        return data

    async def describe_all(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self.describe(i) for i in self.all())))

    # ---------------------------------------------------------------- acting
    async def stop(
        self, instance: Instance, reason: str = "stopped", description: str = ""
    ) -> bool:
        """Stop ``instance``'s launch and everything it runs; True if one was running.
        Waits until every process is gone and the runtime directory removed."""
        state = instance.state
        if state is None or "proc_lock" not in state:
            return False
        async with state["proc_lock"]:
            process, layout = instance.process, instance.layout
            if process is None:
                return False
            if layout is not None:
                reply = await control.log(layout.control, 1)
                instance.last_log = list(reply["lines"]) if reply else []
            started = time.monotonic()
            try:
                await asyncio.wait_for(process.terminate(), instance.app.stop_grace + STOP_MARGIN)
            except asyncio.TimeoutError:
                log.warning("%s did not stop in time; killing its supervisor", instance.key)
                os.kill(process.pid, signal.SIGKILL)
                await process.proc.wait()
            state.pop("proc", None)
            state.pop("unix_socket", None)  # the next launch gets a new directory
            took = time.monotonic() - started
        title = self.title(instance.app.name)
        instance.last_exit = {
            "at": iso(time.time()),
            "code": None,
            "signal": 15,
            "reason": reason,
            "description": description or reason,
        }
        if reason == "idle":
            instance.proxy.next_note = (
                f"{title} was stopped after {description.removeprefix('stopped: idle for ')} "
                "without use; it is starting again."
            )
        else:
            instance.proxy.next_note = f"{title} was {description or reason}; it is starting again."
        log.info(
            "%s %s: %s in %.2f s", instance.app.name, instance.name, description or reason, took
        )
        return True

    async def restart(self, instance: Instance) -> dict[str, Any]:
        """New app processes and a new secret, under the same URL."""
        layout = instance.layout
        if instance.process is None or layout is None:
            raise InstanceRefused(
                self.title(instance.app.name),
                Problem(
                    "not-running",
                    "is not running.",
                    fix=f"Open {self.url(instance)} to start it.",
                    status=409,
                ),
            )
        if await control.restart(layout.control) is None:
            raise InstanceRefused(
                self.title(instance.app.name),
                Problem(
                    "no-answer",
                    "did not answer the restart.",
                    details=("Its supervisor may be starting or stopping right now.",),
                    fix="Try again in a moment, or stop it and open it again.",
                    status=503,
                ),
            )
        return await self.describe(instance)

    async def stop_all(self) -> list[tuple[str, str]]:
        instances = self.all()
        stopped = await asyncio.gather(*(self.stop(i, "stopped") for i in instances))
        return [i.key for i, was in zip(instances, stopped, strict=True) if was]

    async def read_log(self, instance: Instance, since: int, wait: float = 0.0) -> dict[str, Any]:
        """The log lines numbered ``since`` and after: the running launch's, or the
        last ones kept when the instance stopped."""
        layout = instance.layout
        if instance.process is not None and layout is not None:
            reply = await control.log(layout.control, since, wait)
            if reply is not None:
                return reply
        lines = [line for line in instance.last_log if int(line["seq"]) >= since]
        following = int(instance.last_log[-1]["seq"]) + 1 if instance.last_log else 1
        return {"lines": lines, "next": max(following, since)}

    # ---------------------------------------------------------------- idle
    def start_idle_checks(self) -> None:
        """Stop idle instances from now on, if any app has an ``idle_timeout``."""
        timeouts = [t for app in self.apps if (t := self.idle_timeout(app))]
        if timeouts and self._idle_task is None:
            period = min(IDLE_CHECK_MAX, max(0.5, min(timeouts) * 60 / 4))
            self._idle_task = asyncio.get_running_loop().create_task(self._idle_loop(period))

    async def _idle_loop(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await self.check_idle()
            except Exception:
                log.exception("the idle check failed; trying again in %.0f s", period)

    async def check_idle(self) -> list[tuple[str, str]]:
        """Stop every instance idle for longer than its app's ``idle_timeout``."""
        stopped = []
        for instance in list(self.instances.values()):
            timeout = self.idle_timeout(instance.app.name)
            if timeout is None or instance.process is None:
                continue
            data = await self.describe(instance)
            if data["state"] == "starting" or data["connected"]:
                continue
            if time.time() - instance.last_activity >= timeout * 60:
                await self.stop(instance, "idle", f"stopped: idle for {minutes(timeout)}")
                stopped.append(instance.key)
        return stopped

    async def close(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
