"""How a ParaView kernel finds the Jupyter server that started it, and asks it things.

The server's ``jpserver-*.json`` file names its URL, token and pid; the kernel picks
the live server that is its ancestor (or ``JPY_PARENT_PID``), never a stale file whose
pid now belongs to another process.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .. import procs
from .errors import JupyterServerNotFound


@dataclass(frozen=True)
class JupyterServer:
    url: str  # ends with the base URL, e.g. http://127.0.0.1:8888/user/me/
    base_url: str
    token: str


def _runtime_dir() -> Path:
    try:
        from jupyter_core.paths import jupyter_runtime_dir
    except ImportError:
        return Path(
            os.environ.get("JUPYTER_RUNTIME_DIR", Path.home() / ".local/share/jupyter/runtime")
        )
    return Path(jupyter_runtime_dir())


def _ancestors() -> list[int]:
    pids, info = [], procs.proc_info(os.getpid())
    while info is not None and info.ppid > 1:
        pids.append(info.ppid)
        info = procs.proc_info(info.ppid)
    return pids


def _server_files() -> list[tuple[Path, dict]]:
    """The ``jpserver-*.json`` files of the runtime directory that can be read."""
    found = []
    for path in sorted(_runtime_dir().glob("jpserver-*.json")):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written or removed by its server right now
        if isinstance(info, dict) and isinstance(info.get("pid"), int) and info.get("url"):
            found.append((path, info))
    return found


def _written_by_its_process(path: Path, info: dict) -> bool:
    """The file's pid runs, and ran when the file was written: a killed Jupyter leaves
    its file behind, and its pid may since belong to another process."""
    started = procs.start_time(info["pid"])
    try:
        written = path.stat().st_mtime
    except OSError:
        return False
    return started is not None and started <= written + 1.0


def _answers(info: dict) -> bool:
    """A Jupyter server answers at the file's URL with the file's token."""
    server = _server_of(info)
    try:
        status, _, _ = server_request(server, "GET", "api/status", timeout=5)
    except OSError:
        return False
    return status == 200


def _server_of(info: dict) -> JupyterServer:
    token = info.get("token") or os.environ.get("JUPYTERHUB_API_TOKEN", "")
    url = info["url"] if info["url"].endswith("/") else info["url"] + "/"
    return JupyterServer(url=url, base_url=info.get("base_url", "/"), token=token)


def find_jupyter_server() -> JupyterServer:
    """The live Jupyter server that started this kernel.

    Its ``jpserver-*.json`` names its pid: the server is this kernel's ancestor, or the
    process that asked for the kernel (``JPY_PARENT_PID``). Stale files (their process
    is gone, or the pid now belongs to a process younger than the file) and servers
    that do not answer are passed over. A kernel started by some other process (a
    gateway, a test) gets the one live server, if there is exactly one."""
    parents = set(_ancestors())
    with contextlib.suppress(ValueError):
        parents.add(int(os.environ.get("JPY_PARENT_PID", "")))
    files = _server_files()
    answering = [
        info for path, info in files if _written_by_its_process(path, info) and _answers(info)
    ]
    mine = [info for info in answering if info["pid"] in parents]
    if not mine:
        mine = answering if len(answering) == 1 else []
        if not mine:
            raise JupyterServerNotFound(
                f"Found {len(answering)} running Jupyter servers in {_runtime_dir()} (and "
                f"{len(files) - len(answering)} stale or silent server files), and none "
                "started this kernel. Run the notebook from JupyterLab, where hpc-proxies "
                "is installed."
            )
    return _server_of(mine[0])


def server_request(server: JupyterServer, method: str, path: str, timeout: float = 30):
    """(status, headers, body) of one request to the Jupyter server, with its token.

    It asks for JSON: while the ParaView service is not running, the tile's launcher
    then answers with its state and any problem as data, not as a page to parse."""
    request = urllib.request.Request(  # noqa: S310 (our own server's http(s) URL)
        server.url + path,
        method=method,
        data=b"" if method == "POST" else None,
        headers={"Accept": "application/json"},
    )
    if server.token:
        request.add_header("Authorization", f"token {server.token}")
    context = None
    if server.url.startswith("https://"):
        # The kernel talks to its own server on this node; its certificate is often
        # self-signed for the node's name.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()
