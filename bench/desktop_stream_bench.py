"""Desktops in Chromium: frames/s and the Jupyter server's CPU per MB, direct vs through Jupyter.

    .venv/bin/python bench/desktop_stream_bench.py [--apps vnc xpra] [--seconds 10] [--runs 3]
        [--workload noise|xterm|scroll] [--size 400x300] [--one-message-per-read]
        [--slow-browser KB_PER_S]

In each desktop a window repaints continuously (``--workload``):

* ``noise``: a Tk window of shifting noise (/usr/bin/python3's tkinter), 400x300 pixels
  unless ``--size`` says otherwise, as a video or a rotating 3D view;
* ``xterm``: an xterm of 150x48 printing random hex at full speed (``od``): many
  small updates, the workload of the first measurement;
* ``scroll``: an xterm of 150x48 scrolling ``yes | cat -n``.

Chromium (1280x800) opens the desktop two ways, interleaved in one run so the
machine's load hits both alike:

* direct: the launch's own socket (the VNC bridge, or Xpra) reached over loopback
  TCP through socat, a byte pump in C: the floor. The password goes in the URL,
  which is fine for a bench on loopback and never done by hpc-proxies;
* through Jupyter: ``/vnc/`` or ``/xpra/``, as a user opens it.

Frames are noVNC's completed framebuffer updates (``Display.flip``; and of those, the
ones that painted pixels) and Xpra's draw packets, counted in the page over
``--seconds``, as are the websocket messages the page receives and their bytes. The
Jupyter server's CPU (utime + stime) is divided by the bytes it sent to the browser
over the same window (the kernel's TCP counters, ``ss -i``) and by the messages, less
what it spends while idle (during the direct runs, which pass nothing through it).

``--slow-browser 250`` is the guard for a browser on a slow link: both paths go through
a relay that passes at most 250 KB/s toward the browser (with small socket buffers, so
the sender feels it), and the bench reports how the Jupyter server's and the
launcher's memory (RSS) grow meanwhile. jupyter-server-proxy does not wait for the
browser before it reads the next websocket message; what bounds it for the desktops is
their protocols (RFB's update requests, Xpra's acks).

``--one-message-per-read`` measures the VNC bridge as it was before
:func:`hpc_proxies.wsjoin.coalesced_chunks`: one websocket message per ``recv()``.
The bench puts a ``sitecustomize`` on the Jupyter server's ``PYTHONPATH`` that
replaces the function in the bridge's process only (or the launcher's, which may run
the bridge); hpc-proxies has no such switch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import socket as socket_module
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import CHROMIUM, CHROMIUM_ARGS, bench_jupyter, free_port, rss_mib

# A window whose every pixel changes in every frame, as a video or a rotating 3D view
# does: a tile of noise, shifted each frame (cheap to make, costly to encode and send).
REPAINT = """\
import os, sys, tkinter
W, H = int(sys.argv[1]), int(sys.argv[2])
noise = os.urandom(W * H * 3 * 2)
header = b"P6 %d %d 255 " % (W, H)
root = tkinter.Tk()
root.geometry("%dx%d+0+0" % (W, H))
image = tkinter.PhotoImage(width=W, height=H)
tkinter.Label(root, image=image, borderwidth=0).pack()
frame = 0
def paint():
    global frame
    offset = (frame * 2993) % (W * H * 3)
    image.configure(data=header + noise[offset:offset + W * H * 3], format="PPM")
    frame += 1
    root.after(5, paint)
paint()
root.mainloop()
"""
# Text, as a terminal shows it: many small rectangles in every update.
HEX = "while :; do od -An -tx1 -N 4096 /dev/urandom; done"
SCROLL = "yes | cat -n"
WORKLOADS = {
    "noise": "/usr/bin/python3 {script} {width} {height}",
    "xterm": "xterm -geometry 150x48+0+0 -e sh -c " + shlex.quote(HEX),
    "scroll": "xterm -geometry 150x48+0+0 -e sh -c " + shlex.quote(SCROLL),
}
SITE = """
[apps.vnc]
session = {vnc_session}
[apps.xpra]
session = {xpra_session}
"""

# The bridge as it was: one websocket message per recv() (``--one-message-per-read``).
ONE_MESSAGE_PER_READ = """\
import os
from pathlib import Path

