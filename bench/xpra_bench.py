"""Xpra start-up time and memory: through hpc-proxies and Jupyter vs Xpra started directly.

    .venv/bin/python bench/xpra_bench.py [--runs 5] [--browser]

Both paths run in the same process, interleaved, on the same machine, so the ratio
(proxied / direct) is what to compare; absolute seconds depend on the load.
* direct: Xpra with exactly the argv the app module builds, timed from exec to the
  first HTTP answer on its socket;
* proxied: a fresh launch through Jupyter (kill -9 of Xpra before each run), timed
  from the first GET /xpra/ to the first response that comes from Xpra itself;
* memory: PSS of every process of the session, the launcher's share shown apart;
* --browser: time from opening the page to the first xterm frame on the canvas, via
  Jupyter vs Xpra on a loopback TCP port (bench only; the product never opens one).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from common import (
    bench_jupyter,
    compare_start,
    direct_launch,
    direct_ready,
    free_port,
    open_in_chromium,
    report,
    stop_for_a_fresh_launch,
    stop_tree,
)

from hpc_proxies.xpra import APP

XTERM_DRAWN = """() => {
    for (const c of document.querySelectorAll('#screen .window canvas')) {
        if (c.width < 100 || c.height < 100) continue;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let white = 0;
        for (let i = 0; i < d.length; i += 4 * 97)
            if (d[i] > 240 && d[i + 1] > 240 && d[i + 2] > 240) white++;
        if (white > d.length / (4 * 97) / 2) return true;
    }
    return false;
}"""


def browser_direct(cold: bool) -> float:
    """Xpra on a loopback TCP port, opened directly; cold includes starting Xpra."""
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o700)
        port = free_port()
        t0 = time.monotonic()
        started, launch = direct_launch(APP, Path(tmp), [f"--bind-tcp=127.0.0.1:{port}"])
        try:
            while not asyncio.run(direct_ready(APP, launch)):
                time.sleep(0.02)
            password = launch.secret_file.read_text()
            url = f"http://127.0.0.1:{port}/?password={password}&sharing=true"
            return asyncio.run(open_in_chromium(url, XTERM_DRAWN, t0 if cold else None))
        finally:
            stop_tree([p.pid for p in started])


def browser_proxied(server, cold: bool) -> float:
    """Through Jupyter; cold is a fresh launch (the click on the tile), warm a reload."""
    if cold:
        stop_for_a_fresh_launch(server, "xpra")
    else:
        server.wait_for_app("/xpra/")
    url = f"{server.url}/xpra/?token={server.token}"
    return asyncio.run(open_in_chromium(url, XTERM_DRAWN))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--browser", action="store_true", help="also time the first frame")
    args = parser.parse_args()

    with bench_jupyter() as server:
        compare_start(server, APP, "Xpra", args.runs)
        if args.browser:
            for cold in (True, False):
                fd, fp = [], []
                for _ in range(max(2, args.runs // 2)):
                    fd.append(browser_direct(cold))
                    fp.append(browser_proxied(server, cold))
                label = "start + page" if cold else "page, app running"
                report(f"First xterm frame ({label})", fd, fp, direct_name="direct TCP")


if __name__ == "__main__":
    main()
