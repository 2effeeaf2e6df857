"""Finding the executables an app needs, with a useful answer when one is missing.

With a site ``setup`` snippet (``module load …``), PATH is only known after the
snippet ran, so the lookup then runs ``command -v`` in the same kind of shell.

Programs that come with Python packages (``pip install 'hpc-proxies[tensorboard]'``)
are also looked for beside the Python that runs Jupyter: its ``bin`` directory is often
not on PATH (JupyterHub starts ``/opt/env/bin/jupyterhub-singleuser`` by its path).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
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
    beside_python = os.path.dirname(sys.executable)
    for req in reqs:
        if req.is_file:
            found[req.executable] = req.executable if os.path.isfile(req.executable) else None
        elif not found.get(req.executable) and "/" not in req.executable:
            found[req.executable] = shutil.which(req.executable, path=beside_python)
    if beside_python not in search_path.split(os.pathsep):
        search_path = os.pathsep.join(p for p in (search_path, beside_python) if p)
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


def run_program(
    executable: str,
    args: tuple[str, ...],
    setup: str = "",
    env: Mapping[str, str] | None = None,
    timeout: float = SETUP_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``executable args`` after the site's ``setup``, without input, and capture
    what it prints. Raises OSError or TimeoutExpired like ``subprocess.run``."""
    return subprocess.run(
        setup_argv(setup, [executable, *args]),
        env=dict(os.environ if env is None else env),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def version(executable: str, args: tuple[str, ...], setup: str = "", env=None) -> str | None:
    """The first line an executable prints for ``args`` (e.g. ``--version``), if any."""
    try:
        done = run_program(executable, args, setup, env, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if lines else None


def supported_flags(
    executable: str,
    flags: Iterable[str],
    help_args: tuple[str, ...] = ("--help",),
    setup: str = "",
    env: Mapping[str, str] | None = None,
) -> tuple[frozenset[str], str]:
    """Which of ``flags`` the program lists in its help output, and that output.

    Apps change their options between versions (rserver gained ``--www-socket`` late);
    asking the installed program lets an app use what it has and fall back cleanly,
    instead of failing on an "unrecognised option". A flag counts only as a whole word
    (``--www-socket`` is not found in ``--www-socket-mode``).
    """
    try:
        done = run_program(executable, help_args, setup, env)
        text = done.stdout + done.stderr
    except (OSError, subprocess.TimeoutExpired) as err:
        return frozenset(), f"running {executable} {' '.join(help_args)} failed: {err}"
    found = frozenset(
        flag for flag in flags if re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)
    )
    return found, text


#: The second line of pip's ``/bin/sh`` trampoline for interpreters with long paths.
_TRAMPOLINE = re.compile(r"""^'''exec' "?([^"]+?)"? "\$0" "\$@"$""")


def python_of(executable: str) -> str | None:
    """The Python interpreter that runs ``executable``: itself if it is one, else the
    interpreter named by its ``#!`` line (as pip writes console scripts, including the
    ``/bin/sh`` trampoline pip uses for long paths); None if it cannot be told.

    A site's ``module load TensorFlow`` brings a ``tensorboard`` whose Python differs
    from Jupyter's; code that must run inside that Python is started with this one.
    """
    if re.fullmatch(r"python[0-9.]*", os.path.basename(executable)):
        return executable
    try:
        with open(executable, "rb") as f:
            head = f.read(2048).decode(errors="replace").splitlines()
    except OSError:
        return None
    if not head or not head[0].startswith("#!"):
        return None
    words = head[0][2:].split()
    if not words:
        return None
    program = os.path.basename(words[0])
    if program == "env":
        names = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        found = shutil.which(names[0]) if names else None
        return found if found and "python" in os.path.basename(found) else None
    if "python" in program:
        return words[0]
    if program == "sh" and len(head) > 1 and (trampoline := _TRAMPOLINE.match(head[1])):
        return trampoline.group(1)
    return None
