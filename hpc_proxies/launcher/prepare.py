"""What one start of an app needs before its processes run: its files and environment.

The benchmarks' direct path uses :func:`prepare_start` too, so both paths start the
same app the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path

from ..executables import app_env, resolve_app, supported_flags
from ..layout import APP_SOCKET, LaunchLayout
from ..problems import CannotStart
from ..runtime import fresh_private_dir, write_secret
from ..spec import AppSpec, Launch
from ..xdisplay import write_xauthority
from . import failures
from .params import ParameterChoices


def prepare_start(
    app: AppSpec,
    runtime_dir: Path,
    app_dir: Path,
    prefix: str,
    settings: Mapping[str, object],
    executables: dict[str, str],
    params: Mapping[str, str] | None = None,
    flags: frozenset[str] = frozenset(),
) -> Launch:
    """Everything one start of ``app`` needs, in a fresh private ``app_dir``: the
    secret, the X authority file, the app's own files. Without ``params`` the app's
    defaults are used (a bad one raises ValueError)."""
    if params is None:
        params = {p.name: p.resolve(p.default(settings)) for p in app.parameters}
    fresh_private_dir(app_dir)
    launch = Launch(
        name=app.name,
        runtime_dir=runtime_dir,
        app_dir=app_dir,
        socket=app_dir / APP_SOCKET,
        secret_file=write_secret(app_dir, nbytes=app.secret_bytes) if app.secret else None,
        executables=executables,
        prefix=prefix,
        settings=settings,
        params=params,
        flags=flags,
    )
    for name in app.more_secrets(settings):
        write_secret(app_dir, name)
    if app.x_display:
        write_xauthority(launch.xauthority)
    if app.prepare is not None:
        app.prepare(launch)
    return launch


def start_env(app: AppSpec, launch: Launch, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus what the start adds: the private X authority, the app's variables."""
    env = dict(env)
    if app.x_display:
        env["XAUTHORITY"] = str(launch.xauthority)
    env.update(app.environment(launch))
    return env


async def probe_flags(
    app: AppSpec,
    executables: dict[str, str],
    setup: str,
    env: dict[str, str],
    log: Callable[[str], None],
) -> frozenset[str]:
    """Which of the app's flags its installed program lists in its help; CannotStart if
    a required one is missing (never a start that fails on an unknown option)."""
    if not app.flags:
        return frozenset()
    main = next(iter(executables.values()))
    names = [flag.name for flag in app.flags]
    found, text = await asyncio.to_thread(supported_flags, main, names, app.help_args, setup, env)
    missing = [flag for flag in app.flags if flag.required and flag.name not in found]
    if missing:
        asked = " ".join([main, *app.help_args])
        raise CannotStart(failures.missing_flags(asked, missing, text))
    omitted = [name for name in names if name not in found]
    if omitted:
        log(f"{main} does not list {', '.join(omitted)}: starting without them")
    return found


async def prepare_run(
    app: AppSpec,
    settings: Mapping[str, object],
    layout: LaunchLayout,
    prefix: str,
    choices: ParameterChoices,
    log: Callable[[str], None],
) -> tuple[Launch, dict[str, str]]:
    """One start's programs (after the site's setup snippet), URL parameters and flags,
    then its private files; the Launch and the environment to run it with. Raises
    MissingExecutables or CannotStart."""
    env = app_env(settings)
    executables = await asyncio.to_thread(resolve_app, app, settings, env)
    params = await choices.for_start()
    flags = await probe_flags(app, executables, str(settings["setup"]), env, log)
    launch = prepare_start(
        app,
        layout.runtime_dir,
        layout.app_dir,
        prefix,
        settings,
        executables,
        params=params,
        flags=flags,
    )
    return launch, start_env(app, launch, env)