# The bridge runs in its own process (python -m hpc_proxies.bridge) or in the launcher's.
argv = Path("/proc/self/cmdline").read_bytes().split(b"\\0")
if any(arg in (b"hpc_proxies.bridge", b"hpc_proxies.launcher") for arg in argv):
    import asyncio

    from hpc_proxies import wsjoin

    async def one_message_per_read(sock, limit=wsjoin.CHUNK):
        loop = asyncio.get_running_loop()
        while chunk := await loop.sock_recv(sock, limit):
            yield chunk

    wsjoin.coalesced_chunks = one_message_per_read
    (Path(__file__).parent / f"one-message-per-read.{os.getpid()}").touch()
"""

# Websocket messages the page receives (on the page's own thread: noVNC's; Xpra's client
# may read its websocket in a worker, where this does not reach).
COUNT_MESSAGES = """
window.benchMessages = 0;
window.benchBytes = 0;
const NativeWebSocket = window.WebSocket;
window.WebSocket = function (...args) {
    const ws = new NativeWebSocket(...args);
    ws.addEventListener('message', (event) => {
        window.benchMessages += 1;
        const data = event.data;
        window.benchBytes += data.byteLength ?? data.size ?? data.length;
    });
    return ws;
};
window.WebSocket.prototype = NativeWebSocket.prototype;
Object.assign(window.WebSocket, NativeWebSocket);
for (const k of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) {
    window.WebSocket[k] = NativeWebSocket[k];
}
"""

# Counting starts once the client draws; the hooks are installed from the page.
VNC_HOOK = """async () => {
    const m = await import('./core/display.js');
    const flip = m.default.prototype.flip;
    window.benchFrames = 0;
    window.benchPainted = 0;
    m.default.prototype.flip = function (fromQueue, ...rest) {
        window.benchFrames += 1;
        // A flip that shows something now (not queued behind drawing) and has damage:
        // TigerVNC also sends updates that change no pixel.
        const d = this._damageBounds;
        if ((fromQueue || this._renderQ.length === 0) && d.left < d.right && d.top < d.bottom) {
            window.benchPainted += 1;
        }
        return flip.call(this, fromQueue, ...rest);
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


def bytes_sent(port: int) -> int:
    """Bytes the Jupyter server has sent on its open TCP connections (to the browser),
    from the kernel's per-connection counters (``ss -i``: bytes_sent)."""
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(n) for n in re.findall(r"bytes_sent:(\d+)", out))


def launch_socket(server, app: str) -> tuple[Path, str]:
    """The launch's socket and its password, from the launcher's argv."""
    launcher = server.launcher_pid(app)
    argv = Path(f"/proc/{launcher}/cmdline").read_bytes().decode().split("\0")
    socket = Path(argv[argv.index("--socket") + 1])
    return socket, (socket.parent / "app" / "secret").read_text()


async def frames_per_second(url: str, app: str, seconds: float, server) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.add_init_script(COUNT_MESSAGES)
        await page.goto(url)
        await page.wait_for_function(
            VNC_READY if app == "vnc" else XPRA_READY, timeout=90_000, polling=100
        )
        await page.evaluate(VNC_HOOK if app == "vnc" else XPRA_HOOK)
        await page.wait_for_function("window.benchFrames > 2", timeout=30_000, polling=50)
        cpu0, out0 = cpu_seconds(server.proc.pid), bytes_sent(server.port)
        counts = (
            "[window.benchFrames, window.benchMessages, window.benchBytes,"
            " window.benchPainted ?? 0]"
        )
        (frames0, messages0, bytes0, painted0), t0 = await page.evaluate(counts), time.monotonic()
        await asyncio.sleep(seconds)
        (frames1, messages1, bytes1, painted1), t1 = await page.evaluate(counts), time.monotonic()
        cpu1, out1 = cpu_seconds(server.proc.pid), bytes_sent(server.port)
        await browser.close()
    return {
        "fps": (frames1 - frames0) / (t1 - t0),
        "painted": (painted1 - painted0) / (t1 - t0),
        "messages": (messages1 - messages0) / (t1 - t0),
        "kb_per_message": (bytes1 - bytes0) / 1e3 / max(messages1 - messages0, 1),
        "cpu_s": cpu1 - cpu0,
        "messages_total": messages1 - messages0,
        "mb": (out1 - out0) / 1e6,
    }


#: Socket buffers of the slow relay: small, so a slow browser holds back its sender.
RELAY_BUFFER = 64 * 1024


async def slow_relay(listen_port: int, upstream_port: int, bytes_per_s: float) -> asyncio.Server:
    """Loopback TCP from the browser to ``upstream_port``, passing at most
    ``bytes_per_s`` toward the browser on each connection (a slow link)."""

    async def toward_browser(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0
        with contextlib.suppress(ConnectionError):  # an end went away: the connection is over
            while data := await reader.read(16 * 1024):
                writer.write(data)
                await writer.drain()
                sent += len(data)
                ahead = sent / bytes_per_s - (loop.time() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)  # the link's pace, not a wait for a condition

    async def toward_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):  # an end went away: the connection is over
            while data := await reader.read(64 * 1024):
                writer.write(data)
                await writer.drain()

    async def connection(browser_r: asyncio.StreamReader, browser_w: asyncio.StreamWriter):
        sock = socket_module.socket()
        sock.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_RCVBUF, RELAY_BUFFER)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", upstream_port))
        server_r, server_w = await asyncio.open_connection(sock=sock, limit=RELAY_BUFFER)
        browser_w.get_extra_info("socket").setsockopt(
            socket_module.SOL_SOCKET, socket_module.SO_SNDBUF, RELAY_BUFFER
        )
        directions = [
            asyncio.ensure_future(toward_browser(server_r, browser_w)),
            asyncio.ensure_future(toward_server(browser_r, server_w)),
        ]
        try:
            await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for direction in directions:
                direction.cancel()
            browser_w.close()
            server_w.close()

    return await asyncio.start_server(connection, "127.0.0.1", listen_port)


