"""Running panel: what the hpc-proxies server extension and the instance routing cost.

    .venv/bin/python bench/instances_bench.py [--runs 15] [--seconds 1.5] [--clients 16]
                                              [--window 60] [--windows 2] [--stops 5]

Two Jupyter servers in one run, on one machine, with the same site configuration
(RStudio is the stand-in ``rserver`` of tests/standin): A with the server extension
(the API, the activity hook's manager, the ``/<app>@<instance>/`` router), B with it
disabled on its command line (``ServerApp.jpserver_extensions``; its API answers 404).
Each runs five apps, started and answering: Xpra, VNC, TensorBoard, RStudio and the
ParaView service. Compare the ratios; absolute figures depend on the load.

* the Jupyter server's own process (not the apps'): RSS and PSS, and CPU time
  (utime + stime from /proc) over windows of ``--window`` s, A and B idle at the same
  time, then A polled as the Running panel does (``GET instances`` every 2 s) while B
  stays idle; the launchers' own CPU in those windows too (they answer the status);
* the API on A: ``GET instances`` (p50/p99 of 50 calls, against Jupyter's own
  ``GET /api/status`` on the same connection, interleaved), and ``POST .../stop`` of
  the running Xpra until it returns, with every process of it checked gone in /proc;
* the data path: TensorBoard's ``data/environment`` (a small JSON answer that depends
  on nothing but the server, so every request costs its backend the same) at
  ``/tensorboard/`` (first instance, jupyter-server-proxy's own route) and
  ``/tensorboard@2/`` (second, through the extension's router) on A, and at
  ``/tensorboard/`` on B (no extension, so no manager behind the activity hook):
  requests/s and p50/p99 latency with 1 and ``--clients`` keep-alive clients
  (aiohttp, in this process), interleaved; then VNC's websocket at ``/vnc/`` and
  ``/vnc@2/``: the round trip of a 16x16 raw framebuffer update and the throughput of
  full-screen raw updates (the router is passed only by the upgrade request);
* in this process, on the extension's own objects: the router's and the activity
  hook's work per request, what the data-path ratios contain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import statistics
import struct
import tempfile
import time
import timeit
from pathlib import Path
from types import SimpleNamespace

import aiohttp
from common import ROOT, pss_kib, rss_mib
from conftest import jupyter_with_site
from instances_api import API, api, launcher_of, runtime_dir_of
from processes import alive, cmdline
from rfb_wire import SECURITY_VNCAUTH, VERSION, _WebSocketStream, vncauth_response

from hpc_proxies import procs
from hpc_proxies.jupyter.control import status as control_status
from hpc_proxies.layout import LaunchLayout

STANDIN = ROOT / "tests" / "standin"
SITE = f"""
[apps.rstudio]
executable = "{STANDIN / "rserver"}"
r = "{STANDIN / "R"}"
"""
#: What each app answers at once it runs (ParaView: its service, not pvserver).
READY = {
    "xpra": "/xpra/",
    "vnc": "/vnc/",
    "tensorboard": "/tensorboard/",
    "rstudio": "/rstudio/",
    "paraview": "/paraview/api/status",
}
ENDPOINT = "data/environment"
POLL = 2.0
TICK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ /proc
def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` itself (not its children), in seconds."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def launchers(server) -> list[int]:
    return [p for p in server.descendants() if "hpc_proxies.launcher" in cmdline(p)]


def tree(root: int) -> set[int]:
    """``root``, everything below it, and every member of the sessions they lead."""
    pids = {root} | procs.descendants(root)
    for pid in list(pids):
        pids |= procs.session_members(pid)
    return pids


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ------------------------------------------------------------------ servers
def start_apps(server) -> None:
    """Ask for every app at once (they start in parallel), then wait until each answers."""
    for path in READY.values():
        server.request(path)
    for path in READY.values():
        server.wait_for_app(path, timeout=120)


def wait_running(server, app: str, name: str = "default", timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, data = api(server, "GET", f"instances/{app}/{name}")
        if status == 200 and data["state"] == "running":
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"{app}/{name} not running: {status} {data}")
        time.sleep(0.1)


# ------------------------------------------------------------------ 2. the Jupyter process
def cpu_window(servers: dict, seconds: float, polled=None) -> dict[str, tuple[float, float]]:
    """CPU seconds of each server's own process and of its launchers over ``seconds``;
    ``polled`` is GET instances every 2 s meanwhile, as the Running panel does."""
    pids = {name: (s.proc.pid, launchers(s)) for name, s in servers.items()}
    before = {n: (cpu_seconds(p), sum(map(cpu_seconds, ls))) for n, (p, ls) in pids.items()}
    t0 = time.monotonic()
    end, calls = t0 + seconds, 0
    while polled is not None and time.monotonic() < end:
        status, _ = api(polled, "GET", "instances")
        assert status == 200, status
        calls += 1
        time.sleep(max(0.0, min(t0 + calls * POLL, end) - time.monotonic()))
    time.sleep(max(0.0, end - time.monotonic()))
    after = {n: (cpu_seconds(p), sum(map(cpu_seconds, ls))) for n, (p, ls) in pids.items()}
    return {n: (after[n][0] - before[n][0], after[n][1] - before[n][1]) for n in pids}


def memory_row(server) -> tuple[float, float]:
    return rss_mib(server.proc.pid), pss_kib(server.proc.pid) / 1024


def measure_server_cost(a, b, window: float, windows: int) -> dict:
    servers = {"A": a, "B": b}
    idle: dict[str, list] = {"A": [], "B": []}
    polled_a, idle_b_during = [], []
    mem_before = {n: memory_row(s) for n, s in servers.items()}
    for i in range(windows):
        got = cpu_window(servers, window)
        idle["A"].append(got["A"])
        idle["B"].append(got["B"])
        got = cpu_window(servers, window, polled=a)
        polled_a.append(got["A"])
        idle_b_during.append(got["B"])
        print(
            f"  window {i + 1}: idle A {idle['A'][-1][0]:.2f} s B {idle['B'][-1][0]:.2f} s; "
            f"A polled {polled_a[-1][0]:.2f} s (B meanwhile {idle_b_during[-1][0]:.2f} s)"
        )
    mem_after = {n: memory_row(s) for n, s in servers.items()}
    return {
        "idle": idle,
        "polled": polled_a,
        "idle_b_during": idle_b_during,
        "mem_before": mem_before,
        "mem_after": mem_after,
    }


def print_server_cost(res: dict, window: float) -> None:
    med = statistics.median
    ia, ib = med(x[0] for x in res["idle"]["A"]), med(x[0] for x in res["idle"]["B"])
    pa = med(x[0] for x in res["polled"])
    la, lb = med(x[1] for x in res["idle"]["A"]), med(x[1] for x in res["idle"]["B"])
    lp = med(x[1] for x in res["polled"])
    print(f"\nThe Jupyter server's own process, 5 apps running (medians, {window:.0f} s windows)")
    print(f"  {'':38s} {'with extension (A)':>20s} {'without (B)':>12s} {'ratio A/B':>10s}")
    for label, key in (("RSS, apps started (MiB)", 0), ("PSS, apps started (MiB)", 1)):
        a, b = res["mem_before"]["A"][key], res["mem_before"]["B"][key]
        print(f"  {label:38s} {a:20.1f} {b:12.1f} {a / b:10.2f}")
    for label, key in (("RSS, after polling (MiB)", 0), ("PSS, after polling (MiB)", 1)):
        a, b = res["mem_after"]["A"][key], res["mem_after"]["B"][key]
        print(f"  {label:38s} {a:20.1f} {b:12.1f} {a / b:10.2f}")
    ratio = f"{ia / ib:10.2f}" if ib else f"{'-':>10s}  (one tick is {1 / TICK:.2f} s)"
    print(f"  {'CPU idle (s per window)':38s} {ia:20.2f} {ib:12.2f} {ratio}")
    print(
        f"  {'CPU polled every 2 s (s per window)':38s} {pa:20.2f} {'-':>12s} "
        f"{'':10s}  extra {pa - ia:+.2f} s = {(pa - ia) / window:.2%} of a core, "
        f"{(pa - ia) / (window / POLL) * 1000:.1f} ms per GET"
    )
    print(
        f"  {'launchers CPU idle / polled (s)':38s} {la:11.2f} / {lp:6.2f} {lb:12.2f}"
        f"             extra {lp - la:+.2f} s = {(lp - la) / (window / POLL) * 1000:.1f} ms "
        "per GET (5 status answers)"
    )
    raw = {k: [round(x[0], 2) for x in v] for k, v in res["idle"].items()}
    print(f"  runs: idle {raw}, A polled {[round(x[0], 2) for x in res['polled']]}")


# ------------------------------------------------------------------ 3. the API
def api_latency(server, calls: int) -> tuple[list[float], list[float]]:
    """GET instances and GET /api/status, interleaved, on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    headers = {"Authorization": f"token {server.token}"}
    ours, theirs = [], []
    try:
        for _ in range(calls):
            for path, into in ((API + "instances", ours), ("/api/status", theirs)):
                t0 = time.perf_counter()
                conn.request("GET", path, headers=headers)
                reply = conn.getresponse()
                body = reply.read()
                into.append(time.perf_counter() - t0)
                assert reply.status == 200, (path, reply.status, body[:200])
    finally:
        conn.close()
    return ours, theirs


