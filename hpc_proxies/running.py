"""The ``hpc-proxies ps/stop/restart/logs`` side: find the caller's own running
Jupyter servers and talk to their hpc-proxies API.

Servers are found the way ``jupyter server list`` finds them (the ``jpserver-*.json``
files in the Jupyter runtime directory), and only the caller's own count: the file
and the server's process must both belong to the caller. The token in the file is
what lets the request in; another user's server answers 403 without one.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

API = "hpc-proxies/api"
TIMEOUT = 60.0  # a stop waits until every process is gone


class ServerError(Exception):
    """A server could not be asked, or said no; the message says what to do."""


@dataclass(frozen=True)
class JupyterServer:
    url: str  # with the base URL, ending in "/"
    token: str
    pid: int
    sock: str = ""  # a server on a unix socket

    @property
    def base_path(self) -> str:
        return urlsplit(self.url).path or "/"


def runtime_dir() -> Path:
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir())


def _owned_by_me(path: Path) -> bool:
    try:
        return path.stat().st_uid == os.getuid()
    except OSError:
        return False


def own_servers(directory: Path | None = None) -> list[JupyterServer]:
    """The caller's running Jupyter servers, newest file first."""
    directory = runtime_dir() if directory is None else directory
    found = []
    try:
        files = sorted(directory.glob("jpserver-*.json"), key=_mtime, reverse=True)
    except OSError as err:
        raise ServerError(
            f"no running Jupyter server of yours was found: {directory} cannot be read "
            f"({err.strerror}). Is JUPYTER_RUNTIME_DIR another user's?"
        ) from None
    for info_file in files:
        if not _owned_by_me(info_file):
            continue
        try:
            info = json.loads(info_file.read_text())
            pid = int(info["pid"])
            url = str(info["url"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not _owned_by_me(Path(f"/proc/{pid}")):
            continue  # gone, or another user's process behind a copied file
        found.append(
            JupyterServer(
                url if url.endswith("/") else url + "/",
                str(info.get("token", "")),
                pid,
                str(info.get("sock", "")),
            )
        )
    return found


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def call(
    server: JupyterServer,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    timeout: float = TIMEOUT,
) -> Any:
    """``method`` on ``{server}hpc-proxies/api/{path}``; the JSON answer, or ServerError."""
    parts = urlsplit(server.url)
    connection: http.client.HTTPConnection
    if server.sock:
        connection = _UnixConnection(server.sock, timeout)
    elif parts.scheme == "https":
        connection = http.client.HTTPSConnection(parts.netloc, timeout=timeout)
    else:
        connection = http.client.HTTPConnection(parts.netloc, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if server.token:
        headers["Authorization"] = f"token {server.token}"
    target = f"{server.base_path}{API}/{path}"
    try:
        connection.request(method, target, json.dumps(body) if body is not None else None, headers)
        reply = connection.getresponse()
        raw = reply.read()
    except OSError as err:
        raise ServerError(f"cannot reach the Jupyter server at {server.url}: {err}") from None
    finally:
        connection.close()
    if reply.status == 204:
        return None
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = None
    if reply.status == 403:
        raise ServerError(
            f"{server.url} refused the request (403): it is not your Jupyter server, "
            "or its token changed."
        )
    if reply.status == 404 and not isinstance(data, dict):
        raise ServerError(
            f"{server.url} has no hpc-proxies API: is the hpc_proxies server extension "
            "enabled there? (jupyter server extension list)"
        )
    if reply.status >= 400:
        message = data.get("message") if isinstance(data, dict) else None
        raise ServerError(message or f"{server.url} answered {reply.status}")
    return data


def instance_path(app: str, instance: str) -> str:
    return f"instances/{quote(app, safe='')}/{quote(instance, safe='')}"


def parse_target(target: str) -> tuple[str, str]:
    """``APP`` or ``APP/INSTANCE`` (``APP@INSTANCE`` too, as in the URL)."""
    for separator in ("/", "@"):
        if separator in target:
            app, instance = target.split(separator, 1)
            return app, instance or "default"
    return target, "default"


def follow_log(
    server: JupyterServer, app: str, instance: str, since: int = 1, wait: float = 25.0
) -> Iterator[dict[str, Any]]:
    """The log's lines from ``since`` on, waiting for new ones, for ever (Ctrl-C ends)."""
    while True:
        data = call(server, "GET", f"{instance_path(app, instance)}/log?since={since}&wait={wait}")
        yield from data["lines"]
        since = int(data["next"])
