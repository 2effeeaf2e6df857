"""Unit tests of the shared core: modes, secrets, dict validation, lookup and pages."""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from aiohttp import web
from supervisor import get, launcher_for, serving, until_failed
from waiting import until_async

from hpc_proxies import config, pages
from hpc_proxies.executables import MissingExecutables, resolve
from hpc_proxies.jupyter.serverproxy import (
    InvalidServerProcess,
    inject_into_head,
    server_process,
    template_literal,
    validate_server_process,
)
from hpc_proxies.launcher import prepare_start, start_env
from hpc_proxies.launcher import web as launcher_web
from hpc_proxies.launcher.handover import OwnedListener
from hpc_proxies.runtime import (
    UnsafeRuntimeDir,
    ensure_private_dir,
    read_secret,
    write_private_file,
    write_secret,
)
from hpc_proxies.spec import AppSpec, Launch, Requirement
from hpc_proxies.xpra import APP as XPRA


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_private_dir_is_created_0700(tmp_path):
    d = ensure_private_dir(tmp_path / "run")
    assert mode(d) == 0o700
    assert os.lstat(d).st_uid == os.getuid()


def test_private_dir_refuses_a_group_readable_dir(tmp_path):
    d = tmp_path / "open"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    with pytest.raises(UnsafeRuntimeDir, match="0700"):
        ensure_private_dir(d)


def test_private_dir_refuses_a_symlink(tmp_path):
    target = ensure_private_dir(tmp_path / "target")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(UnsafeRuntimeDir, match="not a directory"):
        ensure_private_dir(link)


def test_secret_file_is_0600_without_newline(tmp_path):
    path = write_secret(tmp_path)
    assert mode(path) == 0o600
    raw = path.read_bytes()
    assert not raw.endswith(b"\n")
    assert len(raw) >= 32
    assert read_secret(path) == raw.decode()
    assert write_secret(tmp_path, "other").read_bytes() != raw


def test_private_file_never_reuses_or_follows_a_path(tmp_path):
    (tmp_path / "elsewhere").write_text("keep")
    (tmp_path / "planted").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        write_private_file(tmp_path / "planted", "secret")
    assert (tmp_path / "elsewhere").read_text() == "keep"


def test_typo_in_server_dict_is_rejected_with_a_hint():
    with pytest.raises(InvalidServerProcess, match=r"'comand' \(did you mean 'command'\?\)"):
        validate_server_process("x", {"comand": ["x"], "unix_socket": True})
    with pytest.raises(InvalidServerProcess, match=r"launcher_entry\.'titel'"):
        validate_server_process("x", {"command": ["x"], "launcher_entry": {"titel": "X"}})


def test_xpra_server_dict_is_valid_and_has_its_tile():
    server = server_process(XPRA, config.load(env={}, files=[]))
    assert validate_server_process("xpra", server) is server
    assert server["unix_socket"] is True
    assert server["launcher_entry"]["title"] == "Xpra Desktop"
    icon = Path(server["launcher_entry"]["icon_path"])
    assert icon.name == "xpra.svg" and icon.read_text().lstrip().startswith("<svg")


def test_launcher_argv_survives_jupyter_server_proxys_templating(tmp_path):
    server = server_process(XPRA, config.load(env={}, files=[]))
    sock = str(tmp_path / "we{ird}" / "socket")
    argv = server["command"](unix_socket=sock, base_url="/user/a{b}/")
    rendered = [arg.format(port=0, unix_socket="", base_url="") for arg in argv]
    assert rendered[rendered.index("--socket") + 1] == sock
    assert rendered[rendered.index("--prefix") + 1] == "/user/a{b}/xpra/"


