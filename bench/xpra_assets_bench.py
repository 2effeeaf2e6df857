"""Xpra's HTML5 client: click, page and reload to the first xterm frame, and what the
browser fetches for it, directly and through Jupyter.

    .venv/bin/python bench/xpra_assets_bench.py [--runs 3] [--baseline CHECKOUT]

One chromium, a fresh browser context (empty cache) for each series; the paths
interleaved in every run, so the machine's load hits them alike (medians; the ratio is
via Jupyter / direct).

* click: a fresh launch, from the request (the click on the tile) to the first xterm
  frame on the canvas, the browser's cache empty. Through Jupyter: Xpra killed first,
  then ``/xpra/`` opened (the progress page, then the client). Direct: Xpra started by
  hand with the app module's argv plus a loopback TCP port (bench only; the product
  never opens one), its socket polled every 20 ms, then the page opened with
  ``?password=``;
* reload: the same tab reloaded (the cache warm);
* reclick: a fresh launch again in that tab (the cache warm: a desktop opened again);
* page: Xpra already running, an empty cache;
* what the browser fetched for each (Chrome's network events): requests, how many went
  to the network (and how many of those were 304), the bytes transferred (headers and
  bodies, as Chrome counts them).

``--baseline CHECKOUT`` adds two paths to the same run: a Jupyter server running that
checkout's hpc-proxies (``PYTHONPATH``), and Xpra directly with its own web root
(``--html=on``): before and after a change, under the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    CHROMIUM,
    CHROMIUM_ARGS,
    bench_jupyter,
    direct_launch,
    direct_ready,
    free_port,
    start_jupyter,
    stop_for_a_fresh_launch,
    stop_tree,
)
from xpra_bench import XTERM_DRAWN

from hpc_proxies.xpra import APP

VIEWPORT = {"width": 1280, "height": 800}


@dataclass
class Traffic:
    """What one page load asked for, from Chrome's DevTools network events."""

    requests: set[str] = field(default_factory=set)
    cached: set[str] = field(default_factory=set)
    not_modified: int = 0
    bytes: int = 0

    @property
    def network(self) -> int:
        return len(self.requests - self.cached)

    def __str__(self) -> str:
        return (
            f"{len(self.requests)} requests, {self.network} to the network "
            f"({self.not_modified} x 304), {self.bytes / 1e6:.3f} MB"
        )


async def watch(page) -> list[Traffic]:
    """Count the page's HTTP requests into the last Traffic of the returned list
    (append a new one to start counting afresh)."""
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Network.enable")
    traffic = [Traffic()]

    def sent(event: dict) -> None:
        if event["request"]["url"].startswith("http"):
            traffic[-1].requests.add(event["requestId"])

    def response(event: dict) -> None:
        answer = event["response"]
        if answer.get("fromDiskCache") or answer.get("fromPrefetchCache"):
            traffic[-1].cached.add(event["requestId"])
        elif answer.get("status") == 304:
            traffic[-1].not_modified += 1

    def finished(event: dict) -> None:
        if event["requestId"] in traffic[-1].requests:
            traffic[-1].bytes += int(event.get("encodedDataLength", 0))

    cdp.on("Network.requestWillBeSent", sent)
    cdp.on("Network.requestServedFromCache", lambda e: traffic[-1].cached.add(e["requestId"]))
    cdp.on("Network.responseReceived", response)
    cdp.on("Network.loadingFinished", finished)
    return traffic


async def first_frame(page, t0: float) -> float:
    await page.wait_for_function(XTERM_DRAWN, timeout=60_000, polling=20)
    return time.monotonic() - t0


@dataclass
class Run:
    times: dict[str, float] = field(default_factory=dict)
    traffic: dict[str, Traffic] = field(default_factory=dict)


SCENARIOS = ("click", "reload", "reclick", "page")


