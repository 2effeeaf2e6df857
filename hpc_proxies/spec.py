"""The declarative description of an app, and the per-start context it is built from.

An app module (``hpc_proxies/xpra`` …) only says what to run, what it needs, how the
browser reaches it and what secret it takes. Everything that every app needs
(runtime dir, secret files, lookup, lifecycle, pages) lives in the core and reads
these descriptions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Requirement:
    """An executable the app cannot start without, and how a user gets it."""

    executable: str
    install_hint: str


@dataclass(frozen=True)
class Launch:
    """Everything an app's command builder may use for one start of the app.

    ``app_dir`` is private (0700), made fresh for each start and removed when the
    app stops; the app's socket and secret file live in it.
    """

    name: str
    runtime_dir: Path
    app_dir: Path
    socket: Path
    secret_file: Path | None
    executables: dict[str, str]
    prefix: str


def _no_environment(launch: Launch) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class AppSpec:
    """What to run, what it needs, and how the browser reaches it.

    ``command`` returns the argv; it must never contain a secret (argv is
    world-readable in /proc): put secrets in ``launch.secret_file`` and pass its path.
    ``page_script``, if set, returns a ``<script>`` that is put into the app's HTML
    entry page (``html_paths``) by the Jupyter server, so the browser receives the
    secret without it ever being in a URL.
    """

    name: str
    title: str
    icon: str
    requires: tuple[Requirement, ...]
    command: Callable[[Launch], list[str]]
    environment: Callable[[Launch], dict[str, str]] = _no_environment
    prepare: Callable[[Launch], None] | None = None
    secret: bool = False
    page_script: Callable[[str], str] | None = None
    html_paths: tuple[str, ...] = ("/", "/index.html")
    ready_path: str = "/"
    timeout: float = 30.0
    stop_grace: float = 5.0
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)
