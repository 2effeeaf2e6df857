"""ParaView per launch engine: time to connect, to the first picture, and per interactive
frame, with ``engine = "mpiexec"`` (2 ranks) and ``engine = "slurm"`` (2 ranks, a batch
job of its own) against ``engine = "local"`` (one process), all through hpc-proxies,
measured in the same run, alternately.

    .venv/bin/python bench/paraview_engines_bench.py [--runs 3] [--ranks 2]

Run as root: the slurm engine's jobs run on a one-node Slurm cluster (2 CPUs) that this
script starts for itself (``tests/slurm.py``'s ``running_cluster()``) and stops at the end,
after cancelling every job left. Each engine has a Jupyter server of its own.

The client is ``paraview_bench.py``'s, a fresh kernel Python each time: ``connect()``, a
64x64 sphere, ``show(interactive=False)``, then 20 frames as the interactive view makes
them (a camera turn, a render on pvserver, a JPEG). What it measures, from before
``import paraview.simple``:

* connect: until ``connect()`` returns;
* first picture: until ``show(interactive=False)`` returns (so the connect included);
* frame: the median of the 20 frames, in ms.

One run is, in this order:

* local: the client; pvserver starts for it and stops when it leaves (the script waits
  until it has stopped);
* mpiexec: the same, with the ranks started by mpiexec;
* slurm, new job: ``POST /paraview/api/stop`` first (it cancels the job, if any), then the
  client, whose connect includes submitting the job, its time in the queue and its start,
  and the first pvserver of the job connecting back;
* slurm, job running: the client again, on the same job: after a client leaves, the job
  starts pvserver anew, and the script waits until that pvserver has connected back
  ("Waiting for a client."), so this connect has no job start and no pvserver start.

Ratios are the engine's median over the local median (every run in brackets).
"""

from __future__ import annotations

import sys
from pathlib import Path

# tests/slurm.py (the cluster) is a test helper: tests/ on sys.path, as common.py does.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator

import slurm
from common import kill_leftovers, start_jupyter
from paraview_bench import KERNEL_PYTHON, proxied_run, run_client

#: tests/slurm.py's one node has 2 CPUs: a job of more ranks would never start.
CLUSTER_CPUS = 2
METRICS = (
    ("connect", "Time to connect", "s"),
    ("picture", "Time to first picture", "s"),
    ("frame_ms", "Frame (turn, render on pvserver, JPEG), median of 20", "ms"),
)


@contextlib.contextmanager
def jupyter_with(site: str, env: dict | None = None) -> Iterator:
    """A Jupyter server whose site configuration is ``site``, with ``env`` added to its
    environment; stopped after."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "site.toml"
        config.write_text(site)
        server = start_jupyter(Path(tmp), {**(env or {}), "HPC_PROXIES_CONFIG": str(config)})
        try:
            yield server
        finally:
            left = server.descendants()
            server.stop()
            kill_leftovers(left)


def status(server) -> dict:
    return json.loads(server.request("/paraview/api/status").body)


def post(server, what: str) -> dict:
    """POST ``/paraview/api/<what>`` with the server's token; its JSON answer."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(  # noqa: S310 (http://127.0.0.1: our server)
        f"{server.url}/paraview/api/{what}",
        method="POST",
        data=b"",
        headers={"Authorization": f"token {server.token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"POST {what}: HTTP {err.code}: {err.read()[:500]!r}") from None


def slurm_run(server, new_job: bool) -> dict:
    """The client on the slurm engine: on a new job (the job, if any, cancelled first),
    or on the job left running by the previous client. After the client, wait until the
    job's next pvserver has connected back."""
    if new_job:
        stopped = post(server, "stop")
        if stopped["state"] != "stopped":
            raise RuntimeError(f"pvserver did not stop: {stopped}")
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(server.root_dir.parent / "jupyter/runtime"))
    result = run_client("proxied", 0, 0, env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = status(server)
        if info["state"] != "running":
            raise RuntimeError(f"the job's pvserver is {info['state']}: {info['message']}")
        if not info["client_connected"] and info["message"] == "Waiting for a client.":
            return result
        time.sleep(0.2)
    raise RuntimeError(f"the job's pvserver did not connect back again: {status(server)}")


def report_engines(base: list[dict], base_name: str, others: dict[str, list[dict]]) -> None:
    """Each metric: the median of ``base`` and of each of ``others``, their ratio to
    ``base``'s, and every run. ``report_runs`` of paraview_bench.py, for more than two."""
    width = max(len(name) for name in (base_name, *others))
    for key, label, unit in METRICS:
        print(f"{label}:")
        d = statistics.median(r[key] for r in base)
        for name, runs in ((base_name, base), *others.items()):
            p = statistics.median(r[key] for r in runs)
            ratio = "" if runs is base else f"ratio {p / d:5.2f}"
            every = [round(r[key], 1 if unit == "ms" else 2) for r in runs]
            print(f"  {name:<{width}}  median {p:7.2f} {unit:<2}  {ratio:<11} {every}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    if not KERNEL_PYTHON.exists():
        sys.exit("install the kernel first: hpc-proxies install-kernel paraview --sys-prefix")
    if os.geteuid() != 0:
        sys.exit("run as root: the script starts a Slurm cluster of its own (tests/slurm.py)")
    if args.ranks > CLUSTER_CPUS:
        sys.exit(f"--ranks {args.ranks}: the Slurm cluster has {CLUSTER_CPUS} CPUs")
    mpi_site = f'[apps.paraview]\nengine = "mpiexec"\nranks = {args.ranks}\n'
    mpi_name, slurm_name = f"mpiexec ({args.ranks} ranks)", f"slurm ({args.ranks} ranks)"
    names = {
        "mpi": mpi_name,
        "new": f"{slurm_name}, new job",
        "running": f"{slurm_name}, job running",
    }
    runs: dict[str, list[dict]] = {"local": [], **{key: [] for key in names}}
    with slurm.running_cluster() as cluster:
        try:
            with (
                tempfile.TemporaryDirectory() as jobs,
                jupyter_with("") as local,
                jupyter_with(mpi_site) as mpi,
                jupyter_with(
                    "[apps.paraview]\n"
                    'engine = "slurm"\n'
                    f"ranks = {args.ranks}\n"
                    f'partition = "{cluster.partition}"\n'
                    'time = "10"\n'
                    f'job_directory = "{Path(jobs) / "jobs"}"\n',
                    {"SLURM_CONF": str(cluster.conf)},
                ) as on_slurm,
            ):
                for server in (local, mpi, on_slurm):
                    server.wait_for_app("/paraview/api/status")
                for _ in range(args.runs):
                    runs["local"].append(proxied_run(local))
                    runs["mpi"].append(proxied_run(mpi))
                    runs["new"].append(slurm_run(on_slurm, new_job=True))
                    runs["running"].append(slurm_run(on_slurm, new_job=False))
        finally:
            cluster.cancel_all()
    print(f"Runs of each: {args.runs}, all through Jupyter; ratio = engine median / local median")
    report_engines(runs.pop("local"), "local", {names[key]: r for key, r in runs.items()})


if __name__ == "__main__":
    main()
