"""The site configuration: one TOML file that enables and tunes every app per HPC system.

An HPC centre installs one software stack on several systems (login nodes, compute
partitions of different clusters). Admins describe per-app defaults in
``[apps.<app>]`` and per-system overrides in ``[systems.<name>.apps.<app>]``; the
system is chosen by ``HPC_PROXIES_SYSTEM`` or by hostname globs.

A broken file fails closed and loudly: every app is disabled and every app's page
shows the error, naming the file, the line (syntax errors) and the key path.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .apps import APP_MODULES, load_app
from .spec import AppSpec, Setting

ENV_CONFIG = "HPC_PROXIES_CONFIG"
ENV_SYSTEM = "HPC_PROXIES_SYSTEM"
SYSTEM_CONFIG = Path("/etc/hpc-proxies/config.toml")


def default_config_files() -> list[Path]:
    """Candidate files, lowest precedence first: the software stack's, then the node's."""
    return [Path(sys.prefix) / "etc" / "hpc-proxies" / "config.toml", SYSTEM_CONFIG]


#: The launcher's section for hpc-proxies' tiles, unless the site names another.
LAUNCHER_CATEGORY = "HPC apps"
#: Keys every app understands. App-specific keys are declared by each AppSpec.
COMMON_SETTINGS: tuple[Setting, ...] = (
    Setting("enabled", bool, True, "Show the app's tile and allow it to start on this system."),
    Setting(
        "executable",
        str,
        None,
        "Name (looked up on PATH, after `setup`) or absolute path of the app's main "
        "program. Default: the app's usual program name.",
        example="/opt/xpra/bin/xpra",
    ),
    Setting(
        "timeout",
        float,
        None,
        "Seconds the app may take to start answering before it is stopped and the "
        "user is shown why. Default: the app's own (Xpra: 60).",
        example=120,
    ),
    Setting("title", str, None, "Launcher tile title. Default: the app's name.", example="Desktop"),
    Setting(
        "category",
        str,
        LAUNCHER_CATEGORY,
        "The JupyterLab launcher's section the tile is in (each category is a row of its "
        "own). Set it in [defaults] to rename hpc-proxies' section on a system.",
        example="JURECA apps",
    ),
    Setting(
        "max_instances",
        int,
        None,
        "How many instances of the app a user may run at once: the first at /<app>/, "
        "the others at /<app>@<instance>/. Default: the app's own (3 for the desktops "
        "and TensorBoard, 1 for ParaView and RStudio).",
        example=2,
        minimum=1,
    ),
    Setting(
        "idle_timeout",
        float,
        None,
        "Minutes an instance may go without a browser connection or HTTP request "
        "before it is stopped (its processes and files freed; the next visit starts it "
        "again). Fractions are allowed. Default: off.",
        example=120,
    ),
    Setting(
        "environment",
        dict,
        {},
        "Extra environment variables for the app (a table of strings). They are set "
        "before `setup` runs.",
        example={"LANG": "C.UTF-8"},
    ),
    Setting(
        "setup",
        str,
        "",
        "Shell (bash) snippet run before the app in the same shell, e.g. "
        "'module load xpra/5.0' or 'source /opt/site/env.sh'. The app then replaces the "
        "shell (exec), so stopping it works as usual; no secret passes through it. "
        "If `module` is not defined in non-login shells, source your module init first.",
        example="module load xpra/5.0",
    ),
)

SYSTEM_KEYS = {"match", "apps", "defaults", "description"}


class ConfigError(Exception):
    """The site configuration is invalid; ``problems`` says where and why."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class AppSettings:
    """One app's effective settings, and where each came from."""

    app: str
    values: dict[str, object]
    sources: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> object:
        return self.values[key]

    @property
    def enabled(self) -> bool:
        return bool(self.values["enabled"])


