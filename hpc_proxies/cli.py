"""The ``hpc-proxies`` command: check and inspect the site configuration.

hpc-proxies status [--json]     what is in force here, per app, and the Slurm job it runs in
hpc-proxies check [FILE]        validate a file before deploying it (exit 0 or 1)
hpc-proxies example-config      a fully commented example covering every key
hpc-proxies install-kernel paraview [--user|--sys-prefix]   the "ParaView (pvpython)" kernel
hpc-proxies batchspawner-singleuser [--ip A] [--port-range L-H] CMD...   for batchspawner

and, for a user in a terminal, on their own running Jupyter server:

hpc-proxies ps [--json]                     the apps they started: state, memory, URL
hpc-proxies stop APP[/INSTANCE]             stop one (every process of it)
hpc-proxies restart APP[/INSTANCE]          new processes and secret, same URL
hpc-proxies logs APP[/INSTANCE] [-f]        its output (and follow it)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from . import config, netns, running, singleuser, slurmjob
from .apps import APP_MODULES, load_app
from .executables import MissingExecutables, app_env, requirements, resolve_app, version


def app_status(site: config.SiteConfig, name: str) -> dict:
    """Everything ``status`` says about one app, as plain data."""
    app = load_app(name)
    settings = site.for_app(name)
    env = app_env(settings.values)
    reqs = requirements(app, settings.values)
    main = reqs[0].executable if reqs else ""
    entry: dict = {
        "app": name,
        "title": settings["title"],
        "url": f"/{name}/",
        "enabled": site.error is None and settings.enabled,
        "disabled_by": site.disabled_reason(name),
        "settings": {k: v for k, v in settings.values.items()},
        "sources": dict(settings.sources),
        "executable": None,
        "missing": [],
        "version": None,
    }
    try:
        found = resolve_app(app, settings.values, env)
    except MissingExecutables as err:
        entry["missing"] = [m.requirement.executable for m in err.missing]
        found = {}
    if "isolate_network" in settings.values:
        reason = netns.unavailable_reason()
        entry["network_namespaces"] = "available" if reason is None else f"unavailable: {reason}"
    entry["executable"] = found.get(main)
    if entry["executable"] and app.version_args:
        entry["version"] = version(
            entry["executable"], app.version_args, str(settings["setup"]), env
        )
    return entry


def status_data(site: config.SiteConfig) -> dict:
    return {
        "files": [str(p) for p in site.files],
        "looked_for": [str(p) for p in config.default_config_files()],
        "config_variable": os.environ.get(config.ENV_CONFIG),
        "system": site.system,
        "system_reason": site.system_reason,
        "valid": site.error is None,
        "errors": site.error.problems if site.error else [],
        "apps": [app_status(site, name) for name in APP_MODULES],
        "slurm": slurm_status(),
    }


def slurm_status() -> dict | None:
    """The Slurm job this runs in, and what its process tracking lets escape (None
    outside a job)."""
    where = slurmjob.placement()
    return where.to_json() if where is not None else None


def print_status(data: dict) -> None:
    if data["config_variable"]:
        print(f"Configuration: {data['config_variable']} (from ${config.ENV_CONFIG})")
    elif data["files"]:
        print("Configuration files (later ones override earlier ones):")
        for path in data["files"]:
            print(f"  {path}")
    else:
        print("Configuration: no file found; looked for " + ", ".join(data["looked_for"]))
    if not data["valid"]:
        print("\nThe configuration is INVALID, so every app is disabled:")
        for problem in data["errors"]:
            print(f"  {problem}")
    else:
        print(f"System: {data['system'] or '(none)'}: {data['system_reason']}")
    print_slurm(data["slurm"])
    for app in data["apps"]:
        state = "enabled" if app["enabled"] else f"DISABLED: {app['disabled_by']}"
        print(f"\n{app['app']}: {app['title']} at {app['url']}, {state}")
        exe = app["executable"] or "missing"
        if app["missing"]:
            exe = f"{exe} (not found: {', '.join(app['missing'])})"
        print(f"  executable: {exe}")
        if app["version"]:
            print(f"  version: {app['version']}")
        if "network_namespaces" in app:
            print(f"  private network namespaces here: {app['network_namespaces']}")
        for key, value in app["settings"].items():
            source = app["sources"].get(key, "default")
            print(f"  {key} = {json.dumps(value)}    [{source}]")


def print_slurm(job: dict | None) -> None:
    if job is None:
        print("Slurm: not inside a Slurm job")
        return
    step = f", step {job['step']}" if job["step"] else ""
    print(f"Slurm: job {job['job']}{step} on node {job['node']}")
    if job["proctrack"] is None:
        print(f"  process tracking: unknown ({job['proctrack_unknown_because']})")
    else:
        print(f"  process tracking: {job['proctrack']}")
    if job["warning"]:
        print(f"  WARNING: {job['warning']}")


def cmd_status(args: argparse.Namespace) -> int:
    site = config.load()
    data = status_data(site)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_status(data)
    return 0 if site.error is None else 1


def cmd_check(args: argparse.Namespace) -> int:
    if args.file:
        files = [Path(args.file)]
    elif os.environ.get(config.ENV_CONFIG):
        files = [Path(os.environ[config.ENV_CONFIG])]
    else:
        files = [p for p in config.default_config_files() if p.is_file()]
    if not files:
        print(
            "No configuration file to check; looked for: "
            + ", ".join(str(p) for p in config.default_config_files())
        )
        return 0
    site = config.load(files=files)
    if site.error is not None:
        for problem in site.error.problems:
            print(problem)
        print(f"\n{len(site.error.problems)} problem(s): fix them before deploying this file.")
        return 1
    names = ", ".join(str(p) for p in files)
    print(f"{names}: OK (system here: {site.system or 'none'}; {site.system_reason})")
    return 0


def cmd_example(args: argparse.Namespace) -> int:
    sys.stdout.write(config.example_config())
    return 0


def cmd_install_kernel(args: argparse.Namespace) -> int:
    from .paraview import kernel

    scope = "sys-prefix" if args.sys_prefix else "user"
    try:
        done = kernel.install(scope, python=args.python, setup=args.setup)
    except kernel.KernelInstallError as err:
        sys.stderr.write(f"hpc-proxies install-kernel paraview: {err}\n")
        return 1
    print(f"Installed the kernel {kernel.DISPLAY_NAME!r} in {done.kernel_dir}")
    print(f"  Python: {done.python} (ParaView {done.paraview_version}), venv {done.env_dir}")
    return 0


# ------------------------------------------------------------------- the user's apps
def _servers(args: argparse.Namespace) -> list[running.JupyterServer]:
    servers = running.own_servers()
    if args.server:
        wanted = args.server if args.server.endswith("/") else args.server + "/"
        mine = [s for s in servers if s.url == wanted]
        # Not one of ours: ask without a token (the server then refuses, saying so).
        return mine or [running.JupyterServer(wanted, os.environ.get("JUPYTER_TOKEN", ""), 0)]
    if not servers:
        raise running.ServerError(
            f"no running Jupyter server of yours was found (looked in {running.runtime_dir()}). "
            "Start JupyterLab first, or name one with --server URL."
        )
    return servers


def _human_bytes(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value / 2**20:.0f} MiB"


def _human_time(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _target_server(args: argparse.Namespace) -> running.JupyterServer:
    """The server that runs APP/INSTANCE (the newest of the caller's, if none does)."""
    servers = _servers(args)
    app, instance = running.parse_target(args.target)
    if len(servers) > 1:
        for server in servers:
            listed = running.call(server, "GET", "instances")["instances"]
            if any(
                i["app"] == app and i["instance"] == instance and i["state"] != "stopped"
                for i in listed
            ):
                return server
    return servers[0]


def cmd_batchspawner_singleuser(args: argparse.Namespace) -> int:
    """batchspawner's wrapper of jupyterhub-singleuser, on a chosen address and port."""
    try:
        ports = singleuser.parse_port_range(args.port_range) if args.port_range else None
        program, argv = singleuser.resolve_command(args.command, os.environ)
        env, port = singleuser.prepare(os.environ, args.ip, ports)
        where = urlsplit(env["JUPYTERHUB_SERVICE_URL"]).netloc
        print(f"hpc-proxies: {argv[0]} listens on {where} (the hub was told port {port})")
        singleuser.exec_command(program, argv, env)
    except singleuser.SingleuserError as err:
        print(f"hpc-proxies batchspawner-singleuser: {err}", file=sys.stderr)
        return 1
    return 0  # not reached: exec_command replaced this process


def cmd_ps(args: argparse.Namespace) -> int:
    rows = []
    for server in _servers(args):
        data = running.call(server, "GET", "instances")
        for item in data["instances"]:
            rows.append({"server": server.url, **item})
        if data.get("job"):
            job = data["job"]
            print(f"{server.url}: Slurm job {job['id']}, {_human_time(job['remaining'])} left")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("APP/INSTANCE", "STATE", "UPTIME", "MEMORY", "PIDS", "URL", "LAST EXIT")
    table = [header]
    for item in rows:
        if item["state"] == "stopped" and not item["last_exit"]:
            continue  # never started
        last = item["last_exit"]["description"] if item["last_exit"] else ""
        table.append(
            (
                f"{item['app']}/{item['instance']}",
                item["state"],
                _human_time(item["uptime"]),
                _human_bytes(item["memory"]),
                str(len(item["pids"])),
                urljoin(item["server"], item["url"]),
                last,
            )
        )
    if len(table) == 1:
        print("No app is running.")
        return 0
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    app, instance = running.parse_target(args.target)
    server = _target_server(args)
    before = running.call(server, "GET", running.instance_path(app, instance))
    if before["state"] == "stopped":
        print(f"{before['title']} ({app}/{instance}) is not running.")
        return 0
    running.call(server, "POST", running.instance_path(app, instance) + "/stop")
    print(f"Stopped {before['title']} ({app}/{instance}): {len(before['pids'])} processes.")
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    app, instance = running.parse_target(args.target)
    server = _target_server(args)
    after = running.call(server, "POST", running.instance_path(app, instance) + "/restart")
    print(f"Restarting {after['title']} ({app}/{instance}) at {after['url']}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    app, instance = running.parse_target(args.target)
    server = _target_server(args)
    if not args.follow:
        data = running.call(server, "GET", running.instance_path(app, instance) + "/log")
        for line in data["lines"]:
            print(line["text"])
        return 0
    try:
        for line in running.follow_log(server, app, instance):
            print(line["text"], flush=True)
    except KeyboardInterrupt:
        return 0
    return 0


def _user_command(func):
    """Run a command on the user's servers; their refusals are messages, not tracebacks."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except running.ServerError as err:
            sys.stderr.write(f"hpc-proxies {args.command}: {err}\n")
            return 1

    return run


def build_parser() -> argparse.ArgumentParser:
    """The command line; the docs' CLI reference is generated from it."""
    parser = argparse.ArgumentParser(
        prog="hpc-proxies",
        description="Check the hpc-proxies site configuration, and manage the apps you started.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser(
        "status", help="show the configuration in force here, per app, and the Slurm job it runs in"
    )
    status.add_argument("--json", action="store_true", help="the same, as JSON")
    status.set_defaults(func=cmd_status)
    check = sub.add_parser("check", help="validate a configuration file (exit 0 or 1)")
    check.add_argument("file", nargs="?", help="the file (default: the files in force)")
    check.set_defaults(func=cmd_check)
    example = sub.add_parser("example-config", help="print a commented example of every key")
    example.set_defaults(func=cmd_example)
    kernel = sub.add_parser("install-kernel", help="install a Jupyter kernel for an app")
    kernel.add_argument("app", choices=["paraview"], help="the app whose kernel to install")
    where = kernel.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="for this user (the default)")
    where.add_argument(
        "--sys-prefix",
        action="store_true",
        help="in the prefix of the Python that runs hpc-proxies (its venv)",
    )
    kernel.add_argument(
        "--python", help="a Python that imports ParaView (default: [apps.paraview] executable)"
    )
    kernel.add_argument(
        "--setup", help="shell run before the kernel (default: [apps.paraview] setup)"
    )
    kernel.set_defaults(func=cmd_install_kernel)
    wrapper = sub.add_parser(
        "batchspawner-singleuser",
        help="for batchspawner: start the user's server on one address, in a port range",
        description="Set as batchspawner's batchspawner_singleuser_cmd: picks a free port "
        "(in --port-range), tells the hub, and starts COMMAND (jupyterhub-singleuser, "
        "which batchspawner appends) listening on --ip only.",
    )
    wrapper.add_argument(
        "--ip",
        help="the address to listen on: the one the hub connects to "
        "(default: what this node's host name resolves to)",
    )
    wrapper.add_argument(
        "--port-range", metavar="LOW-HIGH", help="choose the port here (default: any free port)"
    )
    wrapper.add_argument("command", nargs=argparse.REMAINDER, help="the server's command")
    wrapper.set_defaults(func=cmd_batchspawner_singleuser)

    def user_command(name: str, func, help: str, target: str = "") -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help)
        if target:
            command.add_argument("target", metavar="APP[/INSTANCE]", help=target)
        command.add_argument(
            "--server", help="the Jupyter server's URL (default: your running one)"
        )
        command.set_defaults(func=_user_command(func))
        return command

    ps = user_command("ps", cmd_ps, "list the apps you started in your Jupyter server")
    ps.add_argument("--json", action="store_true", help="the same, as JSON")
    instance = "(e.g. xpra, or xpra/2 for its instance '2')"
    user_command(
        "stop",
        cmd_stop,
        "stop an app you started (every process of it)",
        f"the app to stop {instance}",
    )
    user_command(
        "restart",
        cmd_restart,
        "restart an app you started (new processes)",
        f"the app to restart {instance}",
    )
    logs = user_command(
        "logs",
        cmd_logs,
        "show the output of an app you started",
        f"the app whose output to show {instance}",
    )
    logs.add_argument("-f", "--follow", action="store_true", help="keep showing new lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
