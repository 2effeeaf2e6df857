"""ParaView: time to connect, to the first picture, and per interactive frame,
through hpc-proxies vs a hand-started pvserver, measured in the same run.

    .venv/bin/python bench/paraview_bench.py [--runs 3] [--browser]

Direct: Debian's pvserver with ``--connect-id`` in its argv on a private Xvfb, and a
pvpython-style client that connects to its port. Through hpc-proxies: the same client
code calls ``hpc_proxies.paraview.connect()`` (which starts pvserver through the Jupyter
server) and ``show(interactive=False)``. Frames: a camera turn, a render on pvserver
and a JPEG, as the interactive view makes them; with ``--browser``, also the round
trip a user sees in Chromium (drag event to decoded frame, through Jupyter).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CHROMIUM, CHROMIUM_ARGS, bench_jupyter, free_port, report

from hpc_proxies import xdisplay
from hpc_proxies.paraview.kernel import env_dir_for

KERNEL_PYTHON = env_dir_for("sys-prefix") / "bin" / "python"
FRAMES = 20

#: Run in the kernel's Python; prints one JSON line of timings.
CLIENT = r"""
import json, sys, time
mode, port, connect_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
from paraview import simple
if mode == "direct":
    from paraview.modules.vtkRemotingCore import vtkRemotingCoreConfiguration
    vtkRemotingCoreConfiguration.GetInstance().SetConnectID(connect_id)
    simple.Connect("localhost", port)
    simple.GetSettingsProxy("RenderViewSettings").RemoteRenderThreshold = 0.0
else:
    import hpc_proxies.paraview as pvh
    pvh.connect()
connected = time.perf_counter()
simple.Show(simple.Sphere(ThetaResolution=64, PhiResolution=64))
view = simple.GetActiveViewOrCreate("RenderView")
view.ViewSize = [800, 600]
if mode == "direct":
    simple.SaveScreenshot(sys.argv[4], view)
else:
    pvh.show(interactive=False)
pictured = time.perf_counter()
from hpc_proxies.paraview.view import render
frames = []
for i in range(FRAMES):
    start = time.perf_counter()
    jpeg = render(view, {"op": "rotate", "dx": 10, "dy": 2})
    frames.append(time.perf_counter() - start)
assert jpeg[:2] == b"\xff\xd8"
print(json.dumps({"connect": connected - t0, "picture": pictured - t0,
                  "frame_ms": 1000 * sorted(frames)[len(frames) // 2]}), flush=True)
import os
os._exit(0)  # ParaView's clean-up at interpreter exit can hang; the numbers are out
""".replace("FRAMES", str(FRAMES))


def run_client(mode: str, port: int, connect_id: int, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o700)
        display = xdisplay.start_xvfb(tmp)  # the client's own, as the kernel has
        try:
            done = subprocess.run(
                [
                    str(KERNEL_PYTHON),
                    "-c",
                    CLIENT,
                    mode,
                    str(port),
                    str(connect_id),
                    str(Path(tmp) / "shot.png"),
                ],
                env={**env, **display.environ()},
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            display.stop()
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"client failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def direct_run() -> dict:
    """pvserver started by hand, as a user would without hpc-proxies."""
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o700)
        display = xdisplay.start_xvfb(tmp)
        port, connect_id = free_port(), secrets.randbelow(2**31 - 2) + 1
        log_path = Path(tmp) / "pvserver.log"
        with open(log_path, "w") as log:  # a file, not a pipe nobody reads: it never blocks
            server = subprocess.Popen(
                ["pvserver", f"--server-port={port}", f"--connect-id={connect_id}"],
                env={**os.environ, **display.environ()},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 60
            while "Accepting connection" not in log_path.read_text():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pvserver did not start: {log_path.read_text()}")
                time.sleep(0.05)
            return run_client("direct", port, connect_id, dict(os.environ))
        finally:
            server.kill()
            server.wait()
            display.stop()


def proxied_run(server) -> dict:
    """connect() through the Jupyter server; the tile starts pvserver on demand."""
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(server.root_dir.parent / "jupyter/runtime"))
    result = run_client("proxied", 0, 0, env)
    deadline = time.monotonic() + 30  # the client left: wait for pvserver to stop
    while time.monotonic() < deadline:
        state = json.loads(server.request("/paraview/api/status").body)["state"]
        if state != "running":
            break
        time.sleep(0.2)
    return result


def browser_frames(server) -> tuple[float, float]:
    """Median (round trip, render) ms of frames a user drags in Chromium."""
    from jupyter_client import KernelManager
    from playwright.sync_api import sync_playwright

    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(server.root_dir.parent / "jupyter/runtime"))
    km = KernelManager(kernel_name="paraview")
    km.start_kernel(env=env, cwd=str(server.root_dir))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        out: list[str] = []
        kc.execute_interactive(
            "import hpc_proxies.paraview as pvh\nfrom paraview.simple import *\npvh.connect()\n"
            "Show(Sphere(ThetaResolution=64, PhiResolution=64))\nprint(pvh.show().src)",
            timeout=180,
            output_hook=lambda m: out.append(m["content"].get("text", "")),
        )
        src = "".join(out).strip().splitlines()[-1]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 800, "height": 600})
            page.goto(f"{server.url}{src}?token={server.token}")
            page.wait_for_function("window.paraviewFrames.length >= 1")
            page.mouse.move(100, 300)
            page.mouse.down()
            for step in range(60):
                page.mouse.move(100 + step * 10, 300)
                page.wait_for_timeout(20)
            page.mouse.up()
            page.wait_for_timeout(1000)
            frames = page.evaluate("window.paraviewFrames.slice(1)")
            browser.close()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return statistics.median(f[0] for f in frames), statistics.median(f[1] for f in frames)


def report_runs(base: list[dict], other: list[dict], base_name: str, other_name: str) -> float:
    """Connect, first picture and frame of the client's runs, ``other`` against ``base``;
    the median frame of ``base`` (ms)."""
    for key, label in (("connect", "Time to connect"), ("picture", "Time to first picture")):
        report(label, [r[key] for r in base], [r[key] for r in other], base_name)
    d = statistics.median(r["frame_ms"] for r in base)
    p = statistics.median(r["frame_ms"] for r in other)
    print(f"Frame (turn, render on pvserver, JPEG): {base_name} {d:.1f} ms, {other_name}")
    print(f"  {p:.1f} ms; ratio {p / d:.2f}")
    return d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--browser", action="store_true", help="also frames in Chromium")
    args = parser.parse_args()
    if not KERNEL_PYTHON.exists():
        sys.exit("install the kernel first: hpc-proxies install-kernel paraview --sys-prefix")
    with bench_jupyter() as server:
        server.wait_for_app("/paraview/api/status")
        direct, proxied = [], []
        for _ in range(args.runs):
            direct.append(direct_run())
            proxied.append(proxied_run(server))
        d = report_runs(direct, proxied, "pvserver by hand", "via hpc-proxies")
        if args.browser:
            rtt, render = browser_frames(server)
            print(f"Frame in Chromium through Jupyter: {rtt:.0f} ms round trip, of which")
            print(f"  {render:.0f} ms in the kernel; ratio to the frame by hand {rtt / d:.2f}")


if __name__ == "__main__":
    main()
