"""How one pvserver run is started: its display, its network, its argv.

A :class:`PvserverStarter` decides what ParaView needs (an X server, a private network
namespace, pvserver's options); the processes themselves are started by the run's
:class:`~hpc_proxies.launcher.processes.ProcessGroup` through the starter's core
:class:`~hpc_proxies.launcher.engines.LaunchEngine`. So an MPI or Slurm pvserver is a
starter with other options and another engine (``mpiexec``, ``srun``), and the group
still reads its output, learns of its exit and stops its whole tree.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import string
import sys
import time
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Protocol

from .. import batchjob, netns, xdisplay
from ..launcher.engines import LaunchEngine, LocalEngine
from ..launcher.processes import ManagedProcess, ProcessGroup
from ..runtime import write_private_file
from . import HANDSHAKE_TIMEOUT
from .rendezvous import Rendezvous

SERVER_SCRIPT = Path(__file__).with_name("server.py")
#: The built-in job script (a string.Template); a site may give its own (``job_script``).
JOB_SCRIPT = Path(__file__).with_name("static") / "pvserver-job.sh"
#: What a job script template may use; it must use ``pvserver``.
JOB_PLACEHOLDERS = ("pvserver", "ranks", "job_name")
#: sbatch options that the engine sets itself, which ``extra_args`` may not change.
OWN_SBATCH_OPTIONS = ("--output", "--export", "--ntasks", "--job-name", "--chdir", "--parsable")
JOB_NAME = "hpc-proxies-pvserver"


@dataclass
class Options:
    """What the launcher passes on (from the site configuration); nothing secret."""

    directory: Path
    prefix: str
    python: str
    rendering: str = "xvfb"  # xvfb | display | egl
    display: str = ""
    egl_device: int = 0
    xvfb: str = "Xvfb"
    timeout: float = 60.0
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    isolate_network: str = "auto"  # auto | required | off
    engine: str = "local"  # local | mpiexec | slurm
    ranks: int = 2  # with engine = mpiexec or slurm, unless the user asks for another count
    max_ranks: int = 4  # the most a user may ask for
    mpiexec: str = "mpiexec"
    # engine = slurm: the job's sbatch options, its script, where its files go (a
    # directory every node sees), and the address pvserver connects back to.
    partition: str = ""
    account: str = ""
    time: str = "1:00:00"
    extra_args: str = ""
    job_script: str = ""
    job_directory: str = "~/.hpc-proxies/paraview-jobs"
    callback_address: str = ""


class StartFailed(RuntimeError):
    """pvserver did not come up; the message says why."""


@dataclass
class Run:
    """One start of pvserver: its files, its process group, and what it has said.

    The group is the run's own, so a stopped run's late output or exit can never be
    taken for the next run's, and stopping it stops exactly this run's tree."""

    workdir: Path
    connect_id_file: Path
    engine: InitVar[LaunchEngine]
    log: InitVar[Callable[[str], None]]
    group: ProcessGroup = field(init=False)
    #: The process that stands for pvserver (the namespace keeper, when there is one).
    process: ManagedProcess | None = None
    #: Its output lines as the group reads them, then None once it has exited.
    lines: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    xserver: xdisplay.XServer | None = None
    started: float = field(default_factory=time.time)
    port: int | None = None
    connected: bool = False
    connected_event: asyncio.Event = field(default_factory=asyncio.Event)
    refusals: int = 0
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    follower: asyncio.Task[None] | None = None  # reads its lines; cleans up at its exit
    #: The keeper's unix socket when pvserver runs in a private network namespace.
    connector: Path | None = None
    #: Where clients reach it, for the status page and the log.
    network: str = ""
    relay: netns.LoopbackRelay | None = None
    #: engine = slurm: where pvserver connects back to, and its job as Slurm describes
    #: it (id, state, reason, start, nodes, end...); ``ending`` says why it ended.
    rendezvous: Rendezvous | None = None
    job: dict[str, str] = field(default_factory=dict)
    ending: str = ""
    arrived: bool = False
    timed: bool = False  # the deadline for connecting back runs (from the job's start)
    stop_grace: InitVar[float] = field(default=5.0, kw_only=True)

    def __post_init__(
        self, engine: LaunchEngine, log: Callable[[str], None], stop_grace: float
    ) -> None:
        self.group = ProcessGroup(
            engine, on_line=self._line, on_exit=self._exit, log=log, stop_grace=stop_grace
        )

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> ManagedProcess:
        """Start ``argv`` in the run's directory as the run's process; its lines (and
        only its) are queued from now on, in a queue of their own."""
        self.lines = asyncio.Queue()
        self.process = self.group.spawn(name, argv, env, str(self.workdir))
        return self.process

    def _line(self, process: ManagedProcess, line: str) -> None:
        if process is self.process:
            self.lines.put_nowait(line)

    def _exit(self, process: ManagedProcess, code: int) -> None:
        if process is self.process:
            self.lines.put_nowait(None)


class PvserverStarter(Protocol):
    """How pvserver is started: the replaceable launch step of the ParaView service."""

    #: pvserver's ranks: those of the run, and of the next start (the service sets it
    #: when the user asks for another count).
    ranks: int
    #: Where the run's processes are started (the run's group is given it).
    engine: LaunchEngine
    #: Whether pvserver connects back to the service (:mod:`.rendezvous`) instead of
    #: listening: then the service opens the run's rendezvous before ``start``.
    connects_back: bool
    #: Seconds the run's processes get to end after SIGTERM (a job's cancel takes longer).
    stop_grace: float

    async def start(self, options: Options, run: Run) -> None:
        """Start pvserver through ``run.spawn``; fill in ``run``'s X server, connector
        and network. Raise :class:`StartFailed` (having cleaned up) if it cannot."""
        ...


class LocalPvserver:
    """One serial pvserver on this node, its X display private to this launch, and its
    TCP port (on every interface: ParaView 5.11 has no bind address) inside a network
    namespace of its own where the kernel allows one (:mod:`hpc_proxies.netns`)."""

    ranks = 1
    connects_back = False
    stop_grace = 5.0

    def __init__(self, engine: LaunchEngine | None = None) -> None:
        self.engine: LaunchEngine = engine or LocalEngine()

    def launch(self, argv: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        """The argv and environment that run ``argv`` (server.py) as pvserver."""
        return argv, env

    #: pvserver's own options for this engine.
    pv_args: tuple[str, ...] = ("--no-mpi",)

    async def start(self, options: Options, run: Run) -> None:
        env = dict(os.environ)
        pv_args = list(self.pv_args)
        if options.rendering == "xvfb":
            try:
                run.xserver = await asyncio.to_thread(
                    xdisplay.start_xvfb, run.workdir, options.xvfb
                )
            except (xdisplay.XServerError, OSError) as err:
                raise StartFailed(f"the private X server (Xvfb) did not start: {err}") from err
            env.update(run.xserver.environ())
        elif options.rendering == "display":
            if options.display:
                env["DISPLAY"] = options.display
        elif options.rendering == "egl":
            env.pop("DISPLAY", None)
            pv_args += ["--force-offscreen-rendering", f"--displays={options.egl_device}"]
        argv = [options.python, str(SERVER_SCRIPT), "--connect-id-file", str(run.connect_id_file)]
        argv += [f"--pv-arg={arg}" for arg in pv_args]
        argv, env = self.launch(argv, env)
        try:
            await self._spawn(options, run, argv, env)
        except OSError as err:
            self._stop_xserver(run)
            raise StartFailed(f"starting {argv[0]} failed: {err}") from err
        except StartFailed:
            self._stop_xserver(run)
            raise

    @staticmethod
    async def _spawn(options: Options, run: Run, argv: list[str], env: dict[str, str]) -> None:
        """pvserver in a private network namespace if it can (or must) be; else bare."""
        if options.isolate_network != "off":
            run.connector = run.workdir / "connector.sock"
            keeper = run.spawn("netns keeper", netns.keeper_argv(run.connector, argv), env)
            unavailable = await _namespace_refusal(run, keeper, options.timeout)
            if unavailable is None:
                run.network = "127.0.0.1 only (pvserver is in a private network namespace)"
                return
            run.connector = None
            if options.isolate_network == "required":
                raise StartFailed(
                    f"pvserver must run in a private network namespace (isolate_network "
                    f"= 'required'), but {unavailable}"
                )
            run.network = f"every interface: {unavailable}"
        else:
            run.network = "every interface (isolate_network = 'off')"
        run.spawn("pvserver", argv, env)

    @staticmethod
    def _stop_xserver(run: Run) -> None:
        if run.xserver is not None:
            run.xserver.stop()
            run.xserver = None


class MpiexecPvserver(LocalPvserver):
    """pvserver on ``ranks`` MPI ranks started by ``mpiexec``, on this node or in the
    allocation of the job the Jupyter server runs in. The ranks share the private X
    server and, where there is one, the private network namespace: OpenMPI's own TCP
    listeners (on every interface) are then out of every other user's reach too."""

    pv_args = ()

    def __init__(self, ranks: int, mpiexec: str = "mpiexec", engine: LaunchEngine | None = None):
        super().__init__(engine)
        self.ranks = ranks
        self.mpiexec = mpiexec

    def launch(self, argv: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        env = dict(env)
        # hwloc's GL plugin would open every X display on the node, other users' too.
        env.setdefault("HWLOC_COMPONENTS", "-gl")
        # Idle ranks yield their core instead of spinning on a shared, busy node.
        env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
        if os.geteuid() == 0:  # OpenMPI refuses root unless told twice
            env["OMPI_ALLOW_RUN_AS_ROOT"] = env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        # More ranks than cores is allowed: a site sets `ranks` for its nodes.
        return [self.mpiexec, "--oversubscribe", "-n", str(self.ranks), *argv], env


class SlurmPvserver:
    """pvserver on ``ranks`` MPI ranks as a Slurm batch job of its own, on the nodes
    Slurm gives it. Its local process is :mod:`hpc_proxies.batchjob`, which submits
    the job, reports its queue state, passes on its output and cancels it when stopped.

    Nothing of pvserver listens on the job's nodes: rank 0 connects back to the run's
    rendezvous (:mod:`.rendezvous`) on this node. Each rank renders on a private Xvfb
    of its own (``rendering = "xvfb"``), or with EGL. The job's files (script, output,
    connect-id) are in a 0700 directory every node sees (``job_directory``)."""

    connects_back = True
    #: batchjob cancels the job and waits for Slurm to end it (KillWait and more).
    stop_grace = 60.0

    def __init__(self, ranks: int, engine: LaunchEngine | None = None) -> None:
        self.engine: LaunchEngine = engine or LocalEngine()
        self.ranks = ranks

    def rank_argv(self, options: Options, run: Run) -> list[str]:
        """One rank's argv: server.py, connecting back, each rank with its own display."""
        rendezvous = run.rendezvous
        assert rendezvous is not None and rendezvous.port is not None, "opened before start"
        argv = [options.python, str(SERVER_SCRIPT), "--connect-id-file", str(run.connect_id_file)]
        argv += ["--reverse", f"{rendezvous.host}:{rendezvous.port}"]
        if options.rendering == "egl":  # each rank on the GPU the job gave it, if any
            argv += ["--egl-device", str(options.egl_device)]
        elif options.rendering == "xvfb":
            display = [sys.executable, "-m", "hpc_proxies.xdisplay", "--xvfb", options.xvfb]
            argv = [*display, "--", *argv]
        return argv

    def pvserver_lines(self, options: Options, run: Run) -> str:
        """The job script's ``${pvserver}``: the ranks, started again after each client."""
        launch = shlex.join([options.mpiexec, "-n", str(self.ranks), *self.rank_argv(options, run)])
        root = "export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1\n"
        return (
            "# hwloc's GL plugin would open every X display on the node, other users' too;\n"
            "# idle ranks yield their core.\n"
            "export HWLOC_COMPONENTS=-gl OMPI_MCA_mpi_yield_when_idle=1\n"
            + (root if os.geteuid() == 0 else "")
            + "# pvserver ends when its client leaves: start it again, until the job ends.\n"
            + f"while {launch}; do :; done\n"
        )

    def sbatch_options(self, options: Options, run: Run) -> list[str]:
        argv = [
            f"--job-name={JOB_NAME}",
            f"--ntasks={self.ranks}",
            f"--chdir={run.workdir}",
            f"--time={options.time}",
            "--export=ALL",
        ]
        if options.partition:
            argv.append(f"--partition={options.partition}")
        if options.account:
            argv.append(f"--account={options.account}")
        return argv + shlex.split(options.extra_args)

    async def start(self, options: Options, run: Run) -> None:
        try:
            template = read_job_template(options.job_script)
        except OSError as err:
            raise StartFailed(
                f"The job script template {options.job_script} cannot be read "
                f"({err.strerror or err}): fix the site configuration's [apps.paraview] "
                "job_script, or remove it to use the built-in one."
            ) from err
        script = string.Template(template).safe_substitute(
            pvserver=self.pvserver_lines(options, run), ranks=self.ranks, job_name=JOB_NAME
        )
        script_file = write_private_file(run.workdir / "pvserver-job.sh", script)
        argv = [
            sys.executable,
            "-m",
            "hpc_proxies.batchjob",
            "--script",
            str(script_file),
            "--output",
            str(run.workdir / "job.out"),
            "--",
            *self.sbatch_options(options, run),
        ]
        rendezvous = run.rendezvous
        assert rendezvous is not None, "the service opens it before start"
        host = rendezvous.host
        run.network = (
            "nowhere on the job's nodes: pvserver connects back to "
            f"{host}:{rendezvous.port} on this node (its connect-id, from "
            "the job's first node only); clients reach it through 127.0.0.1, this user's "
            "processes only"
        )
        if host.startswith("127."):  # fine for a job on this node, not for one elsewhere
            run.network += (
                f". {host} is a loopback address: a job on another node cannot connect "
                "back to it; administrators set [apps.paraview] callback_address"
            )
        try:
            run.spawn("slurm job", argv, batchjob.job_environment(os.environ))
        except OSError as err:
            raise StartFailed(f"starting {argv[0]} failed: {err}") from err


def read_job_template(path: str) -> str:
    """The job script template: the site's file, or the built-in one."""
    return Path(path).expanduser().read_text() if path else JOB_SCRIPT.read_text()


def job_template_problem(path: object) -> str | None:
    """What is wrong with a job script template file, in words; None if it is usable or
    not there to read: the file belongs to the systems that use it (a file missing here
    fails that start, with a page that names the key, not the whole configuration)."""
    if not isinstance(path, str) or not path:
        return None
    try:
        text = read_job_template(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"cannot read the job script template {path}: {err.strerror or err}"
    template = string.Template(text)
    if not template.is_valid():
        return (
            f"{path} is not a valid template: write a literal $ as $$ (placeholders: "
            + ", ".join(f"${{{name}}}" for name in JOB_PLACEHOLDERS)
            + ")"
        )
    used = set(template.get_identifiers())
    unknown = sorted(used - set(JOB_PLACEHOLDERS))
    if unknown:
        return (
            f"{path} uses unknown placeholders {', '.join('$' + u for u in unknown)}; "
            f"it may use {', '.join('$' + p for p in JOB_PLACEHOLDERS)} (a literal $ is $$)"
        )
    if "pvserver" not in used:
        return f"{path} must contain ${{pvserver}}, the line that runs pvserver's ranks"
    return None


def extra_args_problem(value: object) -> str | None:
    """What is wrong with ``extra_args`` (sbatch options), in words; None if fine."""
    if not isinstance(value, str):
        return None
    try:
        words = shlex.split(value)
    except ValueError as err:
        return f"cannot be split as a command line: {err}"
    for word in words:
        if not word.startswith("-"):
            return f"{word!r} is not an sbatch option (each starts with - or --)"
        name = word.split("=", 1)[0]
        if name in OWN_SBATCH_OPTIONS or name in ("-o", "-n", "-J", "-D"):
            return f"{name} is set by hpc-proxies itself (ranks, output, environment, name)"
    return None


def callback_host(options: Options) -> str:
    """The address on this node that pvserver's job connects back to: the site's
    ``callback_address``, or the address this node's name resolves to."""
    if options.callback_address:
        return options.callback_address
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def starter_for(options: Options) -> PvserverStarter:
    """The starter the site configuration's ``engine`` chooses."""
    if options.engine == "mpiexec":
        return MpiexecPvserver(options.ranks, options.mpiexec)
    if options.engine == "slurm":
        return SlurmPvserver(options.ranks)
    return LocalPvserver()


async def _namespace_refusal(run: Run, keeper: ManagedProcess, timeout: float) -> str | None:
    """None once the keeper is in its namespace (its first line says so); otherwise,
    with the keeper stopped, why it is not."""
    try:
        line = (await asyncio.wait_for(run.lines.get(), timeout) or "").strip()
    except asyncio.TimeoutError:
        line = ""
    if line == f"{netns.MARK} ready":
        return None
    await run.group.stop()
    rest = "\n".join(text for text in keeper.tail.lines if not text.startswith(netns.MARK))
    reason = line.removeprefix(f"{netns.MARK} unavailable").strip() or rest.strip()
    return reason or f"the namespace keeper exited (code {keeper.returncode})"
