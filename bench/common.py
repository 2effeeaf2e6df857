"""What every app's benchmark needs: start an app directly or through Jupyter, time
it, stop it, and weigh its processes. The direct path uses exactly the argv the app
module builds, so the two paths differ only by hpc-proxies and Jupyter."""

from __future__ import annotations

import asyncio
import contextlib
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

from conftest import free_port, kill_leftovers, start_jupyter  # noqa: E402, F401
from processes import status_bytes  # noqa: E402

from hpc_proxies import config, procs  # noqa: E402
from hpc_proxies.executables import requirements, resolve  # noqa: E402
from hpc_proxies.launcher import prepare_start, start_env  # noqa: E402
from hpc_proxies.launcher.readiness import greets, http_answers  # noqa: E402
from hpc_proxies.spec import AppSpec, Launch  # noqa: E402

PROBE = {"X-HPC-Proxies-Probe": "1"}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@contextlib.contextmanager
def bench_jupyter():
    """A Jupyter server in a temporary directory; it and everything below it stop after."""
    with tempfile.TemporaryDirectory() as tmp:
        server = start_jupyter(Path(tmp))
        try:
            yield server
        finally:
            server.stop_all()


def report(label: str, direct: list[float], proxied: list[float], direct_name="direct") -> None:
    """Medians of both paths, their ratio (via Jupyter / direct), and every run."""
    d, p = statistics.median(direct), statistics.median(proxied)
    print(f"{label}: {direct_name} median {d:.2f} s, via Jupyter median {p:.2f} s", end="")
    print(f"; ratio {p / d:.2f}")
    runs_d, runs_p = [round(x, 2) for x in direct], [round(x, 2) for x in proxied]
    print(f"  {direct_name} {runs_d}  via Jupyter {runs_p}")


def direct_launch(
    app: AppSpec, tmp: Path, extra_args: list[str] = ()
) -> tuple[list[subprocess.Popen], Launch]:
    """Start ``app`` by hand in ``tmp``, as the launcher would (main process, companions,
    and its web bridge, here in a process of its own: ``python -m hpc_proxies.bridge``)."""
    settings = config.app_defaults(app)
    executables = resolve(requirements(app, settings))
    launch = prepare_start(app, tmp, tmp / "app", f"/{app.name}/", settings, executables)
    env = start_env(app, launch, os.environ)
    argvs = [[*app.command(launch), *extra_args]]
    argvs += app.companions(launch) if app.companions else []
    if app.bridge is not None:
        bridge = app.bridge(launch)
        where = ["--listen", str(launch.socket), "--target", str(bridge.target)]
        client = ["--web", str(bridge.web_dir), "--index", bridge.index, "--query", bridge.query]
        argvs.append([sys.executable, "-m", "hpc_proxies.bridge", *where, *client])
    started = [
        subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for argv in argvs
    ]
    return started, launch


async def direct_ready(app: AppSpec, launch: Launch) -> bool:
    banners = app.ready_banners(launch) if app.ready_banners else []
    if not await http_answers(launch.socket, app.ready_path, 5):
        return False
    return all([await greets(path, banner, 5) for path, banner in banners])


def stop_tree(roots: list[int]) -> None:
    pids = set(roots)
    for root in roots:
        pids |= procs.descendants(root) | procs.session_members(root)
    procs.send(pids, signal.SIGHUP)
    procs.send(pids, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(procs.proc_info(p) for p in pids):
        procs.reap(pids)
        time.sleep(0.05)
    procs.send({p for p in pids if procs.proc_info(p)}, signal.SIGKILL)
    procs.reap(pids)


def time_direct(app: AppSpec) -> float:
    """Seconds from exec to ready, started by hand."""
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o700)
        t0 = time.monotonic()
        started, launch = direct_launch(app, Path(tmp))
        try:
            while not asyncio.run(direct_ready(app, launch)):
                time.sleep(0.02)
            return time.monotonic() - t0
        finally:
            stop_tree([p.pid for p in started])


