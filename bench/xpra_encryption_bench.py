"""Xpra's AES encryption: frames/s and CPU, encrypted vs plain, through Jupyter, in chromium.

    .venv/bin/python bench/xpra_encryption_bench.py [--runs 3] [--seconds 10]
        [--workload xterm|scroll|noise] [--size 400x300]

Two Jupyter servers run side by side with the same desktop (desktop_stream_bench's
workloads; by default an xterm of 150x48 printing random hex at full speed with ``od``:
many small updates), one whose site configuration says ``[apps.xpra] encryption =
"AES"`` and one without it. Chromium (1280x800, a fresh browser each time) opens
``/xpra/`` of each in turn, as a user does, alternating which goes first; while one
desktop is measured, the other's session (its xterm and what runs in it) is stopped
(SIGSTOP), so that the two do not compete for the CPU.

Measured over ``--seconds``, once the client draws:

* frames/s: the ``draw`` packets the HTML5 client processed (desktop_stream_bench's
  hook on ``XpraClient._process_draw_queue``);
* CPU (utime + stime of all threads; in % of a core and in ms per frame) of Xpra (the
  process that encodes and encrypts), of the Jupyter server (which passes the stream
  on, encrypted or not), and of chromium's processes (whose HTML5 client decrypts, with
  forge.js, in a worker);
* MB/s that the Jupyter server sent to the browser (the kernel's TCP counters).

Reported: each path's median and runs, and the ratio encrypted / plain. A load that the
client leaves for ``connect.html`` (Xpra refused it) is loaded again, and counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from common import CHROMIUM, CHROMIUM_ARGS, start_jupyter
from desktop_stream_bench import REPAINT, WORKLOADS, XPRA_HOOK, bytes_sent, cpu_seconds
from processes import cmdline, find_process

from hpc_proxies import procs

PATHS = ("plain", "encrypted")
SITE = "[apps.xpra]\nsession = {session}\n"
ENCRYPTED = 'encryption = "AES"\n'
#: The client is drawing, or Xpra refused it and the page went to connect.html.
CONNECTED_OR_REFUSED = """() => location.pathname.endsWith('connect.html')
    || !!(window.client && window.client.connected)"""
REFUSALS_ALLOWED = 10


class Desktop:
    """One Jupyter server's Xpra desktop: the processes to weigh and to pause."""

    def __init__(self, server) -> None:
        self.server = server
        server.wait_for_app("/xpra/", timeout=120)
        launcher = server.launcher_pid("xpra")
        session = procs.descendants(launcher)
        self.xpra = find_process(session, "/usr/bin/xpra")
        self.url = f"{server.url}/xpra/?token={server.token}"
        self.session()  # fails now if the session's program is not running

    def session(self) -> set[int]:
        """What the desktop runs (the xterm, or the noise window, and the programs
        under it): what Xpra started, but its X server."""
        started = {
            info.pid
            for info in procs.all_processes()
            if info.ppid == self.xpra
            and (argv := cmdline(info.pid))
            and not Path(argv[0]).name.startswith("Xvfb")
        }
        assert started, f"no session program under Xpra {self.xpra}"
        return started.union(*(procs.descendants(pid) for pid in started))

    def pause(self) -> None:
        procs.send(self.session(), signal.SIGSTOP)

    def resume(self) -> None:
        procs.send(self.session(), signal.SIGCONT)


def chromium_pids() -> set[int]:
    """Chromium's processes (browser, renderer, GPU, utility): below this process,
    through playwright's driver."""
    return {
        pid
        for pid in procs.descendants(os.getpid())
        if (argv := cmdline(pid)) and "chrom" in Path(argv[0]).name
    }