async def scenarios(browser, open_fresh, page_url, run: Run) -> None:
    """click (``open_fresh`` starts the app and returns the start time), reload, and
    reclick (a fresh launch again, the browser's cache warm) in one tab; then page (the
    app running, ``page_url()``) in another, empty context."""
    context = await browser.new_context(viewport=VIEWPORT)
    try:
        page = await context.new_page()
        traffic = await watch(page)
        for name in ("click", "reload", "reclick"):
            traffic.append(Traffic())
            if name == "reload":
                t0 = time.monotonic()
                await page.reload()
            else:
                t0 = await open_fresh(page)
            run.times[name] = await first_frame(page, t0)
            run.traffic[name] = traffic[-1]
            await asyncio.sleep(0.5)  # let the client settle (its first frame is in)
    finally:
        await context.close()
    context = await browser.new_context(viewport=VIEWPORT)
    try:
        page = await context.new_page()
        traffic = await watch(page)
        t0 = time.monotonic()
        await page.goto(page_url())
        run.times["page"] = await first_frame(page, t0)
        run.traffic["page"] = traffic[-1]
    finally:
        await context.close()


async def direct_run(browser, extra_args: list[str]) -> Run:
    """Xpra started by hand on a loopback TCP port (plus ``extra_args``)."""
    run = Run()
    with tempfile.TemporaryDirectory(prefix="xpra-assets-bench-") as tmp:
        os.chmod(tmp, 0o700)
        port = free_port()
        url = ""
        started = []

        async def open_fresh(page) -> float:
            nonlocal url
            stop_tree([p.pid for p in started])
            t0 = time.monotonic()
            argv = [f"--bind-tcp=127.0.0.1:{port}", *extra_args]
            procs, launch = direct_launch(APP, Path(tmp), argv)
            started[:] = procs
            while not await direct_ready(APP, launch):
                await asyncio.sleep(0.02)
            password = launch.secret_file.read_text()
            url = f"http://127.0.0.1:{port}/?password={password}&sharing=true"
            await page.goto(url)
            return t0

        try:
            await scenarios(browser, open_fresh, lambda: url, run)
        finally:
            stop_tree([p.pid for p in started])
    return run


async def proxied_run(browser, server) -> Run:
    """A fresh launch through Jupyter, as the click on the tile."""
    run = Run()
    url = f"{server.url}/xpra/?token={server.token}"

    async def open_fresh(page) -> float:
        await asyncio.to_thread(stop_for_a_fresh_launch, server, "xpra")
        t0 = time.monotonic()
        await page.goto(url)
        return t0

    await scenarios(browser, open_fresh, lambda: url, run)
    return run


def report(name: str, results: dict[str, list[Run]]) -> None:
    """Medians of each path; via Jupyter / direct, for this code and the baseline."""
    median = {
        path: statistics.median(r.times[name] for r in runs) for path, runs in results.items()
    }
    line = ", ".join(f"{path} {value:.2f} s" for path, value in median.items())
    ratios = [
        f"{via} / {direct} {median[via] / median[direct]:.2f}"
        for via, direct in (("via Jupyter", "direct"), ("baseline via Jupyter", "baseline direct"))
        if via in median
    ]
    print(f"{name} to first frame: {line}; {'; '.join(ratios)}")
    for path, runs in results.items():
        print(f"    {path:21s} {runs[-1].traffic[name]}  {[round(r.times[name], 2) for r in runs]}")


@contextlib.contextmanager
def jupyter_running(checkout: Path):
    """A Jupyter server whose hpc-proxies (its own and its launchers') is ``checkout``'s."""
    with tempfile.TemporaryDirectory() as tmp:
        server = start_jupyter(Path(tmp), {"PYTHONPATH": str(checkout)})
        try:
            yield server
        finally:
            server.stop_all()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of hpc-proxies to compare with in the same run (e.g. made by "
        "`git worktree add`): its Jupyter path, and Xpra's own web root directly",
    )
    args = parser.parse_args()
    from playwright.async_api import async_playwright

    with contextlib.ExitStack() as stack:
        server = stack.enter_context(bench_jupyter())
        paths = {
            "direct": lambda b: direct_run(b, []),
            "via Jupyter": lambda b: proxied_run(b, server),
        }
        if args.baseline:
            old = stack.enter_context(jupyter_running(args.baseline.resolve()))
            paths["baseline direct"] = lambda b: direct_run(b, ["--html=on"])
            paths["baseline via Jupyter"] = lambda b: proxied_run(b, old)
        results: dict[str, list[Run]] = {path: [] for path in paths}
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for _ in range(args.runs):
                for path, run in paths.items():
                    results[path].append(await run(browser))
            await browser.close()
    for name in SCENARIOS:
        report(name, results)


if __name__ == "__main__":
    asyncio.run(main())