def status_breakdown(server, calls: int = 10) -> None:
    """Where ``GET instances`` spends its time: each launcher's own ``/status`` (asked
    here, one after the other, as ``control.status`` asks it), and the /proc walk it
    does (every process, then its tree's PSS), timed in this process."""
    print("  where it goes, per instance (sequential, medians of 10):")
    loop = asyncio.new_event_loop()
    try:
        for app in READY:
            control = LaunchLayout(runtime_dir_of(server, app) / "socket").control
            launcher = launcher_of(server, app)
            asked, walked, weighed = [], [], []
            for _ in range(calls):
                t0 = time.perf_counter()
                reply = loop.run_until_complete(control_status(control))
                asked.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                pids = {launcher} | procs.descendants(launcher)
                walked.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                sum(procs.pss_bytes(pid) or 0 for pid in pids)
                weighed.append(time.perf_counter() - t0)
            assert reply is not None and reply["state"] == "running", (app, reply)
            print(
                f"    {app:12s} launcher /status {statistics.median(asked) * 1e3:5.1f} ms; "
                f"in it: the /proc walk {statistics.median(walked) * 1e3:5.1f} ms, "
                f"PSS of its {len(pids)} processes {statistics.median(weighed) * 1e3:5.1f} ms"
            )
        t0 = time.perf_counter()
        count = len(procs.all_processes())
        print(
            f"    (one walk of all {count} processes of this machine: "
            f"{(time.perf_counter() - t0) * 1e3:.1f} ms)"
        )
    finally:
        loop.close()