def cpu_of(pids: set[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        try:
            found[pid] = cpu_seconds(pid)
        except (OSError, IndexError):
            pass  # gone meanwhile
    return found


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds of the processes seen at both ends."""
    return sum(after[pid] - before[pid] for pid in before.keys() & after.keys())


async def measure(desktop: Desktop, seconds: float) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        refused = 0
        while True:
            await page.goto(desktop.url)
            await page.wait_for_function(CONNECTED_OR_REFUSED, timeout=90_000, polling=50)
            if not page.url.endswith("connect.html"):
                break
            refused += 1
            if refused > REFUSALS_ALLOWED:
                text = await page.inner_text("body")
                raise SystemExit(f"Xpra refused {refused} loads of {desktop.url}: {text}")
        await page.evaluate(XPRA_HOOK)
        await page.wait_for_function("window.benchFrames > 2", timeout=30_000, polling=50)
        chromium = chromium_pids()
        processes = {"xpra": {desktop.xpra}, "jupyter": {desktop.server.proc.pid}}
        processes["chromium"] = chromium
        cpu0 = {name: cpu_of(pids) for name, pids in processes.items()}
        out0 = bytes_sent(desktop.server.port)
        frames0, t0 = await page.evaluate("window.benchFrames"), time.monotonic()
        await asyncio.sleep(seconds)  # the measuring window
        frames1, t1 = await page.evaluate("window.benchFrames"), time.monotonic()
        cpu1 = {name: cpu_of(pids) for name, pids in processes.items()}
        out1 = bytes_sent(desktop.server.port)
        encryption = await page.evaluate("() => window.client.encryption || null")
        await browser.close()
    elapsed = t1 - t0
    frames = frames1 - frames0
    result = {
        "fps": frames / elapsed,
        "mb_per_s": (out1 - out0) / 1e6 / elapsed,
        "refused": refused,
        "encryption": encryption,
    }
    for name in processes:
        cpu = spent(cpu0[name], cpu1[name])
        result[f"{name}_core"] = cpu / elapsed
        result[f"{name}_ms_per_frame"] = 1000 * cpu / max(frames, 1)
    return result


def report(results: dict[str, list[dict]], seconds: float) -> None:
    def median(path: str, key: str) -> float:
        return statistics.median(r[key] for r in results[path])

    def line(label: str, key: str, unit: str, scale: float = 1, digits: int = 1) -> None:
        plain, encrypted = median("plain", key) * scale, median("encrypted", key) * scale
        ratio = f"x{encrypted / plain:.2f}" if plain else "-"
        print(
            f"  {label}: plain {plain:.{digits}f}{unit}, encrypted {encrypted:.{digits}f}{unit}"
            f"; ratio encrypted/plain {ratio}"
        )

    runs = len(results["plain"])
    print(f"medians of {runs} runs of {seconds:.0f} s each, through Jupyter:")
    line("frames/s", "fps", "")
    line("MB/s to the browser", "mb_per_s", "", digits=2)
    for name, label in (
        ("xpra", "Xpra CPU"),
        ("jupyter", "Jupyter server CPU"),
        ("chromium", "chromium CPU"),
    ):
        line(label, f"{name}_core", "% of a core", scale=100, digits=0)
        line(f"{label} per frame", f"{name}_ms_per_frame", " ms", digits=2)
    for path in PATHS:
        fps = [round(r["fps"], 1) for r in results[path]]
        xpra = [round(100 * r["xpra_core"]) for r in results[path]]
        refused = sum(r["refused"] for r in results[path])
        print(f"  runs, {path}: frames/s {fps}, Xpra % of a core {xpra}", end="")
        print(f", loads refused and retried {refused}" if refused else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workload", default="xterm", choices=sorted(WORKLOADS))
    parser.add_argument("--size", default="400x300", help="the noise window's WIDTHxHEIGHT")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        script = Path(tmp) / "repaint.py"
        script.write_text(REPAINT)
        width, height = args.size.split("x")
        window = WORKLOADS[args.workload].format(script=script, width=width, height=height)
        print(f"workload {args.workload}: {window}")
        desktops: dict[str, Desktop] = {}
        for path in PATHS:
            base = Path(tmp) / path
            base.mkdir()
            site = base / "site.toml"
            extra = ENCRYPTED if path == "encrypted" else ""
            site.write_text(SITE.format(session=json.dumps(window)) + extra)
            server = start_jupyter(base, {"HPC_PROXIES_CONFIG": str(site)})
            stack.callback(server.stop_all)
            desktops[path] = Desktop(server)
            stack.callback(desktops[path].resume)  # never leave a session stopped
        argv = {path: cmdline(desktop.xpra) for path, desktop in desktops.items()}
        assert "--tcp-encryption=AES" in argv["encrypted"], argv["encrypted"]
        assert not [a for a in argv["plain"] if a.startswith("--tcp-encryption")], argv["plain"]

        results: dict[str, list[dict]] = {path: [] for path in PATHS}
        for run in range(args.runs):
            for path in PATHS if run % 2 == 0 else PATHS[::-1]:
                for other, desktop in desktops.items():
                    (desktop.resume if other == path else desktop.pause)()
                result = asyncio.run(measure(desktops[path], args.seconds))
                expected = "AES" if path == "encrypted" else None
                assert result["encryption"] == expected, (path, result["encryption"])
                results[path].append(result)
        report(results, args.seconds)


if __name__ == "__main__":
    main()
