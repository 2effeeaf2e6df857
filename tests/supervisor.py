"""Running the per-launch supervisor inside a test: one way to make it, serve it and
ask it for a page, for the core's unit tests."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from waiting import until_async

from hpc_proxies import config, pages
from hpc_proxies.launcher import Launcher
from hpc_proxies.layout import LaunchLayout
from hpc_proxies.runtime import ensure_private_dir
from hpc_proxies.spec import AppSpec


def launcher_for(app: AppSpec, runtime: Path, prefix: str = "/demo/") -> Launcher:
    """A supervisor for ``app`` in the private dir ``runtime``, with the default settings
    (never this machine's site configuration)."""
    ensure_private_dir(runtime)
    return Launcher(app, LaunchLayout(runtime / "socket"), prefix, config.load(env={}, files=[]))


@contextlib.asynccontextmanager
async def serving(launcher: Launcher) -> AsyncIterator[Launcher]:
    """The supervisor serving (and starting its app) for the block; stopped after it."""
    await launcher.serve()
    try:
        yield launcher
    finally:
        launcher.request_shutdown(signal.SIGTERM)
        await asyncio.wait_for(launcher.done.wait(), 15)


async def until_failed(launcher: Launcher, timeout: float = 10) -> None:
    await until_async(lambda: launcher.state == "failed", timeout, "the launcher failed")


async def get(
    socket_path: Path, target: str = "/", probe: bool = False, headers: dict | None = None
) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of one GET on ``socket_path``, as the proxy would send it
    (``probe``: as the progress page polls)."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    extra = f"{pages.PROBE_HEADER}: 1\r\n" if probe else ""
    extra += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    lines = head.split("\r\n")
    return int(lines[0].split()[1]), dict(line.split(": ", 1) for line in lines[1:]), body