async def behind_a_slow_link(url: str, app: str, seconds: float, pids: dict[str, int]) -> dict:
    """Open ``url`` (through the slow relay) until the desktop draws, then watch for
    ``seconds``: frames/s, and each process's RSS at the start, its peak, and at the end."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(url, timeout=120_000)
        await page.wait_for_function(
            VNC_READY if app == "vnc" else XPRA_READY, timeout=120_000, polling=200
        )
        await page.evaluate(VNC_HOOK if app == "vnc" else XPRA_HOOK)
        start = {name: rss_mib(pid) for name, pid in pids.items()}
        peak = dict(start)
        frames0, t0 = await page.evaluate("window.benchFrames"), time.monotonic()
        while time.monotonic() - t0 < seconds:
            await asyncio.sleep(0.5)  # a sampling interval
            for name, pid in pids.items():
                peak[name] = max(peak[name], rss_mib(pid))
        frames1, t1 = await page.evaluate("window.benchFrames"), time.monotonic()
        end = {name: rss_mib(pid) for name, pid in pids.items()}
        await browser.close()
    return {"fps": (frames1 - frames0) / (t1 - t0), "start": start, "peak": peak, "end": end}


def bench_slow_browser(server, app: str, kb_per_s: float, seconds: float) -> None:
    """Both paths behind the slow relay: what the Jupyter server and the launcher (which
    serves VNC's websocket) hold meanwhile."""
    server.wait_for_app(f"/{app}/")
    socket, password = launch_socket(server, app)
    pids = {"Jupyter server": server.proc.pid, "launcher": server.launcher_pid(app)}
    socat_port, relay_port = free_port(), free_port()
    pump = socat(socat_port, socket)

    async def run(path: str) -> dict:
        upstream = socat_port if path == "direct" else server.port
        relay = await slow_relay(relay_port, upstream, kb_per_s * 1000)
        try:
            if path == "direct":
                url = direct_url(app, relay_port, password)
            else:
                url = f"http://127.0.0.1:{relay_port}/{app}/?token={server.token}"
            return await behind_a_slow_link(url, app, seconds, pids)
        finally:
            relay.close()

    try:
        results = {path: asyncio.run(run(path)) for path in ("direct", "jupyter")}
    finally:
        pump.terminate()
        pump.wait()
    print(f"{app} behind a {kb_per_s:.0f} KB/s link for {seconds:.0f} s")
    for path, result in results.items():
        start, peak, end = result["start"], result["peak"], result["end"]
        growth = ", ".join(
            f"{name} {start[name]:.1f} MiB, peak {peak[name] - start[name]:+.1f},"
            f" end {end[name] - start[name]:+.1f}"
            for name in pids
        )
        print(f"  {path}: {result['fps']:.1f} frames/s; RSS {growth}")


def socat(port: int, socket: Path) -> subprocess.Popen:
    """Loopback TCP to the launch socket: the direct path."""
    proc = subprocess.Popen(
        [
            "socat",
            f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,nodelay",
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
                results[path].append(asyncio.run(frames_per_second(url, app, seconds, server)))
    finally:
        pump.terminate()
        pump.wait()
    report_stream(app, results, seconds)


def report_stream(app: str, results: dict[str, list[dict]], seconds: float) -> None:
    """Frames/s of both paths and their ratio; the messages as the page received them;
    the Jupyter server's CPU per MB and per message it passed on."""

    def median(path: str, key: str) -> float:
        return statistics.median(r[key] for r in results[path])

    direct, proxied = median("direct", "fps"), median("jupyter", "fps")
    print(f"{app}: frames/s direct {direct:.1f}, through Jupyter {proxied:.1f}", end="")
    print(f"; ratio x{proxied / direct:.2f}")
    print(f"  runs: direct {[round(r['fps'], 1) for r in results['direct']]}", end="")
    print(f", through Jupyter {[round(r['fps'], 1) for r in results['jupyter']]}")
    if app == "vnc":
        painted_direct, painted_jupyter = median("direct", "painted"), median("jupyter", "painted")
        print(
            f"  of which painted something: direct {painted_direct:.1f}/s, "
            f"through Jupyter {painted_jupyter:.1f}/s; "
            f"ratio x{painted_jupyter / painted_direct:.2f}"
        )
    for path in results:
        print(
            f"  {path}: {median(path, 'messages'):.0f} websocket messages/s, "
            f"{median(path, 'kb_per_message'):.1f} KB each"
        )
    # The Jupyter server's own CPU while it passes nothing on (during the direct runs)
    # is subtracted: what is left is what the stream costs it.
    idle = statistics.median(r["cpu_s"] / seconds for r in results["direct"])
    jupyter = [r for r in results["jupyter"] if r["mb"] > 0 and r["messages_total"]]
    if jupyter:
        cpu = statistics.median(r["cpu_s"] / seconds for r in jupyter)
        for r in jupyter:
            r["stream_cpu_s"] = max(r["cpu_s"] - idle * seconds, 0)
        per_mb = statistics.median(1000 * r["stream_cpu_s"] / r["mb"] for r in jupyter)
        per_message = statistics.median(
            1e6 * r["stream_cpu_s"] / r["messages_total"] for r in jupyter
        )
        mb_per_s = statistics.median(r["mb"] / seconds for r in jupyter)
        print(
            f"  Jupyter server: {cpu:.0%} of a core ({idle:.0%} while idle), "
            f"{mb_per_s:.2f} MB/s to the browser; for the stream {per_mb:.0f} ms CPU per MB, "
            f"{per_message:.0f} us per message"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", nargs="+", default=["vnc", "xpra"], choices=["vnc", "xpra"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workload", default="noise", choices=sorted(WORKLOADS))
    parser.add_argument("--size", default="400x300", help="the noise window's WIDTHxHEIGHT")
    parser.add_argument(
        "--one-message-per-read",
        action="store_true",
        help="the VNC bridge as before coalesced_chunks (for before/after figures)",
    )
    parser.add_argument(
        "--slow-browser",
        type=float,
        metavar="KB_PER_S",
        help="instead of frames/s: memory with the browser behind a link this slow",
    )
    args = parser.parse_args()
    if shutil.which("socat") is None:
        raise SystemExit("socat is needed for the direct path: apt install socat")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "repaint.py"
        script.write_text(REPAINT)
        site = Path(tmp) / "site.toml"
        width, height = args.size.split("x")
        window = WORKLOADS[args.workload].format(script=script, width=width, height=height)
        vnc_session = "exec openbox --startup " + shlex.quote(window)
        site.write_text(
            SITE.format(vnc_session=json.dumps(vnc_session), xpra_session=json.dumps(window))
        )
        os.environ["HPC_PROXIES_CONFIG"] = str(site)
        if args.one_message_per_read:
            (Path(tmp) / "sitecustomize.py").write_text(ONE_MESSAGE_PER_READ)
            path = [tmp, os.environ.get("PYTHONPATH", "")]
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
        print(f"workload {args.workload}: {window}")
        with bench_jupyter() as server:
            for app in args.apps:
                if args.slow_browser:
                    bench_slow_browser(server, app, args.slow_browser, args.seconds)
                else:
                    bench_app(server, app, args.runs, args.seconds)
        if args.one_message_per_read and not list(Path(tmp).glob("one-message-per-read.*")):
            raise SystemExit("--one-message-per-read: no bridge was patched")


if __name__ == "__main__":
    main()
