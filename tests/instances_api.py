"""Talking to a test Jupyter server's hpc-proxies API (``/hpc-proxies/api/``), as the
Running panel and the CLI do."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from processes import cmdline, launcher_runtime_dir
from waiting import until

API = "/hpc-proxies/api/"


def api(
    server,
    method: str,
    path: str,
    body: Any = None,
    token: bool = True,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, Any]:
    """``method`` on ``API + path``: the status and the JSON answer (None if not JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"token {server.token}"
    try:
        conn.request(method, API + path, json.dumps(body) if body is not None else None, sent)
        reply = conn.getresponse()
        raw = reply.read()
    finally:
        conn.close()
    try:
        return reply.status, json.loads(raw) if raw else None
    except ValueError:
        return reply.status, None


def ok(server, method: str, path: str, body: Any = None) -> Any:
    status, data = api(server, method, path, body)
    assert status in (200, 201), (method, path, status, data)
    return data


def listed(server) -> dict[tuple[str, str], dict]:
    """Every instance the API lists, by (app, instance)."""
    return {(i["app"], i["instance"]): i for i in ok(server, "GET", "instances")["instances"]}


def instance(server, app: str, name: str = "default") -> dict:
    return ok(server, "GET", f"instances/{app}/{name}")


def wait_state(server, app: str, name: str, state: str, timeout: float = 60) -> dict:
    """The instance once the API says it is in ``state``."""
    seen: list[dict] = []

    def reached() -> dict | None:
        seen[:] = [instance(server, app, name)]
        return seen[0] if seen[0]["state"] == state else None

    try:
        return until(reached, timeout, f"{app}/{name} to be {state}", interval=0.1)
    except AssertionError as err:
        raise AssertionError(f"{err}: last seen {seen[0] if seen else None}") from None


def launcher_of(server, url_name: str) -> int:
    """The supervisor of the instance at ``/<url_name>/``."""
    for pid in server.descendants():
        argv = cmdline(pid)
        if "hpc_proxies.launcher" in argv and f"/{url_name}/" in argv:
            return pid
    raise AssertionError(f"no launcher for /{url_name}/ under the Jupyter server")


def runtime_dir_of(server, url_name: str) -> Path:
    return launcher_runtime_dir(launcher_of(server, url_name))
