"""Finding the executables an app needs, with a useful answer when one is missing.

With a site ``setup`` snippet (``module load …``), PATH is only known after the
snippet ran, so the lookup then runs ``command -v`` in the same kind of shell.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, replace

from .spec import AppSpec, Requirement

SHELL = "/bin/bash"
SETUP_TIMEOUT = 60


@dataclass(frozen=True)
class Missing:
    """One requirement that was not found, and where we looked."""

    requirement: Requirement
    search_path: str


class MissingExecutables(Exception):
    """Some executables an app needs are not installed (or not on PATH)."""

    def __init__(self, missing: list[Missing], setup: str = "", detail: str = ""):
        self.missing = missing
        self.setup = setup
        self.detail = detail
        names = ", ".join(m.requirement.executable for m in missing)
        super().__init__(f"not found: {names}")


def requirements(app: AppSpec, settings: Mapping[str, object]) -> tuple[Requirement, ...]:
    """The app's requirements, with the site's ``executable`` in place of the first."""
    reqs = app.requirements(settings)
    executable = settings.get("executable")
    if reqs and executable and executable != reqs[0].executable:
        reqs = (replace(reqs[0], executable=str(executable)), *reqs[1:])
    return reqs


def app_env(settings: Mapping[str, object]) -> dict[str, str]:
    """The app's environment: the server's, plus the site's ``environment`` table."""
    return {**os.environ, **settings.get("environment", {})}  # type: ignore[dict-item]


def resolve_app(
    app: AppSpec, settings: Mapping[str, object], env: Mapping[str, str]
) -> dict[str, str]:
    """The app's programs (the site's ``executable`` first), looked up after its ``setup``."""
    return resolve(requirements(app, settings), str(settings.get("setup", "")), env)


def setup_argv(setup: str, argv: list[str]) -> list[str]:
    """Run ``setup`` in bash, then replace the shell by ``argv`` (exec keeps signals working)."""
    if not setup:
        return argv
    return [SHELL, "-c", f'{setup}\nexec "$@"', "hpc-proxies-setup", *argv]


def resolve(
    reqs: tuple[Requirement, ...],
    setup: str = "",
    env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Map each required executable to its full path, or raise :class:`MissingExecutables`."""
    env = os.environ if env is None else env
    if setup:
        found, search_path, detail = _resolve_after_setup(reqs, setup, env)
    else:
        search_path, detail = env.get("PATH", os.defpath), ""
        found = {r.executable: shutil.which(r.executable, path=search_path) for r in reqs}
    for req in reqs:
        if req.is_file:
            found[req.executable] = req.executable if os.path.isfile(req.executable) else None
    missing = [Missing(r, search_path) for r in reqs if not found.get(r.executable)]
    if missing:
        raise MissingExecutables(missing, setup, detail)
    return {r.executable: found[r.executable] for r in reqs}


def _resolve_after_setup(reqs, setup: str, env) -> tuple[dict[str, str | None], str, str]:
    names = " ".join(shlex.quote(r.executable) for r in reqs if not r.is_file)
    script = (
        f"{setup}\n"
        f'for exe in {names}; do printf "%s\\t%s\\n" "$exe" "$(command -v "$exe")"; done\n'
        'printf "PATH\\t%s\\n" "$PATH"\n'
    )
    try:
        done = subprocess.run(
            [SHELL, "-c", script],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=SETUP_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return {}, "", f"running the setup snippet failed: {err}"
    found: dict[str, str | None] = {}
    search_path = ""
    for line in done.stdout.splitlines():
        name, _, value = line.partition("\t")
        if name == "PATH":
            search_path = value
        else:
            found[name] = value if value.startswith("/") else None
    return found, search_path, done.stderr.strip()


def version(executable: str, args: tuple[str, ...], setup: str = "", env=None) -> str | None:
    """The first line an executable prints for ``args`` (e.g. ``--version``), if any."""
    try:
        done = subprocess.run(
            setup_argv(setup, [executable, *args]),
            env=dict(os.environ if env is None else env),
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if lines else None
