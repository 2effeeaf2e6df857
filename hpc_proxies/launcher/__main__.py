"""``python -m hpc_proxies.launcher``: run the supervisor of one launch."""

# ruff: noqa: E402 (the ssl module is blocked before anything is imported)

from __future__ import annotations

import sys

# Unix sockets only, never TLS: without the ssl module, asyncio and aiohttp do not load
# OpenSSL, and aiohttp does not build two contexts from the system's CA store when it is
# imported: 3.4 MiB of every launcher (bench/desktop_memory_bench.py). First, before
# anything imports asyncio. Apps are other processes: theirs is untouched.
sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

import argparse
import asyncio
import os
import signal
import time
from pathlib import Path

from .. import procs
from ..runtime import UnsafeRuntimeDir, ensure_private_dir
from . import __doc__ as description
from .handover import bind


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc_proxies.launcher", description=description)
    parser.add_argument("--app", required=True, help="app name, as in the entry point")
    parser.add_argument("--socket", required=True, type=Path, help="socket to serve on")
    parser.add_argument("--prefix", default="/", help="public URL prefix of the app")
    parser.add_argument("--parent-pid", type=int, default=None, help="the Jupyter server's pid")
    parser.add_argument("--note", default="", help="why this launch happens, for the user")
    args = parser.parse_args(argv)

    procs.become_subreaper()
    procs.signal_on_parent_death(signal.SIGTERM)
    try:
        ensure_private_dir(args.socket.parent)
    except UnsafeRuntimeDir as err:
        sys.stderr.write(f"[hpc-proxies {args.app}] refusing to start: {err}\n")
        time.sleep(2)  # jupyter-server-proxy restarts failed children at once
        return 1
    if args.parent_pid is not None and os.getppid() != args.parent_pid:
        return 0  # the Jupyter server is already gone
    # Listen first: jupyter-server-proxy's readiness check then connects at its next
    # try and waits for the answer, instead of backing off while we import the rest.
    bound = bind(args.socket)
    from .. import config
    from ..apps import load_app
    from ..layout import LaunchLayout
    from .supervisor import Launcher

    launcher = Launcher(
        load_app(args.app),
        LaunchLayout(args.socket),
        args.prefix,
        config.load(),
        parent_pid=args.parent_pid,
        bound=bound,
        note=args.note,
    )
    return asyncio.run(launcher.run())


if __name__ == "__main__":
    sys.exit(main())
