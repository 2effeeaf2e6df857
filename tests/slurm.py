"""A real one-node Slurm cluster for the tests: munged, slurmctld and slurmd, started as
root for the whole session, every state, spool, pid, log and socket path under one
temporary directory. The machine's own /etc/slurm and /etc/munge are never read:
``SLURM_CONF`` names our slurm.conf (and is exported for everything the tests run),
munged has its own key and socket (``AuthInfo=socket=...``), and the ports are free
ones picked at start-up. Ordinary users can submit jobs and have them run as them.

Use it as tests use the other helpers here (the assignment, unlike an imported name,
does not upset ruff when the test's argument shadows it)::

    import slurm

    slurm_cluster = slurm.slurm_cluster  # the session fixture

    def test_something(slurm_cluster):
        job = slurm_cluster.submit("hostname", time_minutes=1)
        slurm_cluster.wait_state(job, "COMPLETED", 30)
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from processes import LocalUser, wait_gone
from waiting import until

from hpc_proxies import batchjob
from hpc_proxies.procs import send
from hpc_proxies.slurmjob import parse_record

# Another engineer's tests use these; our daemons must never take one.
RESERVED_PORTS = range(18990, 19000)
DAEMONS = ("munged", "slurmctld", "slurmd")
NEEDED = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "slurmctld", "slurmd", "munged")
SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")
# Job states after which a job never runs again (the package's own list).
FINISHED = set(batchjob.FINISHED)


class SlurmFailure(AssertionError):
    """A daemon died, or a job ended otherwise than a test waited for: no use waiting."""


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RESERVED_PORTS and port not in taken:
            taken.add(port)
            return port


def _free_range(taken: set[int], size: int = 20) -> tuple[int, int]:
    """A block of ports none of which is listening now, for srun's own listeners."""
    while True:
        first = secrets.choice(range(40000, 59000 - size))
        block = range(first, first + size)
        if taken.intersection(block):
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in block:
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        taken.update(block)
        return first, first + size - 1


def _find(command: str) -> str | None:
    return shutil.which(command) or shutil.which(command, path=os.pathsep.join(SBIN))


