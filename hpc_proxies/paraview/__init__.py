"""ParaView: this user's pvserver behind a tile, driven from a notebook kernel.

The tile (``/paraview/``) is a small service (:mod:`.service`) on the launch's private
unix socket: a status page, a JSON API, and the route to interactive views. It starts
pvserver on demand, inside a Python that imports ParaView (:mod:`.server`), so the
per-launch connect-id comes from a 0600 file and never appears in an argv; with GLX
builds each start gets a private Xvfb (no TCP, a cookie in a 0600 file).

In a notebook on the "ParaView (pvpython)" kernel (``hpc-proxies install-kernel
paraview``)::

    import hpc_proxies.paraview as pvh
    from paraview.simple import *
    pvh.connect()          # starts pvserver through the Jupyter server if needed
    Show(Sphere())
    pvh.show()             # an interactive view in the cell, rendered by pvserver
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from ..spec import AppSpec, Launch, Requirement, Setting

#: Debian's python3-paraview is importable by Debian's own Python.
DEFAULT_PYTHON = "/usr/bin/python3"
RENDERING_MODES = ("xvfb", "display", "egl")
#: How pvserver is launched: one process here, ``ranks`` MPI ranks with ``mpiexec``, or
#: ``ranks`` ranks as a Slurm batch job of its own.
ENGINES = ("local", "mpiexec", "slurm")
#: A Slurm time limit as sbatch's --time takes it.
SLURM_TIME = (
    r"\d+(:\d{1,2}){0,2}|\d+-\d+(:\d{1,2}){0,2}",
    "MINUTES, HH:MM:SS or DAYS-HH[:MM[:SS]]",
)
#: Seconds a client let through the relay has, unless the site sets
#: ``handshake_timeout``, to finish ParaView's handshake: pvserver serves one client and
#: waits on the first, so one that stalls would hold everyone.
HANDSHAKE_TIMEOUT = 15.0


def connect(timeout: float = 120.0, ranks: int | None = None):
    """Make sure this user's pvserver runs (on ``ranks`` MPI ranks, if asked and the
    site allows) and connect ``paraview.simple`` to it."""
    from .client import connect as _connect

    return _connect(timeout=timeout, ranks=ranks)


def show(view=None, interactive: bool = True):
    """Display the active render view in the cell (interactive), or return a PNG."""
    from .client import show as _show

    return _show(view=view, interactive=interactive)


#: The site keys the ParaView service takes, and its command-line option for each.
SERVICE_OPTIONS = {
    "rendering": "--rendering",
    "display": "--display",
    "egl_device": "--egl-device",
    "pvserver_timeout": "--timeout",
    "handshake_timeout": "--handshake-timeout",
    "isolate_network": "--isolate-network",
    "engine": "--engine",
    "ranks": "--ranks",
    "max_ranks": "--max-ranks",
    "partition": "--partition",
    "account": "--account",
    "time": "--time",
    "extra_args": "--extra-args",
    "job_script": "--job-script",
    "job_directory": "--job-directory",
    "callback_address": "--callback-address",
}
#: isolate_network's values.
ISOLATION = ("auto", "required", "off")


def _job_script_problem(value: object) -> str | None:
    from .starter import job_template_problem  # the starter is heavier: only when checked

    return job_template_problem(value)


def _extra_args_problem(value: object) -> str | None:
    from .starter import extra_args_problem

    return extra_args_problem(value)


def command(launch: Launch) -> list[str]:
    settings = launch.settings
    argv = [
        sys.executable,
        "-m",
        "hpc_proxies.paraview.service",
        "--socket",
        str(launch.socket),
        "--dir",
        str(launch.app_dir),
        "--prefix",
        launch.prefix,
        "--python",
        launch.executable,
    ]
    # Each site key the service takes, with the Setting's own default (one place).
    defaults = {setting.name: setting.default for setting in APP.settings}
    for key, option in SERVICE_OPTIONS.items():
        argv += [option, str(settings.get(key, defaults[key]))]
    if "mpiexec" in launch.executables:
        argv += ["--mpiexec", launch.executables["mpiexec"]]
    if "Xvfb" in launch.executables:
        argv += ["--xvfb", launch.executables["Xvfb"]]
    return argv


def requires(settings: Mapping[str, object]) -> tuple[Requirement, ...]:
    reqs = [
        Requirement(
            DEFAULT_PYTHON,
            "a Python that imports ParaView (Debian/Ubuntu: apt install paraview "
            "python3-paraview), or set [apps.paraview] executable (and setup, e.g. "
            "'module load ParaView') in the site configuration",
        )
    ]
    if str(settings.get("rendering") or "xvfb") == "xvfb":
        reqs.append(Requirement("Xvfb", "on Debian/Ubuntu: apt install xvfb"))
    engine = str(settings.get("engine") or "local")
    if engine == "slurm":
        reqs.append(
            Requirement(
                "sbatch",
                "Slurm's commands (sbatch, scontrol, scancel) on the Jupyter server's node "
                "(Debian/Ubuntu: apt install slurm-client), or `setup` that puts them on PATH",
            )
        )
    if engine == "mpiexec":
        reqs.append(
            Requirement(
                "mpiexec",
                "the MPI that ParaView was built with (Debian/Ubuntu: apt install "
                "openmpi-bin), or `setup` that loads it (e.g. 'module load OpenMPI')",
            )
        )
    return tuple(reqs)


APP = AppSpec(
    name="paraview",
    title="ParaView",
    icon="paraview",
    description="This user's ParaView server (pvserver), driven from a notebook kernel.",
    requires=requires,
    command=command,
    timeout=30.0,
    max_instances=1,  # one pvserver service per user; kernels share it
    # Not "/": opening the status page starts pvserver (a job, with engine = "slurm"),
    # and the launcher's readiness check is not a user opening it.
    ready_path="/api/status",
    html_paths=(),
    settings=(
        Setting(
            "engine",
            str,
            "local",
            "How pvserver runs: 'local' (one process on the Jupyter server's node), "
            "'mpiexec' (`ranks` MPI ranks with `mpiexec`, on this node or in the "
            "allocation the Jupyter server's job holds), or 'slurm' (`ranks` ranks as a "
            "batch job of its own: `partition`, `account`, `time`, `extra_args`, "
            "`job_script`). The notebook code is the same.",
            choices=ENGINES,
        ),
        Setting(
            "ranks",
            int,
            2,
            "pvserver's MPI ranks with engine = 'mpiexec' or 'slurm'.",
            minimum=1,
            example=4,
        ),
        Setting(
            "max_ranks",
            int,
            4,
            "The most ranks a user may ask for, with connect(ranks=N), under engine = "
            "'mpiexec' or 'slurm' (`ranks` is what they get when they do not ask).",
            minimum=1,
            example=16,
        ),
        Setting(
            "partition",
            str,
            "",
            "For engine = 'slurm': the partition pvserver's job is submitted to ('': "
            "Slurm's default).",
            example="vis",
            pattern=(r"[\w.,-]*", "a partition name"),
        ),
        Setting(
            "account",
            str,
            "",
            "For engine = 'slurm': the account (project) the job is charged to ('': the "
            "user's default).",
            example="proj42",
            pattern=(r"[\w.-]*", "an account name"),
        ),
        Setting(
            "time",
            str,
            "1:00:00",
            "For engine = 'slurm': the job's time limit (walltime); pvserver stops when it "
            "is reached, and the status page says so.",
            example="30",
            pattern=SLURM_TIME,
        ),
        Setting(
            "extra_args",
            str,
            "",
            "For engine = 'slurm': more sbatch options, as on a command line (not those "
            "hpc-proxies sets: --ntasks, --output, --export, --job-name, --chdir).",
            example="--gres=gpu:1 --qos=vis",
            check=_extra_args_problem,
        ),
        Setting(
            "job_script",
            str,
            "",
            "For engine = 'slurm': a job script template of the site's (a string.Template "
            "that keeps ${pvserver}, e.g. to load modules first); '' for the built-in one.",
            example="/etc/hpc-proxies/pvserver-job.sh",
            check=_job_script_problem,
        ),
        Setting(
            "job_directory",
            str,
            "~/.hpc-proxies/paraview-jobs",
            "For engine = 'slurm': where each job's script, output and connect-id go, in a "
            "0700 directory; every node must see it (a home or project filesystem).",
        ),
        Setting(
            "callback_address",
            str,
            "",
            "For engine = 'slurm': the address of the Jupyter server's node that pvserver's "
            "job connects back to ('': the address the node's name resolves to); on a "
            "node with several networks, the one the compute nodes reach.",
            example="10.1.2.3",
        ),
        Setting(
            "rendering",
            str,
            "xvfb",
            "Where pvserver renders: 'xvfb' (a private Xvfb per start, for GLX builds "
            "such as Debian's), 'display' (an existing X display: `display`, or the "
            "server's DISPLAY), or 'egl' (headless EGL builds, device `egl_device`).",
            choices=RENDERING_MODES,
        ),
        Setting("display", str, "", "The X display for rendering = 'display'.", example=":0"),
        Setting("egl_device", int, 0, "The EGL device index for rendering = 'egl'."),
        Setting(
            "pvserver_timeout",
            float,
            60.0,
            "Seconds pvserver may take to listen after a start (the tile's own start-up "
            "is `timeout`).",
            example=300,
        ),
        Setting(
            "handshake_timeout",
            float,
            HANDSHAKE_TIMEOUT,
            "Seconds a client let through the relay has to finish ParaView's handshake "
            "before pvserver is started anew, so that a hung client cannot hold it (pvserver "
            "serves one client, and waits on the first).",
        ),
        Setting(
            "isolate_network",
            str,
            "auto",
            "pvserver listens on every interface (ParaView 5.11 has no bind address). "
            "'auto' runs it in a private network namespace (unprivileged user namespaces) "
            "with a relay on 127.0.0.1, or, where the kernel forbids those, on every "
            "interface behind its connect-id, saying so on the status page; 'required' "
            "refuses to start without the namespace; 'off' never uses one.",
            choices=ISOLATION,
        ),
    ),
)