@dataclass
class SiteConfig:
    """The configuration in force: files read, the system selected, settings per app."""

    files: list[Path]
    system: str | None
    system_reason: str
    apps: dict[str, AppSettings]
    error: ConfigError | None = None

    def for_app(self, name: str) -> AppSettings:
        return self.apps[name]

    def disabled_reason(self, name: str) -> str | None:
        """Why ``name`` is off, for a page or the CLI; None if it is enabled."""
        if self.error is not None:
            return "the site configuration is invalid"
        settings = self.apps[name]
        if settings.enabled:
            return None
        where = f" on system {self.system!r}" if self.system else ""
        return f"disabled{where} by the site configuration ({settings.sources['enabled']})"


def settings_of(app: AppSpec) -> tuple[Setting, ...]:
    return COMMON_SETTINGS + app.settings


def app_defaults(app: AppSpec) -> dict[str, object]:
    values: dict[str, object] = {s.name: s.default for s in settings_of(app)}
    values["timeout"] = app.timeout
    values["max_instances"] = app.max_instances
    values["title"] = app.title
    values["environment"] = {}
    reqs = app.requirements(values)
    values["executable"] = reqs[0].executable if reqs else ""
    return values


# ------------------------------------------------------------------- validation
def _closest(word: str, options) -> str:
    match = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def type_description(setting: Setting) -> str:
    """What a value of ``setting`` must be, in words (for messages and the reference)."""
    names = {
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        str: "a string",
        dict: "a table of strings",
    }
    if setting.choices:
        return "one of " + ", ".join(repr(c) for c in setting.choices)
    if setting.minimum is not None:
        return f"{names[setting.type]} of at least {setting.minimum}"
    if setting.pattern is not None:
        return f"{names[setting.type]} of the form {setting.pattern[1]}"
    return names[setting.type]


def _check_value(setting: Setting, value: object, where: str) -> list[str]:
    ok: bool
    if setting.type is bool:
        ok = isinstance(value, bool)
    elif setting.type is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok and (setting.minimum is None or value >= setting.minimum)
    elif setting.type is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    elif setting.type is dict:
        ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    else:
        ok = isinstance(value, str)
        ok = ok and (setting.pattern is None or re.fullmatch(setting.pattern[0], value) is not None)
    if ok and setting.choices is not None:
        ok = value in setting.choices
    if ok and setting.check is not None:
        problem = setting.check(value)
        return [] if problem is None else [f"{where}: {problem}"]
    if ok:
        return []
    shown = repr(value) if not isinstance(value, dict) else "a table with non-string values"
    return [f"{where}: expected {type_description(setting)}, got {shown}"]


def _check_app_table(table: object, app: str, where: str) -> list[str]:
    if app not in APP_MODULES:
        return [
            f"{where}: unknown app {app!r}{_closest(app, APP_MODULES)}; apps are "
            + ", ".join(sorted(APP_MODULES))
        ]
    if not isinstance(table, dict):
        return [f"{where}: expected a table"]
    known = {s.name: s for s in settings_of(load_app(app))}
    problems = []
    for key, value in table.items():
        if key not in known:
            problems.append(f"{where}.{key}: unknown key{_closest(key, known)}")
        else:
            problems += _check_value(known[key], value, f"{where}.{key}")
    return problems


def _check_apps(apps: object, where: str) -> list[str]:
    if not isinstance(apps, dict):
        return [f"{where}: expected a table of apps"]
    problems = []
    for app, table in apps.items():
        problems += _check_app_table(table, app, f"{where}.{app}")
    return problems


def _check_defaults(table: object, where: str) -> list[str]:
    """``[defaults]``: keys every app understands, applied to every app."""
    if not isinstance(table, dict):
        return [f"{where}: expected a table"]
    known = {s.name: s for s in COMMON_SETTINGS}
    problems = []
    for key, value in table.items():
        if key not in known:
            hint = _closest(key, known) or "; [defaults] takes only keys every app has"
            problems.append(f"{where}.{key}: unknown key{hint}")
        else:
            problems += _check_value(known[key], value, f"{where}.{key}")
    return problems


