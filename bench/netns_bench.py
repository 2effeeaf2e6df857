"""The cost of pvserver's private network: a TCP server reached directly on 127.0.0.1
against the same server in a private network namespace reached through the keeper and
the service's relay (hpc_proxies.netns), measured in the same run.

    .venv/bin/python bench/netns_bench.py [--runs 5] [--megabytes 256] [--pings 2000]

Round trip: a 64-byte request in two writes (header, body) and its echo, ``--pings``
times in a row (what a camera turn costs besides rendering; a hop with Nagle on shows
here). Throughput: ``--megabytes`` from the server to the client (what a frame or a
dataset costs). The relay runs in its own process, as in the tile's
service; the client is this process. Also: the keeper's memory (RSS).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from hpc_proxies import netns

#: Answers "ping" lines one by one, or sends N bytes for "bulk N".
SERVER = textwrap.dedent(
    """
    import socket, sys, threading
    server = socket.create_server((sys.argv[1], 0))
    print("PORT", server.getsockname()[1], flush=True)
    block = bytes(1 << 20)
    def serve(conn):
        with conn:
            first = conn.recv(64)
            if first.startswith(b"bulk"):
                left = int(first.split()[1])
                while left > 0:
                    left -= conn.send(block[: min(left, len(block))])
                return
            data = first
            while data:
                conn.sendall(data)
                data = conn.recv(64)
    while True:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    """
)

RELAY = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from hpc_proxies.netns import LoopbackRelay
    async def main():
        relay = await LoopbackRelay(Path(sys.argv[1]), int(sys.argv[2])).start()
        print("PORT", relay.port, flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
    """
)


def port_of(proc: subprocess.Popen) -> int:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("PORT"):
            return int(line.split()[1])
    raise RuntimeError("no port")


def round_trips(port: int, pings: int) -> float:
    """Seconds per round trip of a 64-byte request sent in two writes, as RPC
    protocols send a header and a body (a hop with Nagle on would stall each one)."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        message = b"p" * 64
        start = time.perf_counter()
        for _ in range(pings):
            conn.sendall(message[:16])
            conn.sendall(message[16:])
            got = 0
            while got < len(message):
                got += len(conn.recv(64))
        return (time.perf_counter() - start) / pings


def throughput(port: int, megabytes: int) -> float:
    """MB/s of a bulk transfer from the server."""
    total = megabytes << 20
    with socket.create_connection(("127.0.0.1", port)) as conn:
        start = time.perf_counter()
        conn.sendall(f"bulk {total}".encode())
        got = 0
        while got < total:
            chunk = conn.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        assert got == total, (got, total)
        return megabytes / (time.perf_counter() - start)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--pings", type=int, default=2000)
    args = parser.parse_args()
    procs: list[subprocess.Popen] = []

    def start(argv: list[str]) -> subprocess.Popen:
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
        return procs[-1]

    with tempfile.TemporaryDirectory() as tmp:
        try:
            direct = port_of(start([sys.executable, "-c", SERVER, "127.0.0.1"]))
            connector = Path(tmp) / "connector.sock"
            keeper = start(netns.keeper_argv(connector, [sys.executable, "-c", SERVER, "0.0.0.0"]))  # noqa: S104 (inside)
            inner = port_of(keeper)
            relayed = port_of(start([sys.executable, "-c", RELAY, str(connector), str(inner)]))
            results: dict[str, list[float]] = {k: [] for k in ("rtt_d", "rtt_r", "mbs_d", "mbs_r")}
            for _ in range(args.runs):  # interleaved, so both see the same machine load
                results["rtt_d"].append(round_trips(direct, args.pings) * 1e6)
                results["rtt_r"].append(round_trips(relayed, args.pings) * 1e6)
                results["mbs_d"].append(throughput(direct, args.megabytes))
                results["mbs_r"].append(throughput(relayed, args.megabytes))
            keeper_rss = rss_kib(keeper.pid)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
    med = {k: statistics.median(v) for k, v in results.items()}
    print(
        f"round trip (64 B in two writes, echoed; {args.pings} in a row), "
        f"medians of {args.runs} runs:"
    )
    print(
        f"  direct {med['rtt_d']:.0f} us, private namespace + relay {med['rtt_r']:.0f} us;", end=""
    )
    print(f" ratio {med['rtt_r'] / med['rtt_d']:.2f}")
    print(f"throughput ({args.megabytes} MB from the server):")
    print(
        f"  direct {med['mbs_d']:.0f} MB/s, private namespace + relay {med['mbs_r']:.0f} MB/s;",
        end="",
    )
    print(f" ratio {med['mbs_r'] / med['mbs_d']:.2f}")
    print(f"keeper process RSS: {keeper_rss / 1024:.1f} MiB")
    for key, values in results.items():
        print(f"  {key}: {[round(v) for v in values]}")


if __name__ == "__main__":
    main()
