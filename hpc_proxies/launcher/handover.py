"""The launch socket: the supervisor serves it until the app answers, then hands it over.

jupyter-server-proxy connects to one socket path for the whole launch. The supervisor
listens there at once (the progress page), starts the app on a private socket beside
it, and when the app answers renames the app's socket over its own: the proxy's next
connection reaches the app, with no request lost and no port. When the app exits, the
supervisor listens on the path again.

The listener is our own socket, not an asyncio server: at the hand-over every
connection that already reached us must still be answered (closing an asyncio server
while it accepts leaked such a connection, unanswered). Accepted connections are
served by an aiohttp server (``connect_accepted_socket``).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path


def bind(path: Path) -> socket.socket:
    """A private (0600) listening socket on ``path``, replacing what was there.
    Connections queue on it until someone accepts them."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


class OwnedListener:
    """Our listening socket on ``path``, whose connections go to ``protocol_factory``.
    ``bound`` is a socket :func:`bind` made on ``path`` earlier, to serve first."""

    def __init__(
        self,
        path: Path,
        protocol_factory: Callable[[], asyncio.Protocol],
        log: Callable[[str], None],
        bound: socket.socket | None = None,
    ) -> None:
        self.path = path
        self.protocol_factory = protocol_factory
        self.log = log
        self.sock: socket.socket | None = None
        self._bound = bound
        self._accepting: set[asyncio.Task[object]] = set()

    @property
    def listening(self) -> bool:
        return self.sock is not None

    def listen(self) -> None:
        """Serve on the path (taking it back from an app that has gone)."""
        if self.sock is not None:
            return
        sock, self._bound = self._bound or bind(self.path), None
        self.sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept_waiting, sock)

    def _accept_waiting(self, sock: socket.socket) -> None:
        """Serve every connection waiting on our socket."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                self.log(f"accepting a connection failed: {err}")
                return
            task = loop.create_task(loop.connect_accepted_socket(self.protocol_factory, conn))
            self._accepting.add(task)
            task.add_done_callback(self._accepting.discard)

    def hand_over(self, app_socket: Path) -> None:
        """Put the app's socket at our path, then stop listening: no new connection
        reaches us, and the ones already queued are still served."""
        os.rename(app_socket, self.path)
        self.stop_listening()

    def stop_listening(self) -> None:
        if self.sock is None:
            return
        sock, self.sock = self.sock, None
        asyncio.get_running_loop().remove_reader(sock.fileno())
        self._accept_waiting(sock)
        sock.close()
