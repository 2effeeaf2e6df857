"""The declarative description of an app, and the per-start context it is built from.

An app module (``hpc_proxies/xpra`` …) only says what to run, what it needs, how the
browser reaches it and what secret it takes. Everything that every app needs
(runtime dir, secret files, lookup, lifecycle, pages) lives in the core and reads
these descriptions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .problems import CannotStart, Problem

__all__ = [
    "SCREEN_SIZE",
    "AppSpec",
    "CannotStart",
    "Flag",
    "Launch",
    "Parameter",
    "Problem",
    "Requirement",
    "Setting",
    "WebBridge",
    "glx_setting",
]


@dataclass(frozen=True)
class Requirement:
    """An executable (or, with ``is_file``, a data file) the app cannot start without,
    and how a user gets it."""

    executable: str
    install_hint: str
    is_file: bool = False


Requirements = tuple[Requirement, ...]


@dataclass(frozen=True)
class Flag:
    """A command-line option of the app's main program, used only if the installed
    program lists it in its help output, so older versions still start. A ``required``
    flag (its text says why it is needed and how to get it) stops the start instead."""

    name: str
    required: str = ""


@dataclass(frozen=True)
class Parameter:
    """A value the user chooses in the app's URL (``/app/?name=value``), e.g. which
    directory TensorBoard shows: a new value relaunches the app with it. The core decides
    who may do that, for every parameter: a request that may come from another web site
    gets a page that asks first ("Open <title> on <value>?", with ``label``), so a link
    cannot restart the app (``launcher.request_origin``).

    ``default(settings)`` is used when no URL has chosen one; ``resolve(value)`` turns a
    value into the one the app gets, or raises ``ValueError`` with a message for the
    user (it runs in the launcher, as the user, before anything starts).
    """

    name: str
    label: str
    default: Callable[[Mapping[str, object]], str]
    resolve: Callable[[str], str]


#: ``Setting.pattern`` of a screen size, e.g. a desktop's.
SCREEN_SIZE = (r"[1-9][0-9]{2,4}x[1-9][0-9]{2,4}", "WIDTHxHEIGHT, e.g. '2560x1600'")


@dataclass(frozen=True)
class Setting:
    """One key of the site configuration, declared with its type, default and help."""

    name: str
    type: type
    default: object
    help: str
    choices: tuple[object, ...] | None = None
    example: object = None
    minimum: int | None = None
    #: For a string: a regular expression the whole value must match, and what it
    #: means in words (for messages and the reference), e.g. (r"\d+x\d+", "WIDTHxHEIGHT").
    pattern: tuple[str, str] | None = None
    #: A check of the value beyond its type: None if it is fine, else the problem in
    #: words (``hpc-proxies check`` prints it under the key's path).
    check: Callable[[object], str | None] | None = None


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
    settings: Mapping[str, object] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()

    @property
    def xauthority(self) -> Path:
        return self.app_dir / "Xauthority"

    def more_secret(self, name: str) -> Path:
        """The 0600 file of one of the app's ``more_secrets`` (made before ``prepare``)."""
        return self.app_dir / name

    @property
    def executable(self) -> str:
        """The app's main program, resolved (the site may have put another in its place)."""
        return next(iter(self.executables.values()))

    def supports(self, flag: str) -> bool:
        """Whether the installed main program lists ``flag`` (see ``AppSpec.flags``)."""
        return flag in self.flags


def glx_setting(desktop: str, with_glx: int, without: int) -> Setting:
    """A desktop's ``glx`` key: OpenGL in its X server (on by default, so OpenGL programs
    run), with what the X server costs either way (MiB of PSS, one desktop alone)."""
    return Setting(
        "glx",
        bool,
        True,
        "OpenGL (GLX) in the desktop, rendered in software (Mesa's llvmpipe). Set it to "
        f"false where no one runs OpenGL programs in {desktop}: the X server then takes "
        f"about {without} MiB instead of {with_glx} (PSS, one desktop alone).",
    )


