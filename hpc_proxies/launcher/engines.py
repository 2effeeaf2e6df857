"""Where a process runs: the seam between "start this argv" and the machine.

:class:`LocalEngine` starts a process on this node, in a session of its own (so its
whole tree can be found and stopped), with its output on a pipe. Engines to come
(``mpiexec`` on N ranks, a Slurm job step) start the same argv elsewhere and return
the local process that stands for it (``mpiexec``, ``srun``); the lifecycle and the
:class:`~hpc_proxies.launcher.processes.ProcessGroup` do not change.
"""

from __future__ import annotations

import subprocess
from typing import Protocol


class LaunchEngine(Protocol):
    """Starts one process for a group; its output must be a pipe on ``stdout``."""

    name: str

    def start(
        self, argv: list[str], env: dict[str, str], cwd: str | None
    ) -> subprocess.Popen[bytes]: ...


class LocalEngine:
    """Run the argv here, as this user, in a new session, output (both streams) piped."""

    name = "local"

    def start(
        self, argv: list[str], env: dict[str, str], cwd: str | None = None
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
