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
import shutil
import signal
import stat
import tempfile
import threading
import urllib.request
from pathlib import Path

import pytest
import slurm
from as_user import anyone_python, users_jupyter
from conftest import ARTIFACTS, jupyter_with_site
from processes import LocalUser, cmdline, ordinary_user, wait_gone
from test_cli import run as run_cli
from test_neighbour import attempt
from test_paraview import NEIGHBOUR_ATTACK, PvKernel, post, status
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
        server.wait_for_app("/paraview/api/status")  # the tile's service (no job yet)
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
    post(slurm_jupyter, "stop")
    blocker = slurm_cluster.submit("sleep 600", time_minutes=10, extra=["--ntasks=2"])
    slurm_cluster.wait_state(blocker, "RUNNING", 30)
    # A connect() that gives up says so, and what to do; the job stays in the queue.
    waited = connect_error(slurm_jupyter, timeout=12)
    assert waited is not None and "is pending: " in waited, waited
    assert "connect() waited 12 s. The job stays queued: run connect() again" in waited
    queued = status(slurm_jupyter)["job"]["id"]
    assert slurm_cluster.state(queued) == "PENDING"
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
    assert pending["job"]["id"] == queued, "the next connect() waits for the same job"
    assert f"pvserver's job {queued} is pending: " in out, out
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


