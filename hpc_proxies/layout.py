"""Where one launch of an app lives on disk, worked out in one place.

jupyter-server-proxy makes a private directory per launch and names a socket in it;
the Jupyter side (:mod:`hpc_proxies.jupyter.serverproxy`) and the per-launch
supervisor (:mod:`hpc_proxies.launcher`) both derive everything else from that path::

    <runtime dir>/            0700, made by jupyter-server-proxy, removed by the supervisor
        socket                the launch socket: the supervisor's pages, then the app's
        control               the supervisor's control API (0600): status, log, restart
        app/                  0700, fresh for each start of the app, removed at its stop
            app.sock          the app's own socket, renamed over ``socket`` when it answers
            secret            the launch secret (0600), for apps that take one
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .runtime import SECRET_FILE

APP_DIR = "app"
APP_SOCKET = "app.sock"
CONTROL_SOCKET = "control"


@dataclass(frozen=True)
class LaunchLayout:
    """The paths of one launch, from its launch socket."""

    socket: Path

    @property
    def runtime_dir(self) -> Path:
        return self.socket.parent

    @property
    def control(self) -> Path:
        return self.runtime_dir / CONTROL_SOCKET

    @property
    def app_dir(self) -> Path:
        return self.runtime_dir / APP_DIR

    @property
    def app_socket(self) -> Path:
        return self.app_dir / APP_SOCKET

    @property
    def secret_file(self) -> Path:
        return self.app_dir / SECRET_FILE
