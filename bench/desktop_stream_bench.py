"""Desktops in Chromium: frames/s and the Jupyter server's CPU per MB, direct vs through Jupyter.

    .venv/bin/python bench/desktop_stream_bench.py [--apps vnc xpra] [--seconds 10] [--runs 3]

In each desktop a window repaints continuously (an xterm printing random hex at full
speed). Chromium (1280x800) opens the desktop two ways, interleaved in one run so
the machine's load hits both alike:

* direct: the launch's own socket (the VNC bridge, or Xpra) reached over loopback
  TCP through socat, a byte pump in C: the floor. The password goes in the URL,
  which is fine for a bench on loopback and never done by hpc-proxies;
* through Jupyter: ``/vnc/`` or ``/xpra/``, as a user opens it.

Frames are noVNC's completed framebuffer updates (``Display.flip``) and Xpra's draw
packets, counted in the page over ``--seconds``. The Jupyter server's CPU
(utime + stime) is divided by the bytes it wrote over the same window
(``/proc/PID/io`` wchar: the stream towards the browser).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import CHROMIUM, CHROMIUM_ARGS, bench_jupyter, free_port

REPAINT = "#!/bin/sh\nwhile :; do od -An -tx1 -N 4096 /dev/urandom; done\n"
XTERM = "xterm -geometry 150x48 -e {script}"
SITE = """
[apps.vnc]
session = "exec openbox --startup '{xterm}'"
[apps.xpra]
session = "{xterm}"
"""

# Counting starts once the client draws; the hooks are installed from the page.
VNC_HOOK = """async () => {
    const m = await import('./core/display.js');
    const flip = m.default.prototype.flip;
    window.benchFrames = 0;
    m.default.prototype.flip = function (...args) {
        window.benchFrames += 1;
        return flip.apply(this, args);
    };
}"""
VNC_READY = """() => {
    const c = document.querySelector('#noVNC_container canvas');
    return !!(c && c.width > 100 && document.documentElement.classList.contains('noVNC_connected'));
}"""
XPRA_HOOK = """() => {
    const queue = XpraClient.prototype._process_draw_queue;
    window.benchFrames = 0;
    XpraClient.prototype._process_draw_queue = function (packet, ctx) {
        if (packet) window.benchFrames += 1;
        return queue.call(this, packet, ctx);
    };
}"""
XPRA_READY = "() => document.querySelectorAll('canvas').length > 0 && !!window.XpraClient"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bytes_written(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no wchar in /proc/{pid}/io")


def launch_socket(server, app: str) -> tuple[Path, str]:
    """The launch's socket and its password, from the launcher's argv."""
    launcher = server.launcher_pid(app)
    argv = Path(f"/proc/{launcher}/cmdline").read_bytes().decode().split("\0")
    socket = Path(argv[argv.index("--socket") + 1])
    return socket, (socket.parent / "app" / "secret").read_text()


async def frames_per_second(url: str, app: str, seconds: float, jupyter_pid: int) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(url)
        await page.wait_for_function(
            VNC_READY if app == "vnc" else XPRA_READY, timeout=90_000, polling=100
        )
        await page.evaluate(VNC_HOOK if app == "vnc" else XPRA_HOOK)
        await page.wait_for_function("window.benchFrames > 2", timeout=30_000, polling=50)
        cpu0, out0 = cpu_seconds(jupyter_pid), bytes_written(jupyter_pid)
        frames0, t0 = await page.evaluate("window.benchFrames"), time.monotonic()
        await asyncio.sleep(seconds)
        frames1, t1 = await page.evaluate("window.benchFrames"), time.monotonic()
        cpu1, out1 = cpu_seconds(jupyter_pid), bytes_written(jupyter_pid)
        await browser.close()
    return {
        "fps": (frames1 - frames0) / (t1 - t0),
        "cpu_s": cpu1 - cpu0,
        "mb": (out1 - out0) / 1e6,
    }


def socat(port: int, socket: Path) -> subprocess.Popen:
    """Loopback TCP to the launch socket: the direct path."""
    proc = subprocess.Popen(
        [
            "socat",
            f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
            f"UNIX-CONNECT:{socket}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if f":{port:04X}" in Path("/proc/net/tcp").read_text():
            return proc
        time.sleep(0.02)
    raise AssertionError("socat did not listen")


def direct_url(app: str, port: int, password: str) -> str:
    if app == "vnc":
        query = f"autoconnect=1&resize=remote&path=websockify&password={password}"
        return f"http://127.0.0.1:{port}/vnc.html?{query}"
    return f"http://127.0.0.1:{port}/index.html?password={password}&sharing=1"


def bench_app(server, app: str, runs: int, seconds: float) -> None:
    jupyter_url = f"{server.url}/{app}/?token={server.token}"
    server.wait_for_app(f"/{app}/")
    socket, password = launch_socket(server, app)
    port = free_port()
    pump = socat(port, socket)
    results: dict[str, list[dict]] = {"direct": [], "jupyter": []}
    try:
        for run in range(runs):
            order = ["direct", "jupyter"] if run % 2 == 0 else ["jupyter", "direct"]
            for path in order:
                url = direct_url(app, port, password) if path == "direct" else jupyter_url
                results[path].append(
                    asyncio.run(frames_per_second(url, app, seconds, server.proc.pid))
                )
    finally:
        pump.terminate()
        pump.wait()
    direct = statistics.median(r["fps"] for r in results["direct"])
    proxied = statistics.median(r["fps"] for r in results["jupyter"])
    cpu_per_mb = statistics.median(
        1000 * r["cpu_s"] / r["mb"] for r in results["jupyter"] if r["mb"] > 0
    )
    mb_per_s = statistics.median(r["mb"] / seconds for r in results["jupyter"])
    print(f"{app}: frames/s direct {direct:.1f}, through Jupyter {proxied:.1f}", end="")
    print(f"; ratio x{proxied / direct:.2f}")
    print(f"  runs: direct {[round(r['fps'], 1) for r in results['direct']]}", end="")
    print(f", through Jupyter {[round(r['fps'], 1) for r in results['jupyter']]}")
    print(f"  Jupyter server: {cpu_per_mb:.0f} ms CPU per MB, {mb_per_s:.2f} MB/s to the browser")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", nargs="+", default=["vnc", "xpra"], choices=["vnc", "xpra"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    if shutil.which("socat") is None:
        raise SystemExit("socat is needed for the direct path: apt install socat")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "repaint.sh"
        script.write_text(REPAINT)
        script.chmod(0o755)
        site = Path(tmp) / "site.toml"
        site.write_text(SITE.format(xterm=XTERM.format(script=script)))
        os.environ["HPC_PROXIES_CONFIG"] = str(site)
        with bench_jupyter() as server:
            for app in args.apps:
                bench_app(server, app, args.runs, args.seconds)


if __name__ == "__main__":
    main()
