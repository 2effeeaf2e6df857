"""TensorBoard: the user's training runs, on a private socket, with no TCP port at all.

TensorBoard serves on the launch's unix socket through a small runner
(:mod:`hpc_proxies.tensorboard.serve`, run by the Python of the ``tensorboard`` that was
found), with ``--load_fast=false`` so that no data server opens a port either. It gets
the full public path (``--path_prefix``). Which directory it shows: the site's
``logdir``, else the directory the Jupyter server runs in; a user opens another one
from the browser with ``/tensorboard/?logdir=DIR``, which relaunches it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..executables import python_of
from ..runtime import existing_directory
from ..spec import AppSpec, CannotStart, Launch, Parameter, Problem, Requirement, Setting

TENSORBOARD = "tensorboard"
SERVE = Path(__file__).with_name("serve.py")
INSTALL_HINT = (
    "install it into the environment that runs Jupyter: pip install 'hpc-proxies[tensorboard]' "
    "(or have the site configuration's setup or executable bring one)"
)


def default_logdir(settings: Mapping[str, object]) -> str:
    """The site's ``logdir``, else where the Jupyter server runs (the launcher's cwd)."""
    return str(settings.get("logdir") or "") or os.getcwd()


def resolve_logdir(value: str) -> str:
    """The directory as TensorBoard gets it: checked and resolved before it sees it (it
    may come from a URL), relative to where the Jupyter server runs."""
    return str(existing_directory(value))


def command(launch: Launch) -> list[str]:
    """The runner, by the Python of the ``tensorboard`` found (a module's may differ)."""
    python = python_of(launch.executable)
    if python is None:
        raise CannotStart(
            Problem(
                code="not-a-python-script",
                summary="cannot be started with this tensorboard",
                details=(
                    f"`{launch.executable}` is not a Python script, so it is not known which "
                    "Python has TensorBoard.",
                ),
                fix="Administrators: set the site configuration's `executable` to a "
                "pip-installed `tensorboard` script or to a Python that has TensorBoard "
                "installed.",
                status=503,
            )
        )
    return [
        python,
        str(SERVE),
        "--socket",
        str(launch.socket),
        "--path-prefix",
        launch.prefix.rstrip("/"),
        "--logdir",
        launch.params["logdir"],
    ]


def environment(launch: Launch) -> dict[str, str]:
    # TensorBoard writes an info file (its pid, URL, logdir) into a world-writable
    # /tmp/.tensorboard-info; keep it, and any other temporary file, private.
    return {"TMPDIR": str(launch.app_dir)}


APP = AppSpec(
    name="tensorboard",
    title="TensorBoard",
    icon="tensorboard",
    description="TensorBoard for the user's training runs; /tensorboard/?logdir=DIR opens another.",
    requires=(Requirement(TENSORBOARD, INSTALL_HINT),),
    command=command,
    environment=environment,
    parameters=(
        Parameter("logdir", "run directory", default=default_logdir, resolve=resolve_logdir),
    ),
    absolute_url=True,
    timeout=60.0,
    version_args=("--version_tb",),
    settings=(
        Setting(
            "logdir",
            str,
            "",
            "The directory of runs TensorBoard shows first ('~' is the user's home). "
            "Default: the directory the Jupyter server runs in. Users open another with "
            "/tensorboard/?logdir=DIR.",
            example="~/runs",
        ),
    ),
)
