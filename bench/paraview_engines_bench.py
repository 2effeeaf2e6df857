"""ParaView per launch engine: time to connect, to the first picture, and per interactive
frame, with ``engine = "mpiexec"`` (2 ranks) against ``engine = "local"`` (one process),
both through hpc-proxies, measured in the same run, alternately.

    .venv/bin/python bench/paraview_engines_bench.py [--runs 3] [--ranks 2]

The client is ``paraview_bench.py``'s: ``connect()``, a 64x64 sphere, ``show(interactive=
False)``, then 20 frames as the interactive view makes them (a camera turn, a render on
pvserver, a JPEG). Each run starts pvserver anew (the client's leaving stops it).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from common import kill_leftovers, start_jupyter
from paraview_bench import KERNEL_PYTHON, proxied_run, report_runs


@contextlib.contextmanager
def jupyter_with(site: str) -> Iterator:
    """A Jupyter server whose site configuration is ``site``; stopped after."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "site.toml"
        config.write_text(site)
        server = start_jupyter(Path(tmp), {"HPC_PROXIES_CONFIG": str(config)})
        try:
            yield server
        finally:
            left = server.descendants()
            server.stop()
            kill_leftovers(left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    if not KERNEL_PYTHON.exists():
        sys.exit("install the kernel first: hpc-proxies install-kernel paraview --sys-prefix")
    mpi_site = f'[apps.paraview]\nengine = "mpiexec"\nranks = {args.ranks}\n'
    with jupyter_with("") as local, jupyter_with(mpi_site) as mpi:
        for server in (local, mpi):
            server.wait_for_app("/paraview/api/status")
        on_local, on_mpi = [], []
        for _ in range(args.runs):
            on_local.append(proxied_run(local))
            on_mpi.append(proxied_run(mpi))
    print(f"'via Jupyter' below is mpiexec ({args.ranks} ranks); both are through Jupyter")
    report_runs(on_local, on_mpi, "local", f"mpiexec ({args.ranks} ranks)")


if __name__ == "__main__":
    main()