@dataclass
class SlurmCluster:
    """The running cluster: ``env`` runs Slurm's commands against it, ``conf`` is its
    slurm.conf, ``partition`` its one (default) partition, ``node`` its one node."""

    root: Path
    conf: Path
    env: dict[str, str]
    partition: str
    node: str
    munge_socket: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    started_in: float = 0.0  # seconds from starting munged to an idle node

    # -- running Slurm's commands ---------------------------------------------------------

    def run(
        self, *argv: str, user: LocalUser | None = None, timeout: float = 30, check: bool = True
    ) -> subprocess.CompletedProcess:
        """``argv`` (a Slurm command) against this cluster, as root or as ``user``."""
        if user is None:
            argv_, env = list(argv), self.env
        else:
            argv_, env = user.argv(*argv), self.user_env(user)
        done = subprocess.run(argv_, capture_output=True, text=True, timeout=timeout, env=env)
        if check and done.returncode != 0:
            self.assert_alive()
            raise AssertionError(
                f"{shlex.join(argv)} exited {done.returncode}: {done.stderr.strip()}"
            )
        return done

    def user_env(self, user: LocalUser) -> dict[str, str]:
        """What an ordinary user's shell would have, plus where this cluster is."""
        return {**user.env(), "SLURM_CONF": str(self.conf), "HOME": pwd.getpwnam(user.name).pw_dir}

    def submit(
        self,
        argv_or_wrap: str | Sequence[str],
        time_minutes: int,
        user: LocalUser | None = None,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> str:
        """Submit a batch job (``--wrap`` of a shell command, or of an argv) with a time
        limit of ``time_minutes``, as root or as ``user``; its id. Its output goes to
        ``slurm-<id>.out`` in :attr:`jobs` (world-writable, sticky) unless ``extra``
        says otherwise; ``env`` replaces the environment sbatch runs with (and so the
        job's, sbatch exports it all)."""
        wrap = argv_or_wrap if isinstance(argv_or_wrap, str) else shlex.join(argv_or_wrap)
        argv = [
            "sbatch",
            "--parsable",
            f"--partition={self.partition}",
            f"--time={time_minutes}",
            f"--chdir={self.jobs}",
            *extra,
            f"--wrap={wrap}",
        ]
        if user is None:
            run_env = env if env is not None else self.env
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=run_env)
        else:
            run_env = env if env is not None else self.user_env(user)
            done = subprocess.run(
                user.argv(*argv), capture_output=True, text=True, timeout=30, env=run_env
            )
        if done.returncode != 0:
            self.assert_alive()
            raise AssertionError(f"sbatch exited {done.returncode}: {done.stderr.strip()}")
        return done.stdout.strip().split(";")[0]

    @property
    def jobs(self) -> Path:
        """Where jobs start and write their output: anyone may write, as in /tmp."""
        return self.root / "jobs"

    def output(self, job_id: str) -> str:
        path = self.jobs / f"slurm-{job_id}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` of ``job_id`` as a dict (``JobState``, ``StartTime``...);
        empty if Slurm no longer knows it."""
        done = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        for line in done.stdout.splitlines():
            record = parse_record(line.strip())
            if record.get("JobId") == job_id:
                return record
        return {}

    def state(self, job_id: str) -> str:
        return self.job(job_id).get("JobState", "")

    def wait_state(self, job_id: str, state: str | Sequence[str], timeout: float) -> dict[str, str]:
        """Wait until the job is in ``state`` (a name, e.g. ``RUNNING``, or several);
        its ``scontrol show job`` record. Fails at once if it ends in another state, or
        if a daemon died, with the job's output and the daemons' logs' tails."""
        wanted = {state} if isinstance(state, str) else set(state)
        seen: dict[str, str] = {}

        def reached() -> bool:
            nonlocal seen
            self.assert_alive()
            seen = self.job(job_id)
            now = seen.get("JobState", "")
            if now in wanted:
                return True
            if now in FINISHED:
                raise SlurmFailure(
                    f"job {job_id} ended {now} (waiting for {sorted(wanted)}): "
                    f"{seen.get('Reason')}\noutput:\n{self.output(job_id)}\n{self.logs()}"
                )
            return False

        try:
            until(reached, timeout, f"job {job_id} to be {sorted(wanted)}", interval=0.2)
        except SlurmFailure:
            raise
        except AssertionError as e:
            raise AssertionError(f"{e}; last seen {seen}\n{self.logs()}") from None
        return seen

    def cancel_all(self, timeout: float = 30) -> None:
        """Cancel every job and wait until none is left running (``KillWait`` is 5 s)."""
        self.run("scancel", "--full", f"--partition={self.partition}", check=False)

        def none_left() -> bool:
            done = self.run("squeue", "-h", "-o", "%i %T", check=False)
            return done.returncode == 0 and not done.stdout.strip()

        with contextlib.suppress(AssertionError):
            until(none_left, timeout, "every job to end", interval=0.2)

    # -- the daemons --------------------------------------------------------------------

    def log(self, daemon: str) -> Path:
        return self.root / "log" / f"{daemon}.log"

    def logs(self, lines: int = 25) -> str:
        parts = []
        for daemon in DAEMONS:
            path = self.log(daemon)
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- {daemon} ({path}):\n{tail}")
        return "\n".join(parts)

    def assert_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise SlurmFailure(f"Slurm's daemons died (exit codes {dead}):\n{self.logs()}")

    def stop(self) -> None:
        """Cancel the jobs, stop the daemons (slurmd, slurmctld, then munged), then kill
        whatever of the cluster outlived them (job steps of a slurmd that died)."""
        if all(p.poll() is None for p in self.procs.values()):
            self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        left = leftovers(self.root)
        send(left, signal.SIGKILL)
        wait_gone(left, 10)


def _uses(pid: int, root: str) -> bool:
    """Whether process ``pid`` runs in, has open, or was started with a path under ``root``."""
    base = Path(f"/proc/{pid}")
    try:
        if os.readlink(base / "cwd").startswith(root):
            return True
        if root in (base / "cmdline").read_bytes().decode(errors="replace"):
            return True
        return any(os.readlink(fd).startswith(root) for fd in (base / "fd").iterdir())
    except OSError:
        return False


def leftovers(root: Path) -> set[int]:
    """The processes of this cluster still running: those that use its directory (a
    slurmstepd keeps slurmd's log open, a batch script is in its spool) and everything
    below them (a job of an ordinary user may run elsewhere)."""
    mine = {os.getpid(), os.getppid()}
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat_ = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat_.rsplit(")", 1)[1].split()[1])
    prefix = str(root) + os.sep
    found = {pid for pid in parents if pid not in mine and _uses(pid, prefix)}
    grew = True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in found} - found - mine
        grew = bool(below)
        found |= below
    return found


def _write_conf(root: Path, node: str, munge_socket: Path, partition: str) -> Path:
    taken: set[int] = set()
    ctld_port, slurmd_port = _free_port(taken), _free_port(taken)
    srun_first, srun_last = _free_range(taken)
    conf = root / "etc" / "slurm.conf"
    conf.write_text(
        f"""\
# A one-node test cluster (tests/slurm.py); every path is under {root}.
ClusterName=hpcp{secrets.token_hex(3)}
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SrunPortRange={srun_first}-{srun_last}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
ReturnToService=2
KillWait=5
MinJobAge=600
SlurmdParameters=config_overrides
NodeName={node} NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=1-00:00:00 State=UP
"""
    )
    conf.chmod(0o644)
    return conf


