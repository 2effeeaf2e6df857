"""pvserver as a Slurm job of its own (``[apps.paraview] engine = "slurm"``), driven
by the same notebook code as one process.

The test cluster (:mod:`slurm`) is real: munged, slurmctld and slurmd on this machine,
one node with 2 CPUs. The job runs pvserver's ranks with mpiexec; rank 0 connects back
to the ParaView service's rendezvous, so nothing of pvserver listens on the node.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import slurm
from conftest import ARTIFACTS, jupyter_with_site
from processes import cmdline, wait_gone
from test_paraview import PvKernel, post, status
from test_paraview_mpi import CELL, hues

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