def test_xpra_argv_names_the_secret_file_but_never_the_secret(tmp_path):
    app_dir = ensure_private_dir(tmp_path / "app")
    secret_file = write_secret(app_dir)
    launch = Launch(
        name="xpra",
        runtime_dir=tmp_path,
        app_dir=app_dir,
        socket=app_dir / "app.sock",
        secret_file=secret_file,
        executables={"xpra": "/usr/bin/xpra", "Xvfb": "/usr/bin/Xvfb", "xterm": "/usr/bin/xterm"},
        prefix="/xpra/",
    )
    argv = XPRA.command(launch)
    env = XPRA.environment(launch)
    secret = read_secret(secret_file)
    assert not any(secret in arg for arg in argv + list(env.values()))
    assert f"--auth=file,filename={secret_file}" in argv
    assert f"--bind={launch.socket}" in argv
    assert not any(arg.startswith(("--bind-tcp=", "--bind-ws=")) for arg in argv)


def test_template_literal_doubles_braces():
    assert template_literal("a{b}c") == "a{{b}}c"
    assert template_literal("a{b}c").format() == "a{b}c"


def test_secret_goes_into_head_even_when_gzipped():
    html = b"<!DOCTYPE html><html><HEAD><title>x</title></HEAD><body></body></html>"
    out = inject_into_head(gzip.compress(html), "gzip", "<script>s()</script>")
    assert out == html.replace(b"<HEAD>", b"<HEAD><script>s()</script>")
    assert inject_into_head(html, "br", "<script></script>") is None


def test_missing_executable_is_named_with_its_install_hint():
    reqs = (Requirement("sh", "always there"), Requirement("no-such-tool-hpc", "apt install x"))
    with pytest.raises(MissingExecutables) as err:
        resolve(reqs)
    assert [m.requirement.executable for m in err.value.missing] == ["no-such-tool-hpc"]


def _app(requires, command=lambda launch: ["true"]) -> AppSpec:
    return AppSpec(name="demo", title="Demo App", icon="", requires=requires, command=command)


async def test_missing_executable_gives_a_readable_page(tmp_path):
    app = _app((Requirement("no-such-tool-hpc", "on Debian: apt install no-such-tool"),))
    launcher = launcher_for(app, tmp_path / "run")
    gate = tmp_path / "gate"
    gate.touch()  # the site's setup snippet waits while it exists: the lookup is under way
    launcher.settings.values["setup"] = f"while [ -e {gate} ]; do sleep 0.02; done"
    async with serving(launcher):
        assert launcher.state == "starting"  # the progress page shows while programs are looked up
        assert (await get(launcher.layout.socket))[
            0
        ] == 202  # Accepted: not an error in Jupyter's log
        gate.unlink()
        await until_failed(launcher)
        status, headers, html = await get(launcher.layout.socket)
        assert status == 503 and headers["Content-Type"].startswith("text/html")
        assert "Demo App is not installed here" in html
        assert "<code>no-such-tool-hpc</code>" in html
        assert "apt install no-such-tool" in html
        assert "Traceback" not in html
        # Shown once; the next request tries again (and fails again, readably).
        assert launcher.state == "stopped"


async def test_failure_page_escapes_app_output(tmp_path):
    app = _app((Requirement("sh", ""),), lambda launch: ["sh", "-c", "echo '<script>x</script>'"])
    async with serving(launcher_for(app, tmp_path / "run")) as launcher:
        await until_failed(launcher)
        status, _, html = await get(launcher.layout.socket)
    assert status == 502
    assert "Demo App stopped during start-up" in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html
    assert "<script>x</script>" not in html


async def test_a_runaway_output_line_is_cut_in_the_log(tmp_path, capfd):
    """An app that prints a 100 kB line: the Jupyter log (the launcher's stderr) gets its
    start and its length, not the whole line."""
    from hpc_proxies.launcher import LOG_LINE_MAX

    app = _app((Requirement("sh", ""),), lambda launch: ["sh", "-c", "printf '%0100000d'"])
    async with serving(launcher_for(app, tmp_path / "run")) as launcher:
        await until_failed(launcher)
    logged = [line for line in capfd.readouterr().err.splitlines() if "000000" in line]
    assert logged, "the app's output line is not in the log at all"
    assert all(len(line) < LOG_LINE_MAX + 100 for line in logged), [len(x) for x in logged]
    assert "(100000 characters in all)" in logged[0]


