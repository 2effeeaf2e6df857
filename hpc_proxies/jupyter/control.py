"""The Jupyter server's side of a launcher's control API (see
:mod:`hpc_proxies.launcher.web`), over the 0600 ``control`` socket of the launch.

Every call returns the launcher's JSON, or None when it did not answer (not up yet,
or gone): the caller shows the instance as starting or stopped, never an error.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

#: How long a status or restart question may take (the launcher answers at once; its
#: ``/status`` reads /proc).
CONTROL_TIMEOUT = 5.0


async def ask(
    control: Path,
    method: str,
    path: str,
    params: dict[str, str] | None = None,
    timeout: float = CONTROL_TIMEOUT,
) -> dict[str, Any] | None:
    """``method path`` on the launcher's control socket; its JSON object, or None."""
    if not control.exists():
        return None
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(control)),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as session:
            async with session.request(method, f"http://launcher{path}", params=params) as reply:
                if reply.status != 200:
                    return None
                data = await reply.json()
    except (aiohttp.ClientError, OSError, ValueError, asyncio.TimeoutError):
        return None
    return data if isinstance(data, dict) else None


async def status(control: Path) -> dict[str, Any] | None:
    return await ask(control, "GET", "/status")


async def restart(control: Path) -> dict[str, Any] | None:
    return await ask(control, "POST", "/restart")


async def log(control: Path, since: int, wait: float = 0.0) -> dict[str, Any] | None:
    """The log lines numbered ``since`` and after, waiting up to ``wait`` s for one."""
    params = {"since": str(since), "wait": str(wait)}
    return await ask(control, "GET", "/log", params, timeout=wait + CONTROL_TIMEOUT)