def _check_match(match: object, where: str) -> list[str]:
    if (
        not isinstance(match, list)
        or not match
        or not all(isinstance(p, str) and p.strip() for p in match)
    ):
        return [f'{where}: expected a non-empty list of hostname globs, e.g. ["jrlogin*"]']
    return []


def validate(data: dict, path: Path) -> list[str]:
    """All problems of one parsed file, each naming the file and the key path."""
    problems = []
    for key, value in data.items():
        if key == "apps":
            problems += _check_apps(value, "apps")
        elif key == "defaults":
            problems += _check_defaults(value, "defaults")
        elif key == "systems":
            if not isinstance(value, dict):
                problems.append("systems: expected a table of systems")
                continue
            for name, system in value.items():
                where = f"systems.{name}"
                if not isinstance(system, dict):
                    problems.append(f"{where}: expected a table")
                    continue
                for skey in system:
                    if skey not in SYSTEM_KEYS:
                        problems.append(f"{where}.{skey}: unknown key{_closest(skey, SYSTEM_KEYS)}")
                if "match" in system:
                    problems += _check_match(system["match"], f"{where}.match")
                if "description" in system and not isinstance(system["description"], str):
                    problems.append(f"{where}.description: expected a string")
                if "apps" in system:
                    problems += _check_apps(system["apps"], f"{where}.apps")
                if "defaults" in system:
                    problems += _check_defaults(system["defaults"], f"{where}.defaults")
        else:
            problems.append(
                f"{key}: unknown table{_closest(key, ['apps', 'defaults', 'systems'])}; "
                "the file has [defaults], [apps.<app>] and [systems.<name>] tables"
            )
    return [f"{path}: {p}" for p in problems]


def read_file(path: Path) -> dict:
    """Parse one TOML file; syntax errors become a ConfigError naming file and line."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        line = re.search(r"at line (\d+)", message)
        where = f"line {line.group(1)}: " if line else ""
        raise ConfigError([f"{path}: {where}TOML syntax error: {message}"]) from None
    except OSError as err:
        raise ConfigError([f"{path}: cannot be read: {err.strerror}"]) from None
    problems = validate(data, path)
    if problems:
        raise ConfigError(problems)
    return data


# ------------------------------------------------------------------- merging
def _merge(into: dict, data: dict, sources: dict, path: Path, prefix: str = "") -> None:
    """Deep-merge ``data`` into ``into``; later files override earlier ones key by key."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        sources[dotted] = f"{path}: {dotted}"
        if isinstance(value, dict):
            if not isinstance(into.get(key), dict):
                into[key] = {}
            _merge(into[key], value, sources, path, dotted + ".")
        else:
            into[key] = value


def select_system(systems: dict, env: Mapping[str, str], hostname: str) -> tuple[str | None, str]:
    """The system in force and why: by variable, by the first matching glob, or none."""
    if env.get(ENV_SYSTEM):
        name = env[ENV_SYSTEM]
        if name not in systems:
            known = ", ".join(systems) or "none"
            raise ConfigError(
                [f"{ENV_SYSTEM}={name} names no [systems.{name}] table (systems: {known})"]
            )
        return name, f"{ENV_SYSTEM}={name}"
    names = {hostname, hostname.split(".")[0]}
    for name, system in systems.items():
        for pattern in system.get("match", []):
            for host in sorted(names):
                if fnmatch.fnmatchcase(host, pattern):
                    return name, f"host name {host!r} matches {pattern!r} of systems.{name}"
    return None, f"no system matches host name {hostname!r}: only the [apps] defaults apply"


