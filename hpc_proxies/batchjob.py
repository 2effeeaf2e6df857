"""A Slurm batch job as a local process: submitted, followed, and cancelled with it.

    python -m hpc_proxies.batchjob --script FILE --output FILE [--interval S] -- [SBATCH_OPTION ...]

A run's :class:`~hpc_proxies.launcher.processes.ProcessGroup` reads a local process's
output, learns of its exit and stops it. Work that runs as a batch job of its own (on
other nodes, after a queue wait) gets this module's ``main`` as that local process:

* it submits ``FILE`` with ``sbatch --parsable`` and the options given; Slurm's refusal
  (an unknown partition, more CPUs than a node has) is printed as Slurm wrote it, and
  the exit code is :data:`EXIT_REFUSED`;
* it prints one :data:`MARK` line of JSON each time the job changes (state, reason,
  expected start, nodes, end): ``HPC-PROXIES-JOB {"id": "12", "state": "PENDING", ...}``;
* it prints the job's output (the ``--output`` file, on a filesystem the nodes share)
  line by line as the job writes it;
* asked to stop (SIGTERM, SIGINT, SIGHUP, or its parent's death), it cancels the job
  and waits until Slurm says it has ended, so that nothing of it keeps running;
* when the job ends by itself it prints the final record and exits: 0 if the job
  completed, :data:`EXIT_JOB_ENDED` otherwise (walltime, ``scancel``, a failure);
* a job pending for a reason that means it never starts as asked (:data:`NEVER_STARTS`:
  more CPUs than the partition has, an invalid account...) is cancelled, and that is a
  refusal too.

Nothing secret may be in the script, the options or the environment it is given:
Slurm keeps a job's script and environment for its owner and its administrators.
:func:`job_environment` drops the secrets a Jupyter server's environment can hold.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .procs import signal_on_parent_death
from .slurmjob import SCONTROL_ENV, find_record

MARK = "HPC-PROXIES-JOB"
EXIT_REFUSED = 6
EXIT_JOB_ENDED = 7
#: Job states after which a job never runs again.
FINISHED = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)
#: What each final state means to the job's user.
ENDINGS = {
    "TIMEOUT": "the job reached its time limit (walltime)",
    "CANCELLED": "the job was cancelled (scancel, or an administrator)",
    "COMPLETED": "the job finished",
    "FAILED": "the job failed",
    "NODE_FAIL": "a node of the job failed",
    "OUT_OF_MEMORY": "the job ran out of memory",
    "PREEMPTED": "the job was preempted by another",
    "DEADLINE": "the job reached its deadline",
    "BOOT_FAIL": "a node of the job did not boot",
}
#: Reasons a pending job has that mean it will never start as asked (Slurm keeps such
#: a job queued unless the site enforces partition limits at submission): the job is
#: cancelled and its user told why, rather than left to wait for ever.
NEVER_STARTS = {
    "PartitionConfig": "the partition cannot give it that many ranks (CPUs or nodes)",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "PartitionTimeLimit": "its time limit is over the partition's",
    "BadConstraints": "no node has the features it asks for",
    "InvalidAccount": "the account is not valid for this user",
    "InvalidQOS": "the QOS is not valid for this user",
    "QOSMaxCpuPerJobLimit": "it asks for more CPUs than its QOS allows a job",
    "QOSMaxNodePerJobLimit": "it asks for more nodes than its QOS allows a job",
    "QOSMaxWallDurationPerJobLimit": "its time limit is over its QOS's",
    "AssocMaxCpuPerJobLimit": "it asks for more CPUs than the account allows a job",
    "AssocMaxNodePerJobLimit": "it asks for more nodes than the account allows a job",
    "AssocMaxWallDurationPerJobLimit": "its time limit is over the account's",
}
#: The record's keys that the follower passes on.
FIELDS = {
    "JobId": "id",
    "JobState": "state",
    "Reason": "reason",
    "StartTime": "start",
    "EndTime": "end",
    "NodeList": "nodes",
    "BatchHost": "batch_host",
    "NumTasks": "tasks",
    "TimeLimit": "time_limit",
    "ExitCode": "exit_code",
}
#: Environment variables that may hold a secret: never exported into a job.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|COOKIE|_KEY$|^KEY$|AUTH", re.I)
#: How long a cancelled job may take to end (Slurm's KillWait is 30 s by default).
CANCEL_WAIT = 90.0


def job_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the variables whose names say they hold a secret (a Jupyter
    server has ``JUPYTERHUB_API_TOKEN``, ``JPY_API_TOKEN``...): sbatch exports what it
    is run with into the job, and Slurm keeps it with the job."""
    return {name: value for name, value in env.items() if not SECRET_NAME.search(name)}


