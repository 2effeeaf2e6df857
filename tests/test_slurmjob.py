"""hpc_proxies.slurmjob: the end of the Slurm job the server runs in.

The parsing is checked on Slurm's own words; the rest against the real one-node cluster
of ``slurm.py``: a job calls the module with its own ``SLURM_JOB_ID`` and writes what it
says, as root and as an ordinary user."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import slurm
from processes import ordinary_user
from slurm import SlurmCluster

from hpc_proxies import slurmjob
from hpc_proxies.slurmjob import JobClock, JobTime

slurm_cluster = slurm.slurm_cluster  # the session fixture

CHECKOUT = Path(__file__).resolve().parent.parent
VENV_PYTHON = CHECKOUT / ".venv" / "bin" / "python"
# The venv's interpreter may live under /root (pyenv, mode 0700): users run Debian's.
SYSTEM_PYTHON = "/usr/bin/python3"
LIMIT = timedelta(minutes=7)

# What the job runs: the module, inside the job, with the job's own environment.
IN_JOB = """
import asyncio, json, os, sys
from datetime import datetime, timezone
from hpc_proxies import slurmjob

async def main():
    clock = slurmjob.JobClock.from_env()
    got = await clock.get() if clock else None
    job = slurmjob.job_from_env(os.environ)
    end = await slurmjob.job_end(job) if job else None
    return {
        "job": job,
        "clock": got,
        "reason": clock.reason if clock else None,
        "end": end.end.isoformat() if end else None,
        "now": datetime.now(timezone.utc).isoformat(),
    }

result = asyncio.run(main())
with open(sys.argv[1], "w") as f:
    json.dump(result, f)
