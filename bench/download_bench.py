"""A large download through a tile vs from the app's own socket, and the Jupyter
server's memory meanwhile; jupyter-server-proxy's own behaviour beside it.

    .venv/bin/python bench/download_bench.py [--mib 1024] [--runs 3] [--slow-mbps 20]
        [--slow-mib 256] [--stock-mib 99] [--no-stock]

The app is the RStudio stand-in (tests/standin/rserver), whose ``/download?bytes=N``
writes N bytes on its unix socket as fast as the reader takes them. In the same run,
interleaved:

* direct: the body read from the app's socket (the launch socket, after the handover);
* through Jupyter: ``/rstudio/download`` with the token, over loopback TCP, streamed by
  hpc-proxies (``hpc_proxies/jupyter/streaming.py``); MB/s, the ratio (via Jupyter /
  direct), and the Jupyter server's peak RSS growth (VmHWM reset before each download,
  and VmRSS sampled every 5 ms);
* a slow reader (``--slow-mbps``) through Jupyter: the peak RSS growth (backpressure);
* stock (unless ``--no-stock``): a second Jupyter server without the hpc_proxies server
  extension, so ``/rstudio/`` is jupyter-server-proxy's own handler, buffering: the
  status of the ``--mib`` download, ``--stock-mib`` direct vs through it, and its
  event-stream mode (``Accept: text/event-stream``) behind the slow reader.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import common  # noqa: F401 (puts tests/ on sys.path)
from conftest import jupyter_with_site
from test_download import (
    RSTUDIO_TOML,
    Download,
    MemoryWatch,
    UnixHTTPConnection,
    auth,
    download,
    through_jupyter,
)

MiB = 1 << 20


@contextmanager
def rstudio_jupyter(stock: bool):
    """A Jupyter server with the RStudio stand-in up; ``stock``: without our extension."""
    with tempfile.TemporaryDirectory(prefix="download-bench-") as tmp:
        if stock:
            config = Path(tmp) / "jupyter" / "config"
            config.mkdir(parents=True)
            off = {"ServerApp": {"jpserver_extensions": {"hpc_proxies": False}}}
            (config / "jupyter_server_config.json").write_text(json.dumps(off))
        with jupyter_with_site(Path(tmp), RSTUDIO_TOML) as server:
            server.wait_for_app("/rstudio/")
            yield server


def direct(server, size: int) -> Download:
    sock = server.runtime_dir("rstudio") / "socket"
    return download(UnixHTTPConnection(sock), f"/rstudio/download?bytes={size}")


def proxied(server, size: int, rate: float | None = None, **headers: str) -> tuple[Download, int]:
    """The download through Jupyter and the Jupyter server's peak RSS growth."""
    with MemoryWatch(server.proc.pid) as memory:
        got = download(
            through_jupyter(server),
            f"/rstudio/download?bytes={size}",
            auth(server, **headers),
            rate=rate,
        )
    return got, memory.growth


def line(label: str, got: Download, growth: int | None = None) -> str:
    text = f"  {label}: {got.status}, {got.size / MiB:.0f} MiB in {got.seconds:.2f} s"
    text += f" = {got.mb_per_s:.0f} MB/s"
    if growth is not None:
        text += f"; Jupyter RSS +{growth / MiB:.1f} MiB"
    return text


def compare(server, size: int, runs: int, label: str) -> None:
    """Direct vs through Jupyter, interleaved: medians, ratio, peak RSS growth."""
    speeds_d, speeds_p, growths = [], [], []
    for _ in range(runs):
        d = direct(server, size)
        p, growth = proxied(server, size)
        print(line("direct", d))
        print(line("via Jupyter", p, growth))
        speeds_d.append(d.mb_per_s)
        speeds_p.append(p.mb_per_s if p.status == 200 and p.size == size else 0.0)
        growths.append(growth)
    md, mp = statistics.median(speeds_d), statistics.median(speeds_p)
    print(
        f"{label}: direct median {md:.0f} MB/s, via Jupyter median {mp:.0f} MB/s; "
        f"ratio {mp / md:.2f}; Jupyter peak RSS growth max {max(growths) / MiB:.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="size of the big download")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slow-mbps", type=float, default=20.0, help="the slow reader, MB/s")
    parser.add_argument("--slow-mib", type=int, default=256, help="what the slow reader reads")
    parser.add_argument("--stock-mib", type=int, default=99, help="under the stock 100 MiB")
    parser.add_argument("--no-stock", action="store_true", help="skip the stock server")
    args = parser.parse_args()
    size, slow = args.mib * MiB, args.slow_mbps * 1e6

    print(f"== hpc-proxies (streaming), {args.mib} MiB, {args.runs} runs")
    with rstudio_jupyter(stock=False) as server:
        proxied(server, 4 * MiB)  # warm-up: the first request's own allocations
        compare(server, size, args.runs, f"{args.mib} MiB")
        got, growth = proxied(server, args.slow_mib * MiB, rate=slow)
        print(line(f"slow reader ({args.slow_mbps:g} MB/s)", got, growth))
    if args.no_stock:
        return
    print("== stock jupyter-server-proxy (the hpc_proxies server extension off)")
    with rstudio_jupyter(stock=True) as server:
        proxied(server, 4 * MiB)
        got, growth = proxied(server, size)
        print(line(f"{args.mib} MiB", got, growth) + f" ({got.head[:60]!r}...)")
        compare(server, args.stock_mib * MiB, args.runs, f"stock {args.stock_mib} MiB")
    with rstudio_jupyter(stock=True) as server:  # fresh: its RSS not already grown
        proxied(server, 4 * MiB)
        got, growth = proxied(server, args.stock_mib * MiB, rate=slow, Accept="text/event-stream")
        print(line(f"stock event-stream mode, slow reader ({args.slow_mbps:g} MB/s)", got, growth))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
