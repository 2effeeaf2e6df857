"""Cost of reading the site configuration at server start (target: under 50 ms).

    .venv/bin/python bench/config_bench.py [--runs 200]

Times, in one run: parsing the file alone with tomllib (the floor), config.load()
(parse, validate, select the system, merge), and the whole entry-point call that
jupyter-server-proxy makes at start (setup_xpra(), which loads the config once).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tomllib

from hpc_proxies import config
from hpc_proxies.jupyter.entrypoints import setup_xpra

SITE = """
[apps.xpra]
timeout = 90
environment = { LANG = "C.UTF-8" }
""" + "".join(
    f"""
[systems.cluster{i}]
description = "Cluster {i} login nodes"
match = ["c{i}login*", "c{i}login*.example.org"]
[systems.cluster{i}.apps.xpra]
setup = "module load xpra/5.0"
session = "xterm"
"""
    for i in range(12)
)


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(SITE)
        os.environ["HPC_PROXIES_CONFIG"] = str(path)
        os.environ["HPC_PROXIES_SYSTEM"] = "cluster11"

        def parse():
            with open(path, "rb") as f:
                tomllib.load(f)

        floor = median_ms(parse, runs)
        load = median_ms(config.load, runs)
        entry = median_ms(setup_xpra, runs)
    print(f"{len(SITE.splitlines())}-line file with 12 systems, {runs} runs, medians:")
    print(f"  tomllib.load alone      {floor:.2f} ms")
    print(f"  config.load()           {load:.2f} ms  (x{load / floor:.1f} the bare parse)")
    print(f"  setup_xpra() entry point {entry:.2f} ms  (target < 50 ms)")
    sys.exit(0 if entry < 50 else 1)


if __name__ == "__main__":
    main()