@dataclass(frozen=True)
class WebBridge:
    """What the launcher serves in front of an app that speaks a raw protocol (a VNC
    server's RFB): the web client's files (``web_dir``, entered at ``index`` with
    ``query``) and the socket its websocket is joined to (``target``)."""

    target: Path
    web_dir: Path
    index: str
    query: str = ""


def _no_environment(launch: Launch) -> dict[str, str]:
    return {}


def _no_more_secrets(settings: Mapping[str, object]) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class AppSpec:
    """What to run, what it needs, and how the browser reaches it.

    ``command`` returns the argv; it must never contain a secret (argv is
    world-readable in /proc): put secrets in ``launch.secret_file`` and pass its path.
    ``requires`` may depend on the app's settings (a callable), the first entry being
    the app's main program. ``page_script``, if set, returns a ``<script>`` that the
    Jupyter server puts into the app's HTML entry page (``html_paths``), so the browser
    receives the secret without it ever being in a URL: it gets the launch secret and
    ``{name: value}`` of the app's ``more_secrets``, the names of further per-launch
    secrets its settings call for (each a new 0600 file ``launch.more_secret(name)``,
    from :mod:`secrets`, e.g. Xpra's AES key). ``settings`` declares the
    app's own site-configuration keys. ``x_display`` apps run an X server: each start
    gets a private X authority file with a fresh cookie (``launch.xauthority``, in
    ``XAUTHORITY``; an entry for any display number, so it can be written before the
    server takes one): the X server's ``-auth``, so no other user can open the display.
    ``companions`` are more processes started beside the main one, without ``setup``.
    ``bridge``, for an app that speaks a raw protocol (a VNC server), says what the
    launcher serves on ``socket`` in front of it: the web client's files and a websocket
    joined to the app's own socket (:mod:`hpc_proxies.bridge`). The app is ready when
    ``socket`` answers HTTP and each of ``ready_banners`` greets.

    ``flags`` are looked up in the main program's ``help_args`` output at each start
    (``launch.flags`` holds those it has); ``parameters`` are chosen per request in the
    URL (``launch.params`` holds their resolved values). ``absolute_url`` sends the app
    the full public path (for apps told their prefix, like TensorBoard's
    ``--path_prefix``); ``fix_redirect_host`` rewrites redirects to another host or port
    (an app that believes it runs on ``localhost:8787``) to the host the browser used.
    """

    name: str
    title: str
    icon: str
    requires: tuple[Requirement, ...] | Callable[[Mapping[str, object]], Requirements]
    command: Callable[[Launch], list[str]]
    environment: Callable[[Launch], dict[str, str]] = _no_environment
    prepare: Callable[[Launch], None] | None = None
    secret: bool = False
    secret_bytes: int = 24
    x_display: bool = False
    page_script: Callable[[str, Mapping[str, str]], str] | None = None
    more_secrets: Callable[[Mapping[str, object]], tuple[str, ...]] = _no_more_secrets
    html_paths: tuple[str, ...] = ("/", "/index.html")
    ready_path: str = "/"
    timeout: float = 30.0
    #: How many instances a user may run at once unless the site says otherwise.
    max_instances: int = 3
    stop_grace: float = 5.0
    description: str = ""
    settings: tuple[Setting, ...] = ()
    version_args: tuple[str, ...] | None = None
    companions: Callable[[Launch], list[list[str]]] | None = None
    bridge: Callable[[Launch], WebBridge] | None = None
    ready_banners: Callable[[Launch], list[tuple[Path, bytes]]] | None = None
    flags: tuple[Flag, ...] = ()
    help_args: tuple[str, ...] = ("--help",)
    parameters: tuple[Parameter, ...] = ()
    absolute_url: bool = False
    fix_redirect_host: bool = False
    #: The app sends validators (``Last-Modified``) with its files but never answers a
    #: revalidation with 304 itself (Xpra 3.1): the Jupyter server does, when the file
    #: is unchanged, so a reload costs a request per file, not the file.
    answer_unchanged: bool = False

    def requirements(self, settings: Mapping[str, object]) -> tuple[Requirement, ...]:
        """What must be installed, for these settings (the session program may vary)."""
        return self.requires(settings) if callable(self.requires) else self.requires