def test_progress_page_reloads_into_the_app():
    html = pages.progress_page("Xpra Desktop", 1.5, 60, ["line <1>"])
    assert "Starting Xpra Desktop" in html
    assert pages.PROBE_HEADER in html and pages.STATE_HEADER in html
    assert "location.reload()" in html
    assert "line &lt;1&gt;" in html


def test_x_display_apps_get_a_private_xauthority_with_a_fresh_cookie(tmp_path):
    """One entry for any display (libXau's FAMILY_WILD, no number) with a 128-bit
    MIT-MAGIC-COOKIE-1, new at every start."""
    app = AppSpec(
        name="demo", title="Demo", icon="", requires=(), command=lambda launch: [], x_display=True
    )
    launch = prepare_start(app, tmp_path, tmp_path / "app", "/demo/", {}, {})
    assert mode(launch.app_dir) == 0o700 and mode(launch.xauthority) == 0o600
    entry = launch.xauthority.read_bytes()
    assert entry.startswith(b"\xff\xff") and b"MIT-MAGIC-COOKIE-1\x00\x10" in entry
    cookie = entry.split(b"MIT-MAGIC-COOKIE-1\x00\x10")[1]
    assert len(cookie) == 16
    again = prepare_start(app, tmp_path, tmp_path / "app", "/demo/", {}, {})
    assert again.xauthority.read_bytes().split(b"\x00\x10")[-1] != cookie
    env = start_env(app, launch, {"XAUTHORITY": "/home/someone/.Xauthority", "A": "1"})
    assert env == {"XAUTHORITY": str(launch.xauthority), "A": "1"}
    plain = AppSpec(name="p", title="P", icon="", requires=(), command=lambda launch: [])
    plain_launch = prepare_start(plain, tmp_path, tmp_path / "plain", "/p/", {}, {})
    assert not plain_launch.xauthority.exists()
    assert start_env(plain, plain_launch, {"A": "1"}) == {"A": "1"}


async def test_a_failing_preparation_step_gives_a_readable_page(tmp_path):
    """E.g. ``vncpasswd`` failing: a page, not a launcher stuck in 'starting'."""

    def prepare(launch):
        subprocess.run(["sh", "-c", "exit 4"], check=True)

    app = AppSpec(
        name="demo",
        title="Demo App",
        icon="",
        requires=(Requirement("sh", ""),),
        command=lambda launch: ["sh", "-c", "sleep 30"],
        prepare=prepare,
    )
    async with serving(launcher_for(app, tmp_path / "run")) as launcher:
        await until_failed(launcher)
        status, _, html = await get(launcher.layout.socket)
        assert status == 502
        assert "Demo App could not be started" in html
        assert "returned non-zero exit status 4" in html
        await until_async(
            lambda: not (tmp_path / "run" / "app").exists(), 10, "the start's files are removed"
        )


async def test_connections_queued_at_the_hand_over_are_answered(tmp_path):
    """When the launcher hands its socket's path to the app, requests that already
    reached the launcher still get an answer (they used to hang, unanswered, when the
    hand-over closed the listener while it was accepting)."""
    launcher = launcher_for(XPRA, tmp_path / "run", "/xpra/")
    runner = web.AppRunner(launcher_web.page_app(launcher))
    await runner.setup()
    listener = OwnedListener(launcher.layout.socket, runner.server, launcher.log)
    listener.listen()
    clients = []
    for _ in range(5):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(launcher.layout.socket))  # queued: the loop has not accepted yet
        probe = f"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{pages.PROBE_HEADER}: 1\r\n"
        client.sendall(f"{probe}\r\n".encode())
        clients.append(client)
    listener.stop_listening()
    for client in clients:
        reader, writer = await asyncio.open_unix_connection(sock=client)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b'"app": "xpra"' in answer
    assert launcher.state == "stopped", "a probe starts nothing"
    await runner.cleanup()