"""

RUNNING = (
    "JobId=42 JobName=jupyterhub-singleuser UserId=ada(1001) GroupId=ada(1001) "
    "MCS_label=N/A Priority=1 Nice=0 Account=(null) QOS=(null) JobState=RUNNING "
    "Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 "
    "RunTime=00:01:02 TimeLimit=00:07:00 TimeMin=N/A SubmitTime=2026-12-01T11:00:00 "
    "EligibleTime=2026-12-01T11:00:00 StartTime=2026-12-01T11:00:01 "
    "EndTime=2026-12-01T11:07:01 Deadline=N/A Partition=hpcp NodeList=vm "
    "Command=/home/ada/run me.sh WorkDir=/home/ada"
)


def show(**fields: str) -> str:
    """``RUNNING`` with some fields replaced."""
    record = slurmjob.parse_record(RUNNING)
    record.update(fields)
    return " ".join(f"{k}={v}" for k, v in record.items())


# -- parsing Slurm's words ------------------------------------------------------------


def test_job_from_env():
    assert slurmjob.job_from_env({}) is None
    assert slurmjob.job_from_env({"SLURM_JOB_ID": "42"}) == "42"
    assert slurmjob.job_from_env({"SLURM_JOBID": " 43\n"}) == "43"
    assert slurmjob.job_from_env({"SLURM_JOB_ID": ""}) is None
    assert slurmjob.job_from_env({"SLURM_JOB_ID": "42; rm -rf /"}) is None
    assert slurmjob.job_from_env({"SLURM_JOB_ID": "-1"}) is None


@pytest.mark.parametrize(
    "text", ["Unknown", "NONE", "None", "N/A", "", "  ", "INFINITE", "UNLIMITED", "soon"]
)
def test_no_time(text):
    assert slurmjob.parse_time(text) is None


def test_time_is_aware_in_the_zone_it_was_printed_in():
    assert slurmjob.parse_time("2026-12-01T11:07:01") == datetime(
        2026, 12, 1, 11, 7, 1, tzinfo=timezone.utc
    )
    cet = timezone(timedelta(hours=1))
    assert slurmjob.parse_time("2026-12-01T11:07:01", cet) == datetime(
        2026, 12, 1, 10, 7, 1, tzinfo=timezone.utc
    )


def test_end_of_a_running_job():
    found, why = slurmjob.end_from_show_job(RUNNING + "\n", "42")
    assert why == ""
    assert found == JobTime("42", datetime(2026, 12, 1, 11, 7, 1, tzinfo=timezone.utc))
    # Values with spaces stay whole and do not break the words after them.
    record = slurmjob.parse_record(RUNNING)
    assert record["Command"] == "/home/ada/run me.sh"
    assert record["WorkDir"] == "/home/ada"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"EndTime": "Unknown", "JobState": "PENDING"}, "does not know"),
        ({"EndTime": "NONE"}, "does not know"),
        ({"TimeLimit": "UNLIMITED", "EndTime": "Unknown"}, "no time limit"),
        ({"TimeLimit": "UNLIMITED", "EndTime": "2027-12-01T11:07:01"}, "no time limit"),
        ({"JobId": "4242"}, "said nothing"),
    ],
)
def test_no_end(fields, reason):
    found, why = slurmjob.end_from_show_job(show(**fields), "42")
    assert found is None
    assert reason in why


def test_remaining_and_json():
    end = datetime(2026, 12, 1, 11, 7, 1, tzinfo=timezone.utc)
    job = JobTime("42", end)
    assert job.remaining(end - timedelta(seconds=90)) == 90
    assert job.remaining(end + timedelta(seconds=5)) == 0  # killed late, never negative
    assert job.to_json(end - timedelta(minutes=2)) == {
        "id": "42",
        "end": "2026-12-01T11:07:01+00:00",
        "remaining": 120.0,
    }
    assert json.loads(json.dumps(job.to_json()))["id"] == "42"


# -- asking a stand-in scontrol: failures, timeout, the cache --------------------------


def fake_scontrol(directory: Path, body: str) -> dict[str, str]:
    """An environment whose only ``scontrol`` is the shell script ``body``."""
    directory.mkdir(exist_ok=True)
    script = directory / "scontrol"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{directory}:/usr/bin:/bin"}


async def test_no_scontrol_gives_none_and_a_reason(tmp_path):
    env = {"PATH": str(tmp_path)}
    found, why = await slurmjob.ask_slurm("42", env)
    assert found is None
    assert "scontrol" in why
    assert await slurmjob.job_end("42", env) is None


async def test_a_slurm_that_does_not_answer_times_out(tmp_path):
    env = fake_scontrol(tmp_path / "bin", "exec sleep 30")
    started = datetime.now(timezone.utc)
    found, why = await slurmjob.ask_slurm("42", env, timeout=0.5)
    assert found is None
    assert "no answer" in why
    assert datetime.now(timezone.utc) - started < timedelta(seconds=5)


async def test_slurm_is_asked_in_utc_and_at_most_once_per_interval(tmp_path):
    calls = tmp_path / "calls"
    line = RUNNING.replace("EndTime=2026-12-01T11:07:01", 'EndTime=$(cat "$END")')
    env = fake_scontrol(
        tmp_path / "bin",
        f'echo "$TZ $SLURM_TIME_FORMAT $*" >> {calls}\necho "{line}"',
    )
    end_file = tmp_path / "end"
    end_file.write_text("2026-12-01T11:07:01")
    env["END"] = str(end_file)
    env["TZ"] = "Europe/Berlin"  # the user's zone must not shift Slurm's answer
    ticks = [1000.0]
    clock = JobClock("42", env, clock=lambda: ticks[0])
    now = datetime(2026, 12, 1, 11, 0, 1, tzinfo=timezone.utc)
    assert await clock.get(now) == {
        "id": "42",
        "end": "2026-12-01T11:07:01+00:00",
        "remaining": 420,
    }
    end_file.write_text("2026-12-01T11:17:01")  # an admin extends the job
    ticks[0] += 59
    assert (await clock.get(now))["remaining"] == 420
    ticks[0] += 1
    assert (await clock.get(now))["remaining"] == 1020
    assert calls.read_text().splitlines() == ["UTC0 standard show job -o 42"] * 2


async def test_failures_are_cached_too(tmp_path):
    calls = tmp_path / "calls"
    env = fake_scontrol(
        tmp_path / "bin",
        f'echo x >> {calls}\necho "slurm_load_jobs error: Invalid job id specified" >&2\nexit 1',
    )
    clock = JobClock("42", env, clock=lambda: 0.0)
    assert await clock.get() is None
    assert await clock.get() is None
    assert "Invalid job id" in clock.reason
    assert calls.read_text() == "x\n"


def test_outside_a_job_there_is_no_clock():
    outside = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_JOB")}
    assert slurmjob.job_from_env(outside) is None
    assert JobClock.from_env(outside) is None
    assert JobClock.from_env({"SLURM_JOB_ID": "7"}).job_id == "7"


# -- the real cluster -------------------------------------------------------------------


def utc_record(cluster: SlurmCluster, job_id: str) -> dict[str, str]:
    """``scontrol show job`` of the job, its times in UTC."""
    env = {**cluster.env, "TZ": "UTC0", "SLURM_TIME_FORMAT": "standard"}
    done = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, env=env
    )
    return slurmjob.parse_record(done.stdout.splitlines()[0])


def check_in_job(cluster: SlurmCluster, job_id: str, result: Path) -> None:
    record = cluster.wait_state(job_id, "COMPLETED", 60)
    assert record["ExitCode"] == "0:0", cluster.output(job_id)
    said = json.loads(result.read_text())
    record = utc_record(cluster, job_id)
    start = slurmjob.parse_time(record["StartTime"])
    assert said["job"] == job_id
    assert said["clock"] is not None, said["reason"]
    assert said["clock"]["id"] == job_id
    end = datetime.fromisoformat(said["clock"]["end"])
    assert end.utcoffset() is not None
    assert abs(end - (start + LIMIT)) <= timedelta(minutes=1), (end, start)
    assert datetime.fromisoformat(said["end"]) == end
    assert 0 < said["clock"]["remaining"] <= LIMIT.total_seconds()
    # As run by the job, its end is what the controller says from outside too.
    assert abs(end - datetime.fromisoformat(said["now"]) - LIMIT) <= timedelta(minutes=1)


def test_inside_a_job_as_root(slurm_cluster, tmp_path):
    assert VENV_PYTHON.exists()
    result = slurm_cluster.jobs / "root-result.json"
    job = slurm_cluster.submit([str(VENV_PYTHON), "-c", IN_JOB, str(result)], time_minutes=7)
    check_in_job(slurm_cluster, job, result)


@pytest.fixture(scope="module")
def slurm_user():
    return ordinary_user("hpcp-slurm-user")


def test_inside_a_job_as_an_ordinary_user(slurm_cluster, slurm_user):
    result = slurm_cluster.jobs / f"{slurm_user.name}-result.json"
    env = {**slurm_cluster.user_env(slurm_user), "PYTHONPATH": str(CHECKOUT)}
    job = slurm_cluster.submit(
        [SYSTEM_PYTHON, "-c", IN_JOB, str(result)], time_minutes=7, user=slurm_user, env=env
    )
    check_in_job(slurm_cluster, job, result)
    assert result.stat().st_uid == slurm_user.uid
    assert utc_record(slurm_cluster, job)["UserId"].startswith(f"{slurm_user.name}(")


async def test_an_extended_job_is_seen_after_the_interval(slurm_cluster):
    job = slurm_cluster.submit(["sleep", "600"], time_minutes=7)
    slurm_cluster.wait_state(job, "RUNNING", 30)
    ticks = [0.0]
    clock = JobClock(job, slurm_cluster.env, clock=lambda: ticks[0])
    before = await clock.time()
    assert before is not None, clock.reason
    slurm_cluster.run("scontrol", "update", f"JobId={job}", "TimeLimit=12")
    assert await clock.time() == before  # asked less than a minute ago
    ticks[0] += 60
    after = await clock.time()
    assert after is not None, clock.reason
    assert after.end - before.end == timedelta(minutes=5)
    slurm_cluster.run("scancel", job)
    slurm_cluster.wait_state(job, "CANCELLED", 30)


async def test_jobs_slurm_does_not_know_or_that_ended(slurm_cluster):
    found, why = await slurmjob.ask_slurm("999999", slurm_cluster.env)
    assert found is None
    assert "999999" in why
    job = slurm_cluster.submit("true", time_minutes=7)
    slurm_cluster.wait_state(job, "COMPLETED", 30)
    ended = await slurmjob.job_end(job, slurm_cluster.env)
    assert ended is not None
    assert ended.remaining() == 0


# -- where a server runs (``hpc-proxies status`` inside a job) --------------------------

CONFIG = """Configuration data as of 2026-12-02T03:30:00
AccountingStorageType   = (null)
ProctrackType           = proctrack/cgroup
ProgramInterrupt        = (null)
"""


def test_the_process_tracking_is_read_from_slurms_config():
    assert slurmjob.proctrack_from_config(CONFIG) == "proctrack/cgroup"
    assert slurmjob.proctrack_from_config("Other = 1\n") is None


@pytest.mark.parametrize(
    ("proctrack", "warned"),
    [
        ("proctrack/cgroup", None),
        ("proctrack/linuxproc", "parent process ids"),
        ("proctrack/pgid", "scancel and the job's end do not reach the apps"),
        ("proctrack/other", "does not know"),
        (None, None),
    ],
)
def test_what_each_process_tracking_lets_escape(proctrack, warned):
    warning = slurmjob.Placement("42", "n1", None, proctrack).warning
    assert (warning is None) if warned is None else (warned in warning), warning


def test_outside_a_job_there_is_no_placement():
    assert slurmjob.placement({"PATH": os.environ["PATH"]}) is None


def test_status_in_a_real_job_names_the_job_node_and_tracking(slurm_cluster):
    """``hpc-proxies status --json`` run by a batch job: the job's id and node, and the
    warning for this cluster's proctrack/linuxproc; and the text form says so too."""
    result = slurm_cluster.jobs / "status.json"
    text = slurm_cluster.jobs / "status.txt"
    status = f"{VENV_PYTHON} -m hpc_proxies.cli status"
    job = slurm_cluster.submit(f"{status} --json > {result}; {status} > {text}", time_minutes=2)
    record = slurm_cluster.wait_state(job, "COMPLETED", 60)
    said = json.loads(result.read_text())["slurm"]
    assert said["job"] == job
    assert said["node"] == record["NodeList"]
    assert said["proctrack"] == "proctrack/linuxproc"
    assert "parent process ids" in said["warning"]
    shown = text.read_text()
    assert f"Slurm: job {job} on node {record['NodeList']}" in shown
    assert "process tracking: proctrack/linuxproc" in shown and "WARNING: " in shown