@dataclass
class Job:
    """One submitted job, as Slurm last described it."""

    id: str
    record: dict[str, str]
    #: Why it can never start as asked (then it is cancelled), if so.
    hopeless: str = ""

    def view(self) -> dict[str, str]:
        """The record's keys that matter to the job's user, under short names."""
        return {short: self.record.get(key, "") for key, short in FIELDS.items()}

    @property
    def state(self) -> str:
        return self.record.get("JobState", "")


def say(**fields: object) -> None:
    print(MARK, json.dumps(fields, sort_keys=True), flush=True)


def slurm(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """One Slurm command; its failure to run is a CompletedProcess with code 127."""
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **SCONTROL_ENV},
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: {err}")


def describe(job_id: str) -> dict[str, str] | None:
    """The job's record from ``scontrol show job -o``; None once Slurm has forgotten it."""
    done = slurm(["scontrol", "show", "job", "-o", job_id])
    return find_record(done.stdout, job_id) if done.returncode == 0 else None


class OutputTail:
    """The job's output file, read as it grows (it appears when the job starts)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def pump(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            print(line.decode(errors="replace"), flush=True)

    def flush(self) -> None:
        self.pump()
        if self.partial:
            print(self.partial.decode(errors="replace"), flush=True)
            self.partial = b""


def submit(script: Path, options: list[str]) -> str | None:
    """The new job's id; None (with Slurm's message printed) if sbatch refused it."""
    done = slurm(["sbatch", "--parsable", *options, str(script)])
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip() or f"sbatch exited {done.returncode}"
        say(event="refused", message=message)
        return None
    return done.stdout.strip().split(";")[0]


def follow(job: Job, tail: OutputTail, stop: threading.Event, interval: float) -> None:
    """Report the job's changes and output until it ends or ``stop`` is set."""
    last: dict[str, str] = {}
    next_ask = 0.0
    while not stop.is_set():
        now = time.monotonic()
        if now >= next_ask:
            record = describe(job.id)
            if record is None:
                say(event="ended", id=job.id, state="", ending="Slurm no longer knows the job")
                return
            job.record = record
            view = job.view()
            if view != last:
                say(event="job", **view)
                last = view
            if job.state in FINISHED:
                tail.flush()
                say(event="ended", ending=ENDINGS.get(job.state, job.state.lower()), **view)
                return
            never = NEVER_STARTS.get(view["reason"]) if job.state == "PENDING" else None
            if never is not None:
                job.hopeless = (
                    f"Slurm will never start job {job.id} as asked: {never} ({view['reason']})"
                )
                return
            # Ask often while a start is near, then less: the controller is shared.
            next_ask = now + (interval if job.state != "RUNNING" else 3 * interval)
        tail.pump()
        stop.wait(0.25)


def cancel(job: Job, tail: OutputTail) -> None:
    """scancel the job and wait until it has ended (or Slurm forgets it)."""
    done = slurm(["scancel", job.id])
    if done.returncode != 0:
        print(f"scancel {job.id}: {done.stderr.strip()}", flush=True)
    deadline = time.monotonic() + CANCEL_WAIT
    record = None
    while time.monotonic() < deadline:
        record = describe(job.id)
        if record is None or record.get("JobState") in FINISHED:
            break
        time.sleep(0.25)
    if record is not None:
        job.record = record
    tail.flush()
    say(event="cancelled", **job.view())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc_proxies.batchjob", description=__doc__)
    parser.add_argument("--script", required=True, type=Path, help="the job script")
    parser.add_argument("--output", required=True, type=Path, help="the job's output file")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between asks")
    parser.add_argument("sbatch_options", nargs="*", help="after --: sbatch's own options")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    signal_on_parent_death(signal.SIGTERM)
    job_id = submit(args.script, [f"--output={args.output}", *args.sbatch_options])
    if job_id is None:
        return EXIT_REFUSED
    say(event="submitted", id=job_id)
    job = Job(job_id, {})
    tail = OutputTail(args.output)
    follow(job, tail, stop, args.interval)
    if job.hopeless:
        cancel(job, tail)
        say(event="refused", message=job.hopeless)
        return EXIT_REFUSED
    if stop.is_set():
        cancel(job, tail)
        return 0
    return 0 if job.state == "COMPLETED" else EXIT_JOB_ENDED


if __name__ == "__main__":
    sys.exit(main())