def load(
    env: Mapping[str, str] | None = None,
    hostname: str | None = None,
    files: list[Path] | None = None,
) -> SiteConfig:
    """Read, validate and merge the site configuration. Never raises: errors are kept in
    ``SiteConfig.error``, with every app disabled."""
    env = os.environ if env is None else env
    hostname = socket.gethostname() if hostname is None else hostname
    if files is None:
        if env.get(ENV_CONFIG):
            files = [Path(env[ENV_CONFIG])]
        else:
            files = [p for p in default_config_files() if p.is_file()]
    merged: dict = {}
    sources: dict[str, str] = {}
    system, reason = None, "no configuration file"
    try:
        for path in files:
            _merge(merged, read_file(path), sources, path)
        if files:
            system, reason = select_system(merged.get("systems", {}), env, hostname)
    except ConfigError as err:
        return SiteConfig(files, None, "", _all_disabled(), err)

    apps = {}
    for name in APP_MODULES:
        app = load_app(name)
        values = app_defaults(app)
        origin = {key: "default" for key in values}
        # Site-wide defaults first, then the app's own keys: an app's key always wins.
        chosen = merged["systems"][system] if system is not None else {}
        layers = [("defaults", merged.get("defaults", {}))]
        if system is not None:
            layers.append((f"systems.{system}.defaults", chosen.get("defaults", {})))
        layers.append((f"apps.{name}", merged.get("apps", {}).get(name, {})))
        if system is not None:
            layers.append((f"systems.{system}.apps.{name}", chosen.get("apps", {}).get(name, {})))
        for prefix, table in layers:
            for key, value in table.items():
                if key == "environment":
                    values[key] = {**values[key], **value}
                else:
                    values[key] = value
                origin[key] = sources.get(f"{prefix}.{key}", f"{prefix}.{key}")
        apps[name] = AppSettings(name, values, origin)
    return SiteConfig(files, system, reason, apps)


def _all_disabled() -> dict[str, AppSettings]:
    apps = {}
    for name in APP_MODULES:
        values = app_defaults(load_app(name))
        values["enabled"] = False
        apps[name] = AppSettings(name, values, {"enabled": "invalid configuration"})
    return apps


# ------------------------------------------------------------------- the example
def toml_value(value: object) -> str:
    """``value`` as TOML writes it (for the example and the reference)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def example_config() -> str:
    """A fully commented example covering every key, generated from the declarations."""
    import textwrap

    def comment(text: str) -> list[str]:
        return ["# " + line for line in textwrap.wrap(text, 86)]

    out = comment(
        "hpc-proxies site configuration. Files read (lowest precedence first): "
        f"{default_config_files()[0]}, then {SYSTEM_CONFIG}; or only the file named by "
        f"${ENV_CONFIG}. Later files override earlier ones key by key. Check a file with "
        "`hpc-proxies check FILE`; see the result with `hpc-proxies status`."
    )
    for name in APP_MODULES:
        app = load_app(name)
        out += ["", f"# ---- {app.title}, served under /{name}/: {app.description}"]
        out.append(f"[apps.{name}]")
        for setting in settings_of(app):
            default = app_defaults(app)[setting.name]
            out += comment(setting.help)
            out.append(f"# {setting.name} = {toml_value(setting.example or default)}")
    out += ["", "# ---- Defaults for every app (an app's own key above wins over these)"]
    out.append("[defaults]")
    for key in ("category", "idle_timeout", "max_instances"):
        setting = next(s for s in COMMON_SETTINGS if s.name == key)
        out.append(f"# {key} = {toml_value(setting.example)}")
    out += [""]
    out += comment(
        "Systems: the first whose `match` globs fit the host name (or the one named by "
        f"${ENV_SYSTEM}) overrides [defaults] with [systems.<name>.defaults] and "
        "[apps.<app>] with [systems.<name>.apps.<app>]."
    )
    out += [
        "[systems.example-cluster]",
        '# description = "Login nodes of the example cluster"',
        'match = ["exlogin*", "exlogin*.example.org"]',
        "",
        "[systems.example-cluster.apps.xpra]",
        'setup = "module load xpra"',
        "timeout = 90",
        "",
        "# [systems.example-gpu]",
        '# match = ["exgpu*"]',
        "# [systems.example-gpu.apps.xpra]",
        "# enabled = false",
    ]
    return "\n".join(out) + "\n"
