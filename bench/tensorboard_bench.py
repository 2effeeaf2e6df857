"""TensorBoard: time to the first scalar data and the first drawn chart, through
hpc-proxies and Jupyter vs TensorBoard on its own.

    .venv/bin/python bench/tensorboard_bench.py [--runs 5] [--browser]

Both paths run in the same process, interleaved, on the same machine and the same event
files (two runs of 100 steps, written with TensorBoard's writer), so the ratio
(proxied / direct) is what to compare; absolute seconds depend on the load.
* start to ready: exactly the argv the app module builds (TensorBoard on a unix
  socket), from exec to its first HTTP answer, vs a fresh launch through Jupyter (kill
  -9 of TensorBoard before each run) to the first response from TensorBoard itself;
* first scalar data: from exec (direct, on its unix socket) or from the first request
  (through Jupyter, a fresh launch) until the scalars API returns the run's points;
* --browser: from opening the page until chromium has drawn the loss chart (coloured
  line pixels in its canvas), with TensorBoard starting (the click on the tile) and
  already running. A browser cannot open a unix socket, so the direct path is the
  ``tensorboard`` command on a loopback TCP port (bench only; the product never opens
  one), with the same flags.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from common import (
    CHROMIUM,
    CHROMIUM_ARGS,
    bench_jupyter,
    compare_start,
    direct_launch,
    free_port,
    report,
    stop_for_a_fresh_launch,
    stop_tree,
)
from PIL import Image
from tb_events import write_experiments

from hpc_proxies.tensorboard import APP

RUN, TAG = "experiments/exp1/run_a", "loss"
SCALARS = f"data/plugin/scalars/scalars?run={quote(RUN, safe='')}&tag={TAG}"
CARD_JS = """(tag) => {
  for (const card of document.querySelectorAll('scalar-card')) {
    if (!card.innerText.trim().startsWith(tag)) continue;
    const canvas = card.querySelector('canvas');
    if (!canvas) return null;
    canvas.scrollIntoView({block: 'center'});
    const r = canvas.getBoundingClientRect();
    return r.width > 100 && r.height > 100 ? {x: r.x, y: r.y, width: r.width, height: r.height}
                                           : null;
  }
  return null;
}"""


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


def points(body: bytes) -> int:
    try:
        data = json.loads(body)
    except ValueError:
        return 0
    return len(data) if isinstance(data, list) else 0


def direct_first_data() -> float:
    """Seconds from exec until TensorBoard on its unix socket returns the run's points."""
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o700)
        t0 = time.monotonic()
        started, launch = direct_launch(APP, Path(tmp))
        try:
            while True:
                try:
                    conn = UnixHTTPConnection(str(launch.socket))
                    conn.request("GET", f"/tensorboard/{SCALARS}")
                    if points(conn.getresponse().read()) >= 100:
                        return time.monotonic() - t0
                except OSError:
                    pass
                time.sleep(0.02)
        finally:
            stop_tree([p.pid for p in started])


def proxied_first_data(server) -> float:
    """Seconds from the first request of a fresh launch until the points come back."""
    stop_for_a_fresh_launch(server, "tensorboard")
    t0 = time.monotonic()
    while True:
        resp = server.request(f"/tensorboard/{SCALARS}")
        if "X-HPC-Proxies-State" not in resp.headers and points(resp.body) >= 100:
            return time.monotonic() - t0
        time.sleep(0.02)


def line_pixels(png: bytes) -> int:
    """Pixels with a clear hue: the run's line (grid, axes and markers are grey)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    data = image.tobytes()
    return sum(
        1
        for r, g, b in zip(data[0::3], data[1::3], data[2::3], strict=True)
        if max(r, g, b) - min(r, g, b) >= 30 and min(r, g, b) <= 200
    )


async def first_chart(url: str, t0: float | None = None) -> float:
    """Seconds from ``t0`` (default: opening ``url``) until the loss chart is drawn."""
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        t0 = time.monotonic() if t0 is None else t0
        await page.goto(url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                box = await page.evaluate(CARD_JS, TAG)
                if box and line_pixels(await page.screenshot(clip=box)) >= 150:
                    elapsed = time.monotonic() - t0
                    break
            except PlaywrightError:
                pass  # the progress page reloads into TensorBoard under us
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"no chart drawn at {url}")
        await browser.close()
        return elapsed


def browser_direct(root: Path, cold: bool) -> float:
    """The ``tensorboard`` command on a loopback TCP port (bench only), same flags."""
    port = free_port()
    tensorboard = Path(sys.executable).parent / "tensorboard"
    tmp = tempfile.TemporaryDirectory()  # its info file, as the app's (not /tmp's)
    t0 = time.monotonic()
    flags = ["--path_prefix", "/tensorboard", "--load_fast", "false", "--logdir", str(root)]
    proc = subprocess.Popen(
        [str(tensorboard), *flags, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "TMPDIR": tmp.name},
    )
    try:
        url = f"http://127.0.0.1:{port}/tensorboard/"
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/tensorboard/")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.02)
        return asyncio.run(first_chart(url, t0 if cold else None))
    finally:
        stop_tree([proc.pid])
        tmp.cleanup()


def browser_proxied(server, cold: bool) -> float:
    """Through Jupyter; cold is a fresh launch (the click on the tile), warm a reload."""
    if cold:
        stop_for_a_fresh_launch(server, "tensorboard")
    else:
        server.wait_for_app("/tensorboard/")
    return asyncio.run(first_chart(f"{server.url}/tensorboard/?token={server.token}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--browser", action="store_true", help="also time the first chart")
    args = parser.parse_args()

    with bench_jupyter() as server:
        root = server.root_dir
        write_experiments(root)
        os.chdir(root)  # the direct path's default logdir: the same runs as Jupyter's
        compare_start(server, APP, "TensorBoard", args.runs)
        direct, proxied = [], []
        for _ in range(args.runs):
            direct.append(direct_first_data())
            proxied.append(proxied_first_data(server))
        report("First scalar data (start + API)", direct, proxied)
        if args.browser:
            for cold in (True, False):
                direct, proxied = [], []
                for _ in range(max(2, args.runs // 2)):
                    direct.append(browser_direct(root, cold))
                    proxied.append(browser_proxied(server, cold))
                label = "start + page" if cold else "page, app running"
                report(f"First drawn chart ({label})", direct, proxied)


if __name__ == "__main__":
    main()