def time_stop(server, app: str = "xpra") -> tuple[float, int, int]:
    """Seconds of ``POST .../stop`` of the running ``app``; its processes, and how many
    of them were still alive when the call returned (all checked in /proc)."""
    server.wait_for_app(READY[app], timeout=120)
    wait_running(server, app)
    before = tree(launcher_of(server, app))
    t0 = time.monotonic()
    status, data = api(server, "POST", f"instances/{app}/default/stop")
    took = time.monotonic() - t0
    left = alive(before)
    assert status == 200 and data["state"] == "stopped", (status, data)
    return took, len(before), len(left)


# ------------------------------------------------------------------ 1. the data path
async def http_burst(url: str, token: str, clients: int, seconds: float) -> tuple[float, list]:
    """``clients`` keep-alive clients GET ``url`` for ``seconds``: requests/s and latencies."""
    headers = {"Authorization": f"token {token}"}
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        async with session.get(url) as warm:  # one connection made, not timed
            await warm.read()
        stop = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                async with session.get(url) as resp:
                    body = await resp.read()
                    if resp.status != 200 or "X-HPC-Proxies-State" in resp.headers:
                        raise AssertionError(f"{url}: {resp.status} {body[:200]!r}")
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return len(latencies) / elapsed, latencies


def vnc_password(server, url_name: str) -> str:
    return (runtime_dir_of(server, url_name) / "app" / "secret").read_text()