def test_the_running_panels_stop_cancels_the_job(slurm_jupyter, slurm_cluster):
    """Stop in JupyterLab's Running panel (its REST call) stops the tile's service, and
    with it the job."""
    job = start(slurm_jupyter)["job"]["id"]
    ranks = job_ranks()
    request = urllib.request.Request(
        f"{slurm_jupyter.url}/hpc-proxies/api/instances/paraview/default/stop",
        method="POST",
        data=b"",
        headers={"Authorization": f"token {slurm_jupyter.token}"},
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        assert answer.status == 200
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


#: The owner's own client, run as the owner: connects through the relay with the id.
OWNER_CLIENT = """
import json, sys
from paraview.modules.vtkRemotingCore import vtkRemotingCoreConfiguration
from paraview import simple, servermanager
port, id_file = int(sys.argv[1]), sys.argv[2]
vtkRemotingCoreConfiguration.GetInstance().SetConnectID(int(open(id_file).read()))
connection = simple.Connect("127.0.0.1", port, timeout=60)
print(json.dumps({"partitions": servermanager.ActiveConnection.GetNumberOfDataPartitions()}))
"""


@pytest.fixture(scope="module")
def owner() -> LocalUser:
    return ordinary_user("hpcp-pv-owner")


def test_no_secret_reaches_another_user_and_they_cannot_connect_or_stall(
    slurm_cluster, owner, neighbour
):
    """As ordinary users: the owner's Jupyter submits the job, the neighbour (another user
    of the node) looks for the connect-id and the Jupyter token in every command line,
    in `scontrol show job` and in every file they can read, and tries the rendezvous and
    the relay: refused at once, while idle connections of theirs stall nothing."""
    env = {"SLURM_CONF": str(slurm_cluster.conf)}
    toml = site(slurm_cluster, Path("~/.hpc-proxies/paraview-jobs"))
    toml = toml.replace('job_directory = "~/.hpc-proxies/paraview-jobs"\n', "")  # the default
    with anyone_python() as python, users_jupyter(owner, python, toml, env=env) as server:
        info = start(server)
        job = info["job"]["id"]
        id_file = Path(info["connect_id_file"])
        connect_id = id_file.read_text().strip()
        secrets = [connect_id, server.token]
        jobs = server.extra["base"] / "home/.hpc-proxies/paraview-jobs"
        assert id_file.is_relative_to(jobs)
        assert stat.S_IMODE(jobs.stat().st_mode) == 0o700
        callback_port = int(info["callback"].rsplit(":", 1)[1])

        # Every command line on the node, the job's ranks and batchjob's included.
        argvs = [
            " ".join(cmdline(int(p.name))) for p in Path("/proc").iterdir() if p.name.isdigit()
        ]
        assert any("paraview/server.py" in a and "--reverse" in a for a in argvs)
        assert not [a for a in argvs if any(s in a for s in secrets)]
        # What Slurm shows another user, and keeps for the owner.
        shown = slurm_cluster.run("scontrol", "show", "job", "-dd", job, user=neighbour).stdout
        assert f"JobId={job}" in shown and f"UserId={owner.name}" in shown, shown
        assert not [s for s in secrets if s in shown]
        script = slurm_cluster.run("scontrol", "write", "batch_script", job, "-", user=owner)
        assert "paraview/server.py" in script.stdout and not [
            s for s in secrets if s in script.stdout
        ]
        theirs = slurm_cluster.run(
            "scontrol", "write", "batch_script", job, "-", user=neighbour, check=False
        )
        # Slurm refuses (scontrol 22.05 still exits 0).
        assert theirs.stdout == "" and "retrieval failed" in theirs.stderr, theirs
        # The job's files; and every file the neighbour can read where they could be. A
        # control: a copy the neighbour may read, which the search must find.
        control = Path(tempfile.mkdtemp(prefix="hpcp-control-"))
        control.chmod(0o755)
        (control / "readable").write_text(f"connect-id {connect_id}\n")
        (control / "readable").chmod(0o644)
        found = attempt(
            neighbour,
            secrets=secrets,
            dirs=[str(jobs), str(id_file.parent)],
            files=[str(p) for p in id_file.parent.iterdir()],
            search=["/tmp", str(slurm_cluster.root), str(server.extra["base"]), "/var/tmp"],
            tcp=[callback_port, info["port"]],
        )
        assert set(found["dirs"].values()) == {"PermissionError"}, found
        assert set(found["files"].values()) == {"PermissionError"}, found
        shutil.rmtree(control)
        assert found["search"] == [str(control / "readable")], found["search"]
        assert set(found["tcp"].values()) == {"closed"}, found

        # Idle connections of the neighbour's on both ports while the owner connects.
        attacks = [
            neighbour.popen(
                "/usr/bin/python3", "-c", NEIGHBOUR_ATTACK, str(port), "idle", "3", "60"
            )
            for port in (callback_port, info["port"])
        ]
        try:
            for attack in attacks:
                assert attack.stdout is not None
                assert attack.stdout.readline().startswith("holding 3"), attack.stderr
            client = owner.run(
                "xvfb-run",
                "-a",
                "/usr/bin/python3",
                "-c",
                OWNER_CLIENT,
                str(info["port"]),
                str(id_file),
                timeout=120,
            )
            outcome = [a.stdout.readline().strip() for a in attacks for _ in range(3)]
        finally:
            for attack in attacks:
                attack.kill()
                attack.wait()
        assert client.returncode == 0, client.stderr[-3000:]
        assert json.loads(client.stdout.strip().splitlines()[-1])["partitions"] == 2
        assert all(line.startswith("closed") for line in outcome), outcome
        refused = status(server)["refused"]
        assert refused["total"] >= 8 and refused["latest"][0]["user"] == neighbour.name, refused
        post(server, "stop")
        assert slurm_cluster.state(job) == "CANCELLED"


FAILING = """
import json
import hpc_proxies.paraview as pvh
from hpc_proxies.paraview.errors import ParaViewError
try:
    pvh.connect(timeout={timeout}{ranks})
    print(json.dumps({{"error": None}}))
except ParaViewError as err:
    print(json.dumps({{"error": str(err), "type": type(err).__name__}}))
"""


def connect_error(server, ranks: int | None = None, timeout: float = 120) -> str | None:
    """What connect() says in the notebook (None if it connected)."""
    code = FAILING.format(ranks="" if ranks is None else f", ranks={ranks}", timeout=timeout)
    with PvKernel(server) as kernel:
        out, err = kernel.run(code, timeout=200)
    assert err is None, (err, out)
    return json.loads(out.strip().splitlines()[-1])["error"]


def nothing_of_it_runs(server, slurm_cluster) -> None:
    """No job of the user's in the queue, no batchjob follower, no rank."""
    assert slurm_cluster.run("squeue", "-h").stdout.strip() == ""
    followers = [p for p in server.descendants() if "hpc_proxies.batchjob" in cmdline(p)]
    assert not followers and not job_ranks()


BAD_SCRIPT = """#!/bin/bash
echo "module: ParaView/5.11-egl: no such module" >&2
exit 3
${pvserver}
"""


@pytest.mark.parametrize(
    "case, more, ranks, said",
    [
        ("unknown partition", {"partition": '"nope"'}, None, "invalid partition specified: nope"),
        ("over max_ranks", {}, 3, "3 ranks: this system allows 1 to 2"),
        (
            "more ranks than the nodes have",
            {"max_ranks": "8"},
            6,
            "Slurm will never start job",
        ),
        ("a failing job script", {"job_script": "SCRIPT"}, None, "no such module"),
        (
            "a missing job script template",
            {"job_script": '"/nonexistent/pvserver-job.sh"'},
            None,
            "/nonexistent/pvserver-job.sh cannot be read (No such file or directory)",
        ),
    ],
)
def test_bad_input_is_a_clear_error_and_leaves_nothing_running(
    slurm_cluster, tmp_path, case, more, ranks, said
):
    if more.get("job_script") == "SCRIPT":
        script = tmp_path / "job.sh"
        script.write_text(BAD_SCRIPT)
        more = {**more, "job_script": f'"{script}"'}
    env = {"SLURM_CONF": str(slurm_cluster.conf)}
    with jupyter_with_site(tmp_path, site(slurm_cluster, tmp_path / "jobs", **more), env) as server:
        server.wait_for_app("/paraview/api/status")
        post(server, "stop")  # opening the tile would start a job: start from nothing
        error = connect_error(server, ranks)
        info = status(server)
        assert error is not None and said in error, (case, error)
        print(f"{case}: connect() raised: {error}")
        # A count over max_ranks is refused before anything starts (a 400: nothing changes).
        if case != "over max_ranks":  # Slurm refused or ended the job: the page says it
            assert info["state"] == "failed", info
            assert said in info["message"] + "\n".join(info["tail"]), info
        until(lambda: not slurm_cluster.run("squeue", "-h").stdout.strip(), 30, "an empty queue")
        nothing_of_it_runs(server, slurm_cluster)


def test_check_explains_bad_slurm_keys(tmp_path):
    """``hpc-proxies check``: the Slurm engine's keys, each wrong in its own way."""
    template = tmp_path / "job.sh"
    template.write_text("#!/bin/bash\nmodule load $module\nsrun pvserver\n")
    bad = tmp_path / "site.toml"
    bad.write_text(
        "[apps.paraview]\n"
        'engine = "slurm"\n'
        'time = "an hour"\n'
        'extra_args = "--output=/tmp/x --gres=gpu:1"\n'
        f'job_script = "{template}"\n'
    )
    done = run_cli("check", str(bad))
    assert done.returncode == 1, done.stdout
    assert "apps.paraview.time: expected a string of the form MINUTES, HH:MM:SS" in done.stdout
    assert "apps.paraview.extra_args: --output is set by hpc-proxies itself" in done.stdout
    assert f"apps.paraview.job_script: {template} uses unknown placeholders $module" in done.stdout
    template.write_text("#!/bin/bash\nmodule load ParaView\nsrun pvserver\n")
    done = run_cli("check", str(bad))
    assert f"{template} must contain ${{pvserver}}" in done.stdout, done.stdout
    good = tmp_path / "good.toml"
    template.write_text("#!/bin/bash\nmodule load ParaView\n${pvserver}\n")
    good.write_text(
        '[apps.paraview]\nengine = "slurm"\ntime = "2:00:00"\npartition = "vis"\n'
        f'extra_args = "--gres=gpu:1 --qos=vis"\njob_script = "{template}"\n'
    )
    done = run_cli("check", str(good))
    assert done.returncode == 0, done.stdout
