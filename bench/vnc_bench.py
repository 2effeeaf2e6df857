"""VNC desktop start-up time, click-to-connected and memory, vs TigerVNC started directly.

    .venv/bin/python bench/vnc_bench.py [--runs 5] [--browser]

* direct: vncserver and the bridge with exactly the app module's argv, timed from
  exec until the VNC socket greets with ``RFB`` and the bridge answers HTTP;
* proxied: a fresh launch through Jupyter (kill -9 of the VNC server first), from the
  first GET /vnc/ to the bridge's own answer;
* memory: PSS of every process of the session;
* --browser: from opening /vnc/ (a fresh launch, as a click on the tile) to noVNC
  connected with the desktop drawn, and the same with the desktop already running.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from common import (
    bench_jupyter,
    compare_start,
    open_in_chromium,
    stop_for_a_fresh_launch,
)

from hpc_proxies.vnc import APP

CONNECTED = """() => {
    const c = document.querySelector('#noVNC_container canvas');
    return !!(c && c.width > 100 && document.documentElement.classList.contains('noVNC_connected'));
}"""


def browser(server, cold: bool) -> float:
    if cold:
        stop_for_a_fresh_launch(server, "vnc")
    else:
        server.wait_for_app("/vnc/")
    return asyncio.run(open_in_chromium(f"{server.url}/vnc/?token={server.token}", CONNECTED))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--browser", action="store_true")
    args = parser.parse_args()
    with bench_jupyter() as server:
        compare_start(server, APP, "VNC", args.runs)
        if args.browser:
            for cold in (True, False):
                times = [browser(server, cold) for _ in range(max(2, args.runs // 2))]
                label = "click (fresh launch)" if cold else "reopen (desktop running)"
                print(
                    f"{label} to noVNC connected: median {statistics.median(times):.2f} s "
                    f"{[round(x, 2) for x in times]}"
                )


if __name__ == "__main__":
    main()