async def rfb_session(session, url: str, token: str, password: str, rtts: int, frames: int):
    """RFB over the websocket: ``rtts`` round trips of a 16x16 raw update, then
    ``frames`` full-screen raw updates; (median round trip s, MB/s)."""
    headers = {"Authorization": f"token {token}"}
    async with session.ws_connect(
        url, protocols=("binary",), headers=headers, max_msg_size=0, compress=0
    ) as ws:
        stream = _WebSocketStream(ws)
        assert await stream.recv(len(VERSION)) == VERSION
        await stream.send(VERSION)
        (count,) = await stream.recv(1)
        assert SECURITY_VNCAUTH in await stream.recv(count)
        await stream.send(bytes([SECURITY_VNCAUTH]))
        await stream.send(vncauth_response(password, await stream.recv(16)))
        assert await stream.recv_u32() == 0, "VncAuth refused"
        await stream.send(b"\x01")
        width, height = struct.unpack("!HH", await stream.recv(4))
        bpp = (await stream.recv(16))[0]
        await stream.recv_string()
        await stream.send(struct.pack("!BxHi", 2, 1, 0))  # SetEncodings: raw only

        async def update(w: int, h: int) -> int:
            await stream.send(struct.pack("!BBHHHH", 3, 0, 0, 0, w, h))
            header = await stream.recv(4)
            assert header[0] == 0, f"not a FramebufferUpdate: {header!r}"
            got = 0
            for _ in range(struct.unpack("!H", header[2:])[0]):
                _, _, rw, rh, enc = struct.unpack("!HHHHi", await stream.recv(12))
                assert enc == 0, enc
                got += len(await stream.recv(rw * rh * bpp // 8))
            return got

        times = []
        for _ in range(rtts):
            t0 = time.perf_counter()
            await update(16, 16)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        total = sum([await update(width, height) for _ in range(frames)])
        return statistics.median(times), total / (time.perf_counter() - t0) / 1e6


def measure_data_path(a, b, runs: int, clients: int, seconds: float) -> None:
    paths = {
        "A /tensorboard/ (first)": (a, "/tensorboard/"),
        "A /tensorboard@2/ (router)": (a, "/tensorboard@2/"),
        "B /tensorboard/ (no ext.)": (b, "/tensorboard/"),
    }
    results: dict[tuple[str, int], list] = {(p, c): [] for p in paths for c in (1, clients)}
    loop = asyncio.new_event_loop()
    try:
        names = list(paths)
        for run in range(runs):
            order = names[run % len(names) :] + names[: run % len(names)]
            for concurrency in (1, clients):
                for name in order:  # interleaved, the order turning, so load hits all alike
                    server, prefix = paths[name]
                    url = f"{server.url}{prefix}{ENDPOINT}"
                    rate, lat = loop.run_until_complete(
                        http_burst(url, server.token, concurrency, seconds)
                    )
                    results[(name, concurrency)].append((rate, pct(lat, 0.5), pct(lat, 0.99)))
        print(
            f"\nData path: GET {ENDPOINT} (TensorBoard), {seconds:.1f} s bursts, "
            f"medians of {runs} runs"
        )
        print(f"  {'path':28s} {'clients':>7s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s}")
        for concurrency in (1, clients):
            med = {}
            for name in names:
                rows = results[(name, concurrency)]
                med[name] = [statistics.median(r[i] for r in rows) for i in range(3)]
                rate, p50, p99 = med[name]
                print(
                    f"  {name:28s} {concurrency:7d} {rate:8.0f} {p50 * 1e3:8.2f} {p99 * 1e3:8.2f}"
                    f"   runs {[round(r[0]) for r in rows]}"
                )
            first, second, noext = (med[n] for n in names)
            print(
                f"  ratio second/first, {concurrency} clients: req/s x{second[0] / first[0]:.3f}, "
                f"p50 x{second[1] / first[1]:.3f}, p99 x{second[2] / first[2]:.3f}; "
                f"first with/without extension: req/s x{first[0] / noext[0]:.3f}, "
                f"p50 x{first[1] / noext[1]:.3f}"
            )
            ones, twos, offs = (results[(n, concurrency)] for n in names)
            paired = [t[0] / o[0] for o, t in zip(ones, twos, strict=True)]
            noext_paired = [o[0] / b[0] for o, b in zip(ones, offs, strict=True)]
            print(
                f"  paired (same run) req/s ratios, median: second/first "
                f"x{statistics.median(paired):.3f}, with/without extension "
                f"x{statistics.median(noext_paired):.3f}"
            )

        # The websocket: VNC's first and second instance, after the upgrade.
        passwords = {u: vnc_password(a, u) for u in ("vnc", "vnc@2")}
        ws: dict[str, list] = {"vnc": [], "vnc@2": []}

        async def ws_runs(order):
            async with aiohttp.ClientSession() as session:
                for u in order:
                    url = f"ws://127.0.0.1:{a.port}/{u}/websockify"
                    ws[u].append(await rfb_session(session, url, a.token, passwords[u], 300, 30))

        for run in range(runs):
            order = ["vnc", "vnc@2"] if run % 2 == 0 else ["vnc@2", "vnc"]
            loop.run_until_complete(asyncio.wait_for(ws_runs(order), 300))
        print(f"\nWebsocket (VNC, RFB raw), medians of {runs} runs")
        med = {
            u: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
            for u, v in ws.items()
        }
        for u, (rtt, mbs) in med.items():
            print(
                f"  /{u + '/':8s} 16x16 update round trip {rtt * 1e3:6.2f} ms, "
                f"full-screen updates {mbs:6.0f} MB/s   runs {[round(r[1]) for r in ws[u]]}"
            )
        paired = [s[1] / f[1] for f, s in zip(ws["vnc"], ws["vnc@2"], strict=True)]
        print(
            f"  ratio second/first: round trip x{med['vnc@2'][0] / med['vnc'][0]:.3f}, "
            f"throughput x{med['vnc@2'][1] / med['vnc'][1]:.3f} "
            f"(paired, median x{statistics.median(paired):.3f})"
        )
    finally:
        loop.close()


def in_process_costs(number: int = 100_000) -> None:
    """The router's and the activity hook's own work per request, timed in this
    process on the extension's own objects (no server): what the ratios above contain."""
    from tornado import web
    from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

    from hpc_proxies import config
    from hpc_proxies.jupyter.api import InstanceRouter
    from hpc_proxies.jupyter.instances import InstanceManager
    from hpc_proxies.jupyter.serverproxy import MANAGER_SETTING

    def request(path: str) -> HTTPServerRequest:
        start = RequestStartLine("GET", path, "HTTP/1.1")
        return HTTPServerRequest(start_line=start, headers=HTTPHeaders(Host="127.0.0.1"))

    def each(call) -> float:
        return timeit.timeit(call, number=number) / number * 1e6

    manager = InstanceManager(config.load(env={}, files=[]), "/")
    second = manager.create("tensorboard")
    router = InstanceRouter(web.Application(base_url="/"), manager)
    to_second, to_first = request(f"/tensorboard@2/{ENDPOINT}"), request(f"/tensorboard/{ENDPOINT}")
    routed = each(lambda: router.matcher.match(to_second) and router.find_handler(to_second))
    passed = each(lambda: router.matcher.match(to_first))
    first = manager.get("tensorboard", "default").proxy
    with_ext = SimpleNamespace(settings={MANAGER_SETTING: manager}, state={})
    without = SimpleNamespace(settings={}, state={})
    hooks = [
        each(lambda p=p, h=h: p.record_activity(h))
        for p, h in ((first, with_ext), (second.proxy, with_ext), (first, without))
    ]
    print("\nIn process, per request (the extension's own objects, no server):")
    print(
        f"  router: /tensorboard@2/... matched and its handler found {routed:.1f} us; "
        f"its rule tried on /tensorboard/... {passed:.2f} us"
    )
    print(
        f"  activity hook: first instance {hooks[0]:.2f} us, second {hooks[1]:.2f} us, "
        f"without the extension {hooks[2]:.2f} us"
    )


# ------------------------------------------------------------------ main
def disabled_config(tmp: Path) -> None:
    """Server B: the extension off. A command-line ``--ServerApp.jpserver_extensions``
    would do the same; start_jupyter takes no extra arguments, so the user config
    directory (read last, so it wins over the venv's jupyter_server_config.d) says it."""
    config_dir = tmp / "jupyter" / "config"
    config_dir.mkdir(parents=True)
    (config_dir / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"hpc_proxies": False}}})
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="bursts per path and clients")
    parser.add_argument("--seconds", type=float, default=1.5, help="length of an HTTP burst")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--window", type=float, default=60.0, help="CPU window, seconds")
    parser.add_argument("--windows", type=int, default=2, help="idle + polled window pairs")
    parser.add_argument("--calls", type=int, default=50, help="GET instances calls")
    parser.add_argument("--stops", type=int, default=5, help="stops of a running Xpra")
    args = parser.parse_args()
    began = time.monotonic()
    in_process_costs()

    with contextlib.ExitStack() as stack:
        tmp_a = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        tmp_b = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        disabled_config(tmp_b)
        everything: set[int] = set()

        @stack.callback  # runs last: after both servers stopped
        def check_nothing_left() -> None:
            left = alive(everything)
            print(f"\nAfter the servers stopped: {len(left)} of their processes left", end="")
            print(f" {[cmdline(p) for p in left]}" if left else "")

        a = stack.enter_context(jupyter_with_site(tmp_a, SITE))
        b = stack.enter_context(jupyter_with_site(tmp_b, SITE))
        status_a, _ = api(a, "GET", "instances")
        status_b, _ = api(b, "GET", "instances")
        assert (status_a, status_b) == (200, 404), (status_a, status_b)
        print(f"API: A (extension on) {status_a}, B (extension off) {status_b}")
        for server in (a, b):
            start_apps(server)
            everything |= server.descendants()
        settled = time.monotonic()
        for app in READY:
            wait_running(a, app)
        time.sleep(max(0.0, 5 - (time.monotonic() - settled)))  # first answers are over
        for name, server in (("A", a), ("B", b)):
            print(f"{name}: {len(server.descendants())} processes below the server")

        # 2. What the extension costs the Jupyter server.
        print(f"\nCPU windows of {args.window:.0f} s (idle, then A polled every {POLL:.0f} s):")
        cost = measure_server_cost(a, b, args.window, args.windows)
        print_server_cost(cost, args.window)

        # 3. The API's own latency.
        ours, theirs = api_latency(a, args.calls)
        print(f"\nAPI on A, 5 apps running, {args.calls} calls each, interleaved")
        for label, values in (("GET instances", ours), ("GET /api/status (Jupyter's)", theirs)):
            print(
                f"  {label:30s} p50 {pct(values, 0.5) * 1e3:7.2f} ms  "
                f"p99 {pct(values, 0.99) * 1e3:7.2f} ms"
            )
        print(f"  ratio p50 instances/status: x{pct(ours, 0.5) / pct(theirs, 0.5):.1f}")
        status_breakdown(a)
        stops = []
        for _ in range(args.stops):
            stops.append(time_stop(a))
            everything |= a.descendants()
            a.request(READY["xpra"])  # the next run's Xpra starts meanwhile
        took = [s[0] for s in stops]
        print(
            f"  POST instances/xpra/default/stop: median {statistics.median(took):.2f} s "
            f"{[round(t, 2) for t in took]}; processes alive on return "
            f"{[f'{s[2]} of {s[1]}' for s in stops]}"
        )
        a.wait_for_app(READY["xpra"], timeout=120)

        # 1. The data path through the router.
        for app in ("tensorboard", "vnc"):
            status, data = api(a, "POST", "instances", {"app": app})
            assert status == 201 and data["instance"] == "2", (status, data)
            a.wait_for_app(f"/{app}@2/", timeout=120)
        everything |= a.descendants() | b.descendants()
        measure_data_path(a, b, args.runs, args.clients, args.seconds)
        everything |= a.descendants() | b.descendants()
    print(f"Run time {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
