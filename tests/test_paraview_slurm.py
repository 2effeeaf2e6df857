"""pvserver as a Slurm job of its own (``[apps.paraview] engine = "slurm"``), driven
by the same notebook code as one process.

The test cluster (:mod:`slurm`) is real: munged, slurmctld and slurmd on this machine,
one node with 2 CPUs. The job runs pvserver's ranks with mpiexec; rank 0 connects back
to the ParaView service's rendezvous, so nothing of pvserver listens on the node.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import threading
from pathlib import Path

import pytest
import slurm
from conftest import ARTIFACTS, jupyter_with_site
from processes import cmdline, wait_gone
from test_paraview import PvKernel, post, status
from test_paraview_mpi import CELL, hues
from waiting import until

slurm_cluster = slurm.slurm_cluster  # the session fixture


def site(cluster, jobs: Path, **more: str) -> str:
    keys = {
        "engine": '"slurm"',
        "ranks": "2",
        "max_ranks": "2",
        "partition": f'"{cluster.partition}"',
        "time": '"10"',
        "job_directory": f'"{jobs}"',
        **more,
    }
    return "[apps.paraview]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


@pytest.fixture(scope="module")
def slurm_jupyter(slurm_cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("pvslurm")
    toml = site(slurm_cluster, base / "jobs")
    env = {"SLURM_CONF": str(slurm_cluster.conf)}
    with jupyter_with_site(base, toml, env) as server:
        server.extra["jobs"] = base / "jobs"
        yield server
    slurm_cluster.cancel_all()


def job_ranks() -> set[int]:
    """pvserver's ranks anywhere on this node (they are the job's, not Jupyter's)."""
    return {
        int(pid)
        for pid in (p.name for p in Path("/proc").iterdir() if p.name.isdigit())
        if cmdline(int(pid))[1:2] and cmdline(int(pid))[1].endswith("paraview/server.py")
    }