def stop_for_a_fresh_launch(server, app: str) -> None:
    """kill -9 the app's main process; wait until the launcher has cleaned up after it."""
    try:
        launcher = server.launcher_pid(app)
    except AssertionError:
        return  # not launched yet
    children = sorted(p.pid for p in procs.all_processes() if p.ppid == launcher)
    if not children:
        return
    os.kill(children[0], signal.SIGKILL)
    while server.request(f"/{app}/", headers=PROBE).headers.get("X-HPC-Proxies-State") not in (
        "stopped",
        "failed",
    ):
        time.sleep(0.02)


def time_proxied(server, app: str) -> float:
    """Seconds from the first request of a fresh launch to the app's own answer."""
    stop_for_a_fresh_launch(server, app)
    t0 = time.monotonic()
    while True:
        resp = server.request(f"/{app}/")
        if "X-HPC-Proxies-State" not in resp.headers and resp.status == 200:
            return time.monotonic() - t0
        time.sleep(0.02)


def compare_start(server, app: AppSpec, label: str, runs: int) -> None:
    """Print start-to-ready times, direct vs through Jupyter, interleaved so that the
    machine's load hits both alike, and the session's memory."""
    direct, proxied = [], []
    for _ in range(runs):
        direct.append(time_direct(app))
        proxied.append(time_proxied(server, app.name))
    d, p = statistics.median(direct), statistics.median(proxied)
    print(f"{label} ready, direct : median {d:.2f} s  {[round(x, 2) for x in direct]}")
    print(f"{label} ready, proxied: median {p:.2f} s  {[round(x, 2) for x in proxied]}")
    print(f"  ratio proxied/direct: {p / d:.2f}  (+{p - d:.2f} s)")
    print_memory(memory(server, app.name))


def pss_kib(pid: int) -> int:
    return (procs.pss_bytes(pid) or 0) // 1024


def rss_mib(pid: int) -> float:
    """``VmRSS`` of ``pid`` in MiB (0 if it is gone)."""
    try:
        return status_bytes(pid, "VmRSS") / 2**20
    except (OSError, AssertionError):
        return 0.0


#: USS: the pages only this process maps (what one more desktop costs when others run).
USS_FIELDS = ("Private_Clean:", "Private_Dirty:")


def program_name(pid: int, launcher: int) -> str | None:
    """The launcher, a program's name, or an interpreter's script or module."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    name = "launcher" if pid == launcher else Path(argv[0].decode()).name
    if name == "sh" and len(argv) > 1 and argv[1].endswith(b".sh"):
        name = Path(argv[1].decode()).name  # x-desktop.sh
    elif name.startswith("python") or name == "perl":
        name = ".".join(a.decode() for a in argv[1:3] if a != b"-m") or name
        name = Path(name).name
    return name


def memory(server, app: str, fields: tuple[str, ...] = ("Pss:",)) -> dict[str, float]:
    """PSS (or other ``smaps_rollup`` ``fields``) in MiB of the session's processes, by
    program name."""
    launcher = server.launcher_pid(app)
    by_name: dict[str, float] = {}
    for pid in {launcher} | procs.descendants(launcher):
        name = program_name(pid, launcher)
        if name is not None:
            by_name[name] = by_name.get(name, 0) + (procs.smaps_bytes(pid, fields) or 0) / 2**20
    return by_name


def print_memory(mem: dict[str, float]) -> None:
    total = sum(mem.values())
    print("Memory (PSS, MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(mem.items())))
    launcher = mem.get("launcher", 0)
    print(
        f"  session total {total:.0f} MiB; the launcher is {launcher:.0f} MiB "
        f"({launcher / total:.1%})"
    )


async def open_in_chromium(url: str, wait_js: str, t0: float | None = None) -> float:
    """Seconds from ``t0`` (default: opening ``url``) until ``wait_js`` is true in the page."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        t0 = time.monotonic() if t0 is None else t0
        await page.goto(url)
        await page.wait_for_function(wait_js, timeout=60_000, polling=50)
        elapsed = time.monotonic() - t0
        await browser.close()
        return elapsed
