"""A launch's web bridge in a process of its own, for the benches' direct path.

    python bench/bridge_process.py SOCKET TARGET WEB_DIR INDEX QUERY

The launcher serves an app's bridge (``AppSpec.bridge``) on its own event loop; a
bench that starts the app by hand (``common.direct_launch``) runs it here instead,
until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from hpc_proxies.bridge import serve_bridge
from hpc_proxies.spec import WebBridge


async def serve(socket_path: Path, bridge: WebBridge) -> None:
    running = await serve_bridge(bridge, socket_path)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await running.stop()


if __name__ == "__main__":
    socket_arg, target, web_dir, index, query = sys.argv[1:6]
    asyncio.run(serve(Path(socket_arg), WebBridge(Path(target), Path(web_dir), index, query)))
