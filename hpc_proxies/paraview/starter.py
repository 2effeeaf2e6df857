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
import time
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Protocol

from .. import netns, xdisplay
from ..launcher.engines import LaunchEngine, LocalEngine
from ..launcher.processes import ManagedProcess, ProcessGroup
from . import HANDSHAKE_TIMEOUT

SERVER_SCRIPT = Path(__file__).with_name("server.py")


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
    engine: str = "local"  # local | mpiexec
    ranks: int = 2  # with engine = mpiexec, unless the user asks for another count
    max_ranks: int = 4  # the most a user may ask for
    mpiexec: str = "mpiexec"


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

    def __post_init__(self, engine: LaunchEngine, log: Callable[[str], None]) -> None:
        self.group = ProcessGroup(engine, on_line=self._line, on_exit=self._exit, log=log)

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

    async def start(self, options: Options, run: Run) -> None:
        """Start pvserver through ``run.spawn``; fill in ``run``'s X server, connector
        and network. Raise :class:`StartFailed` (having cleaned up) if it cannot."""
        ...


class LocalPvserver:
    """One serial pvserver on this node, its X display private to this launch, and its
    TCP port (on every interface: ParaView 5.11 has no bind address) inside a network
    namespace of its own where the kernel allows one (:mod:`hpc_proxies.netns`)."""

    ranks = 1

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


def starter_for(options: Options) -> PvserverStarter:
    """The starter the site configuration's ``engine`` chooses."""
    if options.engine == "mpiexec":
        return MpiexecPvserver(options.ranks, options.mpiexec)
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