def test_two_ranks_as_a_job_render_their_partitions(slurm_jupyter, slurm_cluster):
    with PvKernel(slurm_jupyter) as kernel:
        out, err = kernel.run(CELL, timeout=300)
        assert err is None, (err, out, slurm_jupyter.log()[-4000:])
        said = json.loads(out.strip().splitlines()[-1])
        info = status(slurm_jupyter)
        ranks = job_ranks()
    png = base64.b64decode(said["png"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "paraview-slurm-2-ranks.png").write_bytes(png)
    assert said["partitions"] == 2
    assert len(hues(png)) >= 2
    assert info["job"]["state"] == "RUNNING", info
    assert len(ranks) == 2
    code, stopped = post(slurm_jupyter, "stop")
    assert code == 200 and stopped["state"] == "stopped", stopped
    assert not wait_gone(ranks, 15)
    assert slurm_cluster.run("squeue", "-h").stdout.strip() == ""


CONNECT = """
import hpc_proxies.paraview as pvh
from paraview import servermanager
pvh.connect(timeout=240)
print("partitions", servermanager.ActiveConnection.GetNumberOfDataPartitions())
"""


def leftovers(jobs: Path) -> list[str]:
    """What a run leaves: ranks, private X servers, and files in the job directory."""
    xvfbs = [
        " ".join(cmdline(int(p.name)))
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and "hpc-proxies-x-" in " ".join(cmdline(int(p.name)))
    ]
    files = [str(p) for p in jobs.iterdir()] if jobs.exists() else []
    return [*map(str, job_ranks()), *xvfbs, *files]


def test_connect_waits_in_the_queue_and_says_so(slurm_jupyter, slurm_cluster):
    """While another job holds the node, the status says "pending" with Slurm's reason,
    and the cell shows it while connect() waits; once the node frees, connect() ends."""
    blocker = slurm_cluster.submit("sleep 600", time_minutes=10, extra=["--ntasks=2"])
    slurm_cluster.wait_state(blocker, "RUNNING", 30)
    post(slurm_jupyter, "stop")
    outcome: dict = {}
    shown: list[str] = []
    with PvKernel(slurm_jupyter) as kernel:
        worker = threading.Thread(
            target=lambda: outcome.update(cell=kernel.run(CONNECT, 300, shown))
        )
        worker.start()
        until(
            lambda: re.search(r"pending: (Resources|Priority)", status(slurm_jupyter)["message"]),
            60,
            "the status to say the job is pending, and why",
            interval=0.5,
        )
        pending = status(slurm_jupyter)
        until(lambda: "is pending" in "".join(shown), 60, "the cell to show the queue state")
        slurm_cluster.run("scancel", blocker)
        worker.join(300)
        out, err = outcome["cell"]
    assert err is None, (err, out)
    assert pending["state"] == "starting" and pending["job"]["state"] == "PENDING", pending
    assert pending["job"]["reason"] in ("Resources", "Priority"), pending
    assert f"pvserver's job {pending['job']['id']} is pending: " in out, out
    assert "partitions 2" in out, out
    post(slurm_jupyter, "stop")


def test_stop_cancels_the_job_and_leaves_nothing(slurm_jupyter, slurm_cluster):
    info = start(slurm_jupyter)
    job = info["job"]["id"]
    assert slurm_cluster.state(job) == "RUNNING"
    ranks = job_ranks()
    assert len(ranks) == 2, ranks
    code, stopped = post(slurm_jupyter, "stop")
    assert code == 200 and stopped["state"] == "stopped", stopped
    assert slurm_cluster.run("squeue", "-h").stdout.strip() == ""
    assert slurm_cluster.state(job) == "CANCELLED"
    assert not wait_gone(ranks, 15)
    until(lambda: not leftovers(slurm_jupyter.extra["jobs"]), 15, "nothing of the run left")


def start(server) -> dict:
    """POST api/start until pvserver is reachable (202 while its job is queued)."""
    server.wait_for_app("/paraview/api/status")
    for _ in range(60):
        code, info = post(server, "start?wait=5")
        if code == 200:
            return info
        assert code == 202, info
    raise AssertionError(f"pvserver's job did not start: {info}")


def test_sigterm_to_jupyter_cancels_the_job(slurm_cluster, tmp_path):
    jobs = tmp_path / "jobs"
    env = {"SLURM_CONF": str(slurm_cluster.conf)}
    with jupyter_with_site(tmp_path, site(slurm_cluster, jobs), env) as server:
        job = start(server)["job"]["id"]
        ranks = job_ranks()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)
        until(lambda: slurm_cluster.state(job) == "CANCELLED", 30, "the job to be cancelled")
        assert not wait_gone(ranks, 15)
        until(lambda: not leftovers(jobs), 15, "nothing of the run left")


def test_walltime_ends_pvserver_and_the_next_connect_starts_a_new_job(slurm_cluster, tmp_path):
    """time = 1 minute: the job ends by its time limit, the status says why, and the next
    connect() submits a new job."""
    env = {"SLURM_CONF": str(slurm_cluster.conf)}
    toml = site(slurm_cluster, tmp_path / "jobs", time='"1"')
    with jupyter_with_site(tmp_path, toml, env) as server:
        first = start(server)["job"]["id"]
        until(
            lambda: status(server)["state"] == "stopped",
            150,
            "pvserver to stop at the job's time limit",
            interval=1,
        )
        ended = status(server)
        with PvKernel(server) as kernel:
            out, err = kernel.run(CONNECT, timeout=240)
        again = status(server)
    assert "time limit" in ended["message"] and "TIMEOUT" in ended["message"], ended
    assert "connect() starts a new one" in ended["message"], ended
    assert slurm_cluster.state(first) == "TIMEOUT"
    assert err is None and "partitions 2" in out, (err, out)
    assert again["job"]["id"] != first, again
