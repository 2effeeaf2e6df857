"""One desktop's memory, idle and after browser connections: PSS of all its launch started.

    .venv/bin/python bench/desktop_memory_bench.py [--apps vnc xpra] [--cycles 10] [--no-glx]

The desktop is alone on the machine (one Jupyter server, one desktop at a time), so
PSS charges it the whole of every library only it uses. It is weighed idle (after
the first browser connection has closed), then again after ``--cycles`` more
connect/disconnect cycles in Chromium: a desktop whose memory grows per connection
shows it there. Figures per program, and the total; and the total USS (the pages only
the desktop's processes map: what one more desktop costs a node where others run).
``--no-glx`` weighs the desktops with ``glx = false`` (no OpenGL in their X server).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from common import CHROMIUM, CHROMIUM_ARGS, USS_FIELDS, bench_jupyter, memory

READY = {
    "vnc": """() => {
        const c = document.querySelector('#noVNC_container canvas');
        return !!(c && c.width > 100
                  && document.documentElement.classList.contains('noVNC_connected'));
    }""",
    "xpra": "() => document.querySelectorAll('canvas').length > 0",
}


async def connect_and_leave(url: str, app: str, cycles: int) -> None:
    """``cycles`` times: open the desktop in a new tab, wait until it draws, close it."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(cycles):
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            await page.goto(url)
            await page.wait_for_function(READY[app], timeout=90_000, polling=100)
            await page.wait_for_timeout(1000)  # a connected desktop, drawing for a moment
            await page.close()
        await browser.close()


def settled_memory(server, app: str) -> tuple[dict[str, float], float]:
    """PSS by program, and the USS total, once the desktop has been idle for a few
    seconds (its buffers drained and the closed connection's clean-up done)."""
    time.sleep(5)
    return memory(server, app), sum(memory(server, app, USS_FIELDS).values())


def show(label: str, measured: tuple[dict[str, float], float]) -> float:
    mem, uss = measured
    total = sum(mem.values())
    parts = ", ".join(f"{name} {mib:.0f}" for name, mib in sorted(mem.items(), key=lambda x: -x[1]))
    print(f"  {label}: {total:.0f} MiB ({parts}); USS {uss:.0f} MiB")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", nargs="+", default=["vnc", "xpra"], choices=["vnc", "xpra"])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--no-glx", action="store_true", help="the desktops with glx = false")
    args = parser.parse_args()
    if args.no_glx:
        site = Path(tempfile.mkdtemp()) / "site.toml"
        site.write_text("[apps.vnc]\nglx = false\n[apps.xpra]\nglx = false\n")
        os.environ["HPC_PROXIES_CONFIG"] = str(site)
    for app in args.apps:
        with bench_jupyter() as server:  # a server of its own: the desktop is alone
            url = f"{server.url}/{app}/?token={server.token}"
            server.wait_for_app(f"/{app}/")
            asyncio.run(connect_and_leave(url, app, 1))
            print(f"{app} desktop, PSS in MiB, alone on the machine")
            idle = show("idle, after one connection", settled_memory(server, app))
            asyncio.run(connect_and_leave(url, app, args.cycles))
            after = show(f"after {args.cycles} more connections", settled_memory(server, app))
            growth = after - idle
            print(f"  growth {growth:+.1f} MiB ({growth / args.cycles:+.2f} per connection)")


if __name__ == "__main__":
    main()
