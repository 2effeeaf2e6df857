"""How the VNC stream crosses the Jupyter server: our bridge vs raw_socket_proxy vs direct.

    .venv/bin/python bench/vnc_transport_bench.py [--mib 64] [--runs 3]

A stand-in backend on a unix socket (the VNC server's place) streams bytes to the
client (framebuffer updates) or swallows them (input, uploads). Three paths, in one
run on one machine, so compare the ratios:
* direct: a unix-socket client, the floor;
* raw: jupyter-server-proxy's ``raw_socket_proxy`` to the socket (one hop);
* bridge: the VNC app's path, Jupyter's websocket proxy to ``hpc_proxies.bridge``.
Then the Jupyter server's memory while a slow browser reads 512 MiB: without
backpressure the server buffers what the browser has not read yet.
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

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from common import rss_mib  # noqa: E402
from conftest import start_jupyter  # noqa: E402

CHUNK = 64 * 1024


BIG = 512 * 1024 * 1024


async def backend(path: str, total: int) -> asyncio.AbstractServer:
    """D: send ``total`` bytes; B: send 512 MiB; U: swallow ``total`` bytes, answer K."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = await reader.readexactly(1)
        if mode in (b"D", b"B"):
            block = b"\x5a" * CHUNK
            for _ in range((total if mode == b"D" else BIG) // CHUNK):
                writer.write(block)
                await writer.drain()
        else:
            left = total
            while left > 0:
                left -= len(await reader.read(1 << 20))
            writer.write(b"K")
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, path=path)


async def direct(path: str, mode: bytes, total: int) -> float:
    reader, writer = await asyncio.open_unix_connection(path)
    t0 = time.perf_counter()
    writer.write(mode)
    if mode == b"D":
        got = 0
        while got < total:
            got += len(await reader.read(1 << 20))
    else:
        block = b"\x5a" * CHUNK
        for _ in range(total // CHUNK):
            writer.write(block)
            await writer.drain()
        await reader.readexactly(1)
    elapsed = time.perf_counter() - t0
    writer.close()
    return total / elapsed / 1e6


async def over_websocket(
    url: str, token: str, mode: bytes, total: int, slow: bool = False
) -> float:
    headers = {"Authorization": f"token {token}"}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            url, headers=headers, protocols=("binary",), max_msg_size=0, compress=0
        ) as ws:
            t0 = time.perf_counter()
            await ws.send_bytes(mode)
            if mode in (b"D", b"B"):
                got = 0
                while got < total:
                    msg = await ws.receive()
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        break
                    got += len(msg.data)
                    if slow:
                        await asyncio.sleep(0.01)
            else:
                block = b"\x5a" * CHUNK
                for _ in range(total // CHUNK):
                    await ws.send_bytes(block)
                await ws.receive()
            return total / (time.perf_counter() - t0) / 1e6


async def peak_rss_while(coro, pids: list[int]) -> tuple[float, dict[int, float]]:
    peaks = {pid: rss_mib(pid) for pid in pids}
    task = asyncio.ensure_future(coro)
    while not task.done():
        for pid in pids:
            peaks[pid] = max(peaks[pid], rss_mib(pid))
        await asyncio.sleep(0.05)
    return task.result(), peaks


def serve_backend(path: str, total: int) -> None:
    """Run the stand-in backend in a process of its own, as a VNC server would be."""

    async def forever() -> None:
        await backend(path, total)
        await asyncio.Event().wait()

    asyncio.run(forever())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    args = parser.parse_args()
    total = args.mib * 1024 * 1024
    if args.backend:
        serve_backend(args.backend, total)
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        os.chmod(tmp, 0o700)
        sock, bridge_sock, web = (
            tmp_path / "backend.sock",
            tmp_path / "bridge.sock",
            tmp_path / "web",
        )
        web.mkdir()
        config_dir = tmp_path / "jupyter" / "config"
        config_dir.mkdir(parents=True)
        (config_dir / "jupyter_server_config.py").write_text(
            "c.ServerProxy.servers = {\n"
            f"  'rawsock': {{'unix_socket': '{sock}', 'raw_socket_proxy': True}},\n"
            f"  'bridged': {{'unix_socket': '{bridge_sock}'}},\n"
            "}\n"
        )
        bridge = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpc_proxies.bridge",
                "--listen",
                str(bridge_sock),
                "--target",
                str(sock),
                "--web",
                str(web),
                "--index",
                "index.html",
            ]
        )
        stand_in = subprocess.Popen(
            [sys.executable, __file__, "--backend", str(sock), "--mib", str(args.mib)]
        )
        server = start_jupyter(tmp_path)
        loop = asyncio.new_event_loop()
        try:
            while not sock.exists():
                time.sleep(0.05)
            base = f"ws://127.0.0.1:{server.port}"
            paths = {
                "direct": lambda m: direct(str(sock), m, total),
                "raw": lambda m: over_websocket(f"{base}/rawsock/", server.token, m, total),
                "bridge": lambda m: over_websocket(
                    f"{base}/bridged/websockify", server.token, m, total
                ),
            }
            results: dict[tuple[str, bytes], float] = {}
            for mode, label in ((b"D", "server->browser"), (b"U", "browser->server")):
                runs: dict[str, list[float]] = {name: [] for name in paths}
                for _ in range(args.runs):
                    for name, run in paths.items():  # interleaved, so load hits all alike
                        runs[name].append(loop.run_until_complete(run(mode)))
                print(f"{label}, {args.mib} MiB, median of {args.runs}:")
                for name, values in runs.items():
                    results[(name, mode)] = statistics.median(values)
                    ratio = results[(name, mode)] / results[("direct", mode)]
                    print(f"  {name:7s} {results[(name, mode)]:8.0f} MB/s   x{ratio:.2f} of direct")
            # Memory behind a slow reader (a browser on a thin link): 512 MiB pushed.
            print("Peak RSS while a slow reader takes 64 MiB of a 512 MiB stream:")
            for name, url in (
                ("raw", f"{base}/rawsock/"),
                ("bridge", f"{base}/bridged/websockify"),
            ):
                slow = asyncio.wait_for(
                    over_websocket(url, server.token, b"B", 64 * 1024 * 1024, slow=True), 300
                )
                _, peaks = loop.run_until_complete(
                    peak_rss_while(slow, [server.proc.pid, bridge.pid])
                )
                extra = f", bridge {peaks[bridge.pid]:4.0f} MiB" if name == "bridge" else ""
                print(f"  {name:7s} jupyter {peaks[server.proc.pid]:6.0f} MiB{extra}")
        finally:
            server.stop_all()
            for proc in (bridge, stand_in):
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
            loop.close()


if __name__ == "__main__":
    main()
