"""Xpra start-up time and memory: through hpc-proxies and Jupyter vs Xpra started directly.

    .venv/bin/python bench/xpra_bench.py [--runs 5] [--browser]

Both paths run in the same process, one after the other, on the same machine, so the
ratio (proxied / direct) is what to compare; absolute seconds depend on the load.
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
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import free_port, kill_leftovers, start_jupyter  # noqa: E402

from hpc_proxies import procs  # noqa: E402
from hpc_proxies.executables import resolve  # noqa: E402
from hpc_proxies.launcher import http_answers  # noqa: E402
from hpc_proxies.runtime import ensure_private_dir, write_secret  # noqa: E402
from hpc_proxies.spec import Launch  # noqa: E402
from hpc_proxies.xpra import APP  # noqa: E402


def direct_launch(tmp: Path, extra_args: list[str] = ()) -> tuple[subprocess.Popen, Launch]:
    app_dir = ensure_private_dir(tmp / "app")
    launch = Launch(
        name="xpra",
        runtime_dir=tmp,
        app_dir=app_dir,
        socket=app_dir / "app.sock",
        secret_file=write_secret(app_dir),
        executables=resolve(APP.requires),
        prefix="/",
    )
    APP.prepare(launch)
    env = dict(os.environ, **APP.environment(launch))
    proc = subprocess.Popen(
        [*APP.command(launch), *extra_args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, launch


def stop_tree(root: int) -> None:
    pids = {root} | procs.descendants(root) | procs.session_members(root)
    procs.send(pids, signal.SIGHUP)
    procs.send(pids, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(procs.proc_info(p) for p in pids):
        procs.reap_children()
        time.sleep(0.05)
    procs.send({p for p in pids if procs.proc_info(p)}, signal.SIGKILL)
    procs.reap_children()


def time_direct() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o700)
        t0 = time.monotonic()
        proc, launch = direct_launch(Path(tmp))
        try:
            while not asyncio.run(http_answers(launch.socket, "/", 5)):
                time.sleep(0.02)
            return time.monotonic() - t0
        finally:
            stop_tree(proc.pid)


def xpra_pid(server) -> int | None:
    for pid in server.descendants():
        info = Path(f"/proc/{pid}/cmdline")
        try:
            argv = info.read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 2 and argv[1].endswith(b"/xpra") and argv[2] == b"start":
            return pid
    return None


def stop_xpra_for_a_fresh_launch(server) -> None:
    """kill -9 the running Xpra and wait until the launcher has cleaned up after it."""
    old = xpra_pid(server)
    if old is None:
        return
    os.kill(old, signal.SIGKILL)
    probe = {"X-HPC-Proxies-Probe": "1"}
    while server.request("/xpra/", headers=probe).headers.get("X-HPC-Proxies-State") not in (
        "stopped",
        "failed",
    ):
        time.sleep(0.02)


def time_proxied(server) -> float:
    stop_xpra_for_a_fresh_launch(server)
    t0 = time.monotonic()
    while True:
        resp = server.request("/xpra/")
        if "X-HPC-Proxies-State" not in resp.headers and resp.status == 200:
            return time.monotonic() - t0
        time.sleep(0.02)


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(server) -> dict[str, float]:
    launcher = server.launcher_pid("xpra")
    by_name: dict[str, float] = {}
    for pid in {launcher} | procs.descendants(launcher):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        name = "launcher" if pid == launcher else Path(argv[0].decode()).name
        if name.startswith("python"):
            name = Path(argv[1].decode()).name
        by_name[name] = by_name.get(name, 0) + pss_kib(pid) / 1024
    return by_name


async def first_frame(url: str, t0: float | None = None) -> float:
    """Seconds from ``t0`` (default: opening ``url``) to an xterm frame on the client's canvas."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        t0 = time.monotonic() if t0 is None else t0
        await page.goto(url)
        await page.wait_for_function(
            """() => {
                for (const c of document.querySelectorAll('#screen .window canvas')) {
                    if (c.width < 100 || c.height < 100) continue;
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let white = 0;
                    for (let i = 0; i < d.length; i += 4 * 97)
                        if (d[i] > 240 && d[i + 1] > 240 && d[i + 2] > 240) white++;
                    if (white > d.length / (4 * 97) / 2) return true;
                }
                return false;
            }""",
            timeout=60_000,
            polling=50,
        )
        elapsed = time.monotonic() - t0
        await browser.close()
        return elapsed


def browser_direct(cold: bool) -> float:
    """Xpra on a loopback TCP port, opened directly; cold includes starting Xpra."""
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o700)
        port = free_port()
        t0 = time.monotonic()
        proc, launch = direct_launch(Path(tmp), [f"--bind-tcp=127.0.0.1:{port}"])
        try:
            while not asyncio.run(http_answers(launch.socket, "/", 5)):
                time.sleep(0.02)
            password = launch.secret_file.read_text()
            url = f"http://127.0.0.1:{port}/?password={password}&sharing=true"
            return asyncio.run(first_frame(url, t0 if cold else None))
        finally:
            stop_tree(proc.pid)


def browser_proxied(server, cold: bool) -> float:
    """Through Jupyter; cold is a fresh launch (the click on the tile), warm a reload."""
    if cold:
        stop_xpra_for_a_fresh_launch(server)
    else:
        server.wait_for_app("/xpra/")
    return asyncio.run(first_frame(f"{server.url}/xpra/?token={server.token}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--browser", action="store_true", help="also time the first frame")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = start_jupyter(Path(tmp))
        try:
            direct, proxied = [], []
            for _ in range(args.runs):  # interleaved, so load hits both alike
                direct.append(time_direct())
                proxied.append(time_proxied(server))
            d, p = statistics.median(direct), statistics.median(proxied)
            print(f"Xpra ready, direct : median {d:.2f} s  {[round(x, 2) for x in direct]}")
            print(f"Xpra ready, proxied: median {p:.2f} s  {[round(x, 2) for x in proxied]}")
            print(f"  ratio proxied/direct: {p / d:.2f}  (+{p - d:.2f} s)")

            mem = memory(server)
            total = sum(mem.values())
            print("Memory (PSS, MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(mem.items())))
            print(
                f"  session total {total:.0f} MiB; the launcher is "
                f"{mem.get('launcher', 0):.0f} MiB ({mem.get('launcher', 0) / total:.1%})"
            )

            if args.browser:
                for cold in (True, False):
                    fd, fp = [], []
                    for _ in range(max(2, args.runs // 2)):
                        fd.append(browser_direct(cold))
                        fp.append(browser_proxied(server, cold))
                    d, p = statistics.median(fd), statistics.median(fp)
                    label = "start + page" if cold else "page, app running"
                    print(
                        f"First xterm frame ({label}): direct TCP median {d:.2f} s, "
                        f"via Jupyter median {p:.2f} s; ratio {p / d:.2f}"
                    )
                    runs_d, runs_p = [round(x, 2) for x in fd], [round(x, 2) for x in fp]
                    print(f"  direct {runs_d}  via Jupyter {runs_p}")
        finally:
            left = server.descendants()
            server.stop()
            kill_leftovers(left)


if __name__ == "__main__":
    main()