def _start_munged(root: Path, procs: dict[str, subprocess.Popen]) -> Path:
    """munged as user munge (as root if the machine has no such user), with its own key
    and socket; the socket's directory is munge's, mode 0711, so anyone reaches it."""
    munge_dir = root / "munge"
    munge_dir.mkdir(mode=0o711)
    key = munge_dir / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o600)
    log = root / "log" / "munged.log"
    log.touch(mode=0o640)
    try:
        who = pwd.getpwnam("munge")
    except KeyError:
        who = None
    prefix: list[str] = []
    if who is not None:
        for path in (munge_dir, key, log):
            os.chown(path, who.pw_uid, who.pw_gid)
        prefix = ["setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--clear-groups"]
    munge_socket = munge_dir / "munge.socket.2"
    with log.open("ab") as err:
        procs["munged"] = subprocess.Popen(
            [
                *prefix,
                _find("munged") or "munged",
                "--foreground",
                f"--socket={munge_socket}",
                f"--key-file={key}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--log-file={log}",
                f"--seed-file={munge_dir / 'munged.seed'}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    return munge_socket


def _make_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="hpcp-slurm-"))
    # munge, slurmd's job steps and ordinary users all need to pass through it.
    root.chmod(0o755)
    for sub in ("etc", "state", "spool", "run", "log"):
        (root / sub).mkdir(mode=0o755)
    jobs = root / "jobs"
    jobs.mkdir()
    jobs.chmod(0o777 | stat.S_ISVTX)
    return root


def _node_name() -> str:
    return socket.gethostname().split(".")[0]


@contextlib.contextmanager
def running_cluster(timeout: float = 30) -> Iterator[SlurmCluster]:
    """Start the cluster, yield it when its node is idle, stop it and remove its dir."""
    missing = [c for c in NEEDED if _find(c) is None]
    if missing:
        pytest.fail(
            f"Slurm's commands are missing: {missing}; "
            "install slurm-wlm, munge and libpmix-dev (bootstrap.sh does, as root)",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("the test Slurm cluster must be started as root", pytrace=False)
    root = _make_root()
    node = _node_name()
    partition = "hpcp"
    procs: dict[str, subprocess.Popen] = {}
    cluster: SlurmCluster | None = None
    saved = os.environ.get("SLURM_CONF")
    try:
        munge_socket = _start_munged(root, procs)
        conf = _write_conf(root, node, munge_socket, partition)
        env = {**os.environ, "SLURM_CONF": str(conf)}
        cluster = SlurmCluster(root, conf, env, partition, node, munge_socket, procs)
        until(
            lambda: munge_socket.exists() or procs["munged"].poll() is not None,
            timeout,
            "munged's socket",
            interval=0.02,
        )
        cluster.assert_alive()
        for daemon, argv in (
            ("slurmctld", [_find("slurmctld"), "-D", "-i", "-f", str(conf)]),
            ("slurmd", [_find("slurmd"), "-D", "-f", str(conf), "-N", node]),
        ):
            # Their own logs are SlurmctldLogFile / SlurmdLogFile; stderr adds early errors.
            with cluster.log(daemon).open("ab") as err:
                procs[daemon] = subprocess.Popen(
                    [str(a) for a in argv],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                )

        def idle() -> bool:
            cluster.assert_alive()
            done = cluster.run("sinfo", "-h", "-o", "%t", check=False)
            return done.returncode == 0 and done.stdout.strip() == "idle"

        try:
            until(idle, timeout, "the Slurm node to be idle", interval=0.1)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{cluster.logs()}") from None
        os.environ["SLURM_CONF"] = str(conf)
        yield cluster
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        if cluster is not None:
            cluster.stop()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(root, ignore_errors=True)


# Where the session's one cluster is kept: each test module that imports the fixture
# gets a fixture definition of its own, and they must all share one cluster.
_CLUSTER = pytest.StashKey[SlurmCluster]()


@pytest.fixture(scope="session")
def slurm_cluster(request: pytest.FixtureRequest) -> SlurmCluster:
    """A one-node Slurm cluster for the whole session (see the module's docstring),
    stopped when pytest ends. Fails, never skips, if Slurm is not installed, a daemon
    does not come up or has died since."""
    config = request.config
    if _CLUSTER not in config.stash:
        started = time.monotonic()
        stack = contextlib.ExitStack()
        config.add_cleanup(stack.close)
        try:
            cluster = stack.enter_context(running_cluster())
        except AssertionError as e:
            pytest.fail(f"the test Slurm cluster did not start: {e}", pytrace=False)
        cluster.started_in = time.monotonic() - started
        config.stash[_CLUSTER] = cluster
    cluster = config.stash[_CLUSTER]
    try:
        cluster.assert_alive()
    except AssertionError as e:
        pytest.fail(f"the test Slurm cluster: {e}", pytrace=False)
    return cluster
