"""RStudio Server: ``rserver`` on the launch's private socket, as the user, without its login.

rserver listens only on the launch's unix socket (``--www-socket``) and is told its
public prefix (``--www-root-path``). It has no login of its own (``--auth-none=1``):
only the user's Jupyter server can reach the socket, and Jupyter has authenticated
every request already (see the README). Its server data directory, which rserver makes
world-writable, is nested in the private runtime directory; each start gets a new 0600
secure-cookie key and a sqlite database configuration. rserver's redirects name the
host and port it believes it runs on; they are pointed back through Jupyter.

Which options the installed rserver has is read from ``rserver --help``: optional ones
it lacks are left out, and one it cannot run safely without gives a page.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping

from ..runtime import write_private_file
from ..spec import AppSpec, Flag, Launch, Requirement, Setting

RSERVER = "rserver"
SERVER_DATA = "server-data"
DATABASE_CONF = "database.conf"

#: rserver's options, those it cannot run here without first.
FLAGS = (
    Flag(
        "--www-socket",
        required="hpc-proxies serves every app on a private unix socket and never opens a "
        "TCP port that other users of this node could reach; this rserver can only listen "
        "on TCP. RStudio Server versions that have --www-socket can.",
    ),
    Flag(
        "--auth-none",
        required="Without it RStudio asks for a second login that cannot work here; "
        "the user is already authenticated by Jupyter.",
    ),
    Flag("--www-root-path"),
    Flag("--server-user"),
    Flag("--server-data-dir"),
    Flag("--database-config-file"),
    Flag("--secure-cookie-key-file"),
    Flag("--server-daemonize"),
    Flag("--www-frame-origin"),
    Flag("--www-verify-user-agent"),
    Flag("--rsession-which-r"),
)


def user_name() -> str:
    """rserver runs as this user (``--server-user``), never as another."""
    return pwd.getpwuid(os.getuid()).pw_name


def prepare(launch: Launch) -> None:
    """The server data directory and the sqlite database, inside the private app dir."""
    (launch.app_dir / SERVER_DATA).mkdir(mode=0o700)
    (launch.app_dir / "db").mkdir(mode=0o700)
    write_private_file(
        launch.app_dir / DATABASE_CONF,
        f"provider=sqlite\ndirectory={launch.app_dir / 'db'}\n",
    )


def command(launch: Launch) -> list[str]:
    """rserver with each flag it lists (``launch.flags``); the key only by its file."""
    r = str(launch.settings.get("r") or "")
    wanted = [
        ("--www-socket", str(launch.socket)),
        ("--auth-none", "1"),
        ("--www-root-path", launch.prefix),
        ("--server-user", user_name()),
        ("--server-data-dir", str(launch.app_dir / SERVER_DATA)),
        ("--database-config-file", str(launch.app_dir / DATABASE_CONF)),
        ("--secure-cookie-key-file", str(launch.secret_file)),
        ("--server-daemonize", "0"),
        ("--www-frame-origin", "same"),
        ("--www-verify-user-agent", "0"),
        ("--rsession-which-r", launch.executables.get(r, r)),
    ]
    return [launch.executable] + [
        f"{flag}={value}" for flag, value in wanted if value and launch.supports(flag)
    ]


def environment(launch: Launch) -> dict[str, str]:
    """The R for an rserver too old for ``--rsession-which-r``."""
    r = str(launch.settings.get("r") or "")
    if r and not launch.supports("--rsession-which-r"):
        return {"RSTUDIO_WHICH_R": launch.executables.get(r, r)}  # older rservers read this
    return {}


def requires(settings: Mapping[str, object]) -> tuple[Requirement, ...]:
    """rserver, and the site's ``r`` if set (a missing one gets the missing-program page)."""
    reqs = [
        Requirement(
            RSERVER,
            "RStudio Server (rstudio-server from Posit's downloads, or your HPC centre's "
            "module: set setup = 'module load RStudio-Server' in the site configuration)",
        )
    ]
    if settings.get("r"):
        reqs.append(Requirement(str(settings["r"]), "the R set as [apps.rstudio] r"))
    return tuple(reqs)


APP = AppSpec(
    name="rstudio",
    title="RStudio",
    icon="rstudio",
    description="RStudio Server as the user, on a private socket, behind the Jupyter login.",
    requires=requires,
    command=command,
    environment=environment,
    prepare=prepare,
    secret=True,  # the secure-cookie key, a new 0600 file per start
    secret_bytes=32,
    flags=FLAGS,
    fix_redirect_host=True,
    timeout=60.0,
    max_instances=1,  # rserver keeps per-user state that two servers would share
    version_args=("--version",),
    settings=(
        Setting(
            "r",
            str,
            "",
            "The R that RStudio runs (passed as --rsession-which-r). Default: the R "
            "rserver finds (on PATH, after `setup`).",
            example="/opt/R/4.4/bin/R",
        ),
    ),
)
