"""How the supervisor knows an app is ready: its sockets answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from ..spec import AppSpec, Launch

READY_POLL = 0.05


async def http_answers(socket_path: Path, path: str, timeout: float) -> bool:
    """True once something answers an HTTP request on ``socket_path`` (any status)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket_path)), 1)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        if line.startswith(b"HTTP/"):
            await drain_briefly(reader)
            return True
        return False
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        writer.close()


#: What the readiness probe reads of an answer after its status line, at most.
DRAIN_BYTES = 256 * 1024
DRAIN_SECONDS = 1.0


async def drain_briefly(reader: asyncio.StreamReader) -> None:
    """Read the rest of an HTTP/1.0 answer (the app then closes), up to DRAIN_BYTES or
    DRAIN_SECONDS: a probe that hung up after the status line made apps that write
    their body in a second write fail with a broken pipe (and log a traceback)."""
    left = DRAIN_BYTES
    deadline = asyncio.get_running_loop().time() + DRAIN_SECONDS
    while left > 0:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return
        try:
            chunk = await asyncio.wait_for(reader.read(min(left, 65536)), remaining)
        except (OSError, asyncio.TimeoutError):
            return  # the answer was seen; the rest does not matter
        if not chunk:
            return
        left -= len(chunk)


async def greets(socket_path: Path, banner: bytes, timeout: float) -> bool:
    """True once a connection to ``socket_path`` is greeted with ``banner`` (e.g. b"RFB ")."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket_path)), 1)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        return (await asyncio.wait_for(reader.readexactly(len(banner)), timeout)) == banner
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()


async def wait_until_ready(
    app: AppSpec, launch: Launch, deadline: float, wanted: Callable[[], bool]
) -> bool | None:
    """Poll the app's socket (HTTP) and its other sockets (``ready_banners``) until they
    answer (True), ``deadline`` (``time.monotonic``) passes (False), or the start is no
    longer ``wanted`` (None)."""
    while wanted():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        wait = min(remaining, 5.0)
        if await http_answers(launch.socket, app.ready_path, wait):
            banners = app.ready_banners(launch) if app.ready_banners else []
            if all([await greets(path, banner, wait) for path, banner in banners]):
                return True
        await asyncio.sleep(READY_POLL)
    return None
