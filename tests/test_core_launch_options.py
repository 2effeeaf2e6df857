"""The core's per-launch options, with real processes and sockets: URL parameters that
relaunch an app (TensorBoard's ``?logdir=``), flags read from a program's ``--help``
(rserver's), programs found beside Jupyter's Python, the Python behind a console
script, directories named in a URL, and redirects to another host."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from supervisor import get, launcher_for, serving, until_failed
from tornado.httputil import HTTPHeaders
from waiting import until_async

from hpc_proxies import config, pages
from hpc_proxies.executables import python_of, resolve, supported_flags
from hpc_proxies.jupyter.serverproxy import ask_launcher, redirect_to_this_host, server_process
from hpc_proxies.launcher import CONTROL_SOCKET, MAY_RELAUNCH, request_origin
from hpc_proxies.rstudio import APP as RSTUDIO
from hpc_proxies.runtime import ensure_private_dir, existing_directory
from hpc_proxies.spec import AppSpec, Flag, Parameter, Requirement

# A tiny app: HTTP on the unix socket in argv[1], answering with its argv[2].
ECHO_APP = textwrap.dedent(
    """
    import socketserver, sys
    from http.server import BaseHTTPRequestHandler

    class H(BaseHTTPRequestHandler):
        def address_string(self):
            return "unix"
        def do_GET(self):
            body = ("value=" + sys.argv[2]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass

    socketserver.UnixStreamServer(sys.argv[1], H).serve_forever()
    """
)


# ---------------------------------------------------------------- flags from --help
def fake_program(path: Path, help_text: str) -> Path:
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{help_text}\nEOF\n")
    path.chmod(0o755)
    return path


def test_supported_flags_are_whole_words_from_help(tmp_path):
    prog = fake_program(
        tmp_path / "prog",
        "Usage: prog [options]\n  --www-socket-mode arg  the mode\n  --auth-none arg  no login",
    )
    found, text = supported_flags(str(prog), ["--www-socket", "--auth-none", "--www-root-path"])
    assert found == {"--auth-none"}, "--www-socket must not match --www-socket-mode"
    assert "Usage: prog" in text


def test_supported_flags_run_after_the_setup_snippet(tmp_path):
    fake_program(tmp_path / "prog", "  --www-socket arg")
    found, _ = supported_flags(
        "prog", ["--www-socket"], setup=f"export PATH={tmp_path}:$PATH", env=dict(os.environ)
    )
    assert found == {"--www-socket"}


def test_supported_flags_of_a_missing_program_is_empty_with_the_reason(tmp_path):
    found, text = supported_flags(str(tmp_path / "nothing"), ["--x"])
    assert found == frozenset() and "No such file" in text


# ---------------------------------------------------------------- lookup and Python
def test_programs_beside_jupyters_python_are_found_without_path():
    """``pip install 'hpc-proxies[tensorboard]'`` puts programs beside this Python, whose
    bin directory need not be on PATH (here: the hpc-proxies console script)."""
    found = resolve((Requirement("hpc-proxies", ""),), env={"PATH": "/usr/bin:/bin"})
    assert found == {"hpc-proxies": str(Path(sys.executable).parent / "hpc-proxies")}


def test_python_of_console_scripts(tmp_path):
    assert python_of("/usr/bin/python3.11") == "/usr/bin/python3.11"
    pip_script = tmp_path / "tool"
    pip_script.write_text("#!/opt/env/bin/python3.11\nimport sys\n")
    assert python_of(str(pip_script)) == "/opt/env/bin/python3.11"
    trampoline = tmp_path / "long"
    trampoline.write_text(
        "#!/bin/sh\n'''exec' \"/very/long path/bin/python\" \"$0\" \"$@\"\n' '''\nimport sys\n"
    )
    assert python_of(str(trampoline)) == "/very/long path/bin/python"
    env_script = tmp_path / "envtool"
    env_script.write_text("#!/usr/bin/env python3\n")
    assert python_of(str(env_script)) == shutil.which("python3")
    shell = tmp_path / "wrapper"
    shell.write_text("#!/bin/bash\nexec something\n")
    assert python_of(str(shell)) is None
    assert python_of("/bin/ls") is None
    assert python_of(str(tmp_path / "missing")) is None


# ---------------------------------------------------------------- directories in URLs
def test_existing_directory_resolves_safely(tmp_path, monkeypatch):
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "runs")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert existing_directory("runs/a", base=tmp_path) == tmp_path / "runs" / "a"
    assert existing_directory("~/runs") == tmp_path / "runs"
    assert existing_directory(f"  {tmp_path}/link/a ") == tmp_path / "runs" / "a"
    cases = {
        "nope": "nope does not exist",
        "file": "file is not a directory",
        "gs://bucket/runs": "remote storage",
        "runs\n/a": "control characters",
        "": "no directory was given",
    }
    for value, message in cases.items():
        with pytest.raises(ValueError, match=message):
            existing_directory(value, base=tmp_path)


# ---------------------------------------------------------------- redirects
def test_redirects_to_another_host_come_back_to_the_browsers_host():
    here = "hub.example.org"
    fixed = redirect_to_this_host("http://localhost:8787/user/a/rstudio/x?y=1#z", here)
    assert fixed == "//hub.example.org/user/a/rstudio/x?y=1#z"
    assert redirect_to_this_host("http://hub.example.org/x", here) is None
    assert redirect_to_this_host("/user/a/rstudio/x", here) is None
    assert redirect_to_this_host("x/y", here) is None


def test_the_redirect_rewrite_is_in_the_server_dict():
    """RStudio declares ``fix_redirect_host``: its server dict rewrites such redirects."""
    rewrite = server_process(RSTUDIO, config.load(env={}, files=[]))["rewrite_response"]
    response = SimpleNamespace(headers={"Location": "http://127.0.0.1:8787/rstudio/in"})
    rewrite(request=SimpleNamespace(host="127.0.0.1:9999"), response=response)
    assert response.headers["Location"] == "//127.0.0.1:9999/rstudio/in"


# ---------------------------------------------------------------- URL parameters
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}
#: Waits until the file in $0 exists, then runs the rest: a start that stays "starting"
#: for as long as a test wants.
GATE = 'while [ ! -e "$0" ]; do sleep 0.02; done; exec "$@"'


def demo_app(tmp_path: Path, gate: Path | None = None) -> AppSpec:
    """The echo app with a ``dir`` parameter; with ``gate``, each start waits for it."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()

    def command(launch):
        argv = [sys.executable, "-c", ECHO_APP, str(launch.socket), launch.params["dir"]]
        return ["sh", "-c", GATE, str(gate), *argv] if gate else argv

    return AppSpec(
        name="demo",
        title="Demo App",
        icon="",
        requires=(Requirement("sh", ""),),
        command=command,
        parameters=(
            Parameter(
                "dir",
                "data directory",
                default=lambda settings: str(tmp_path / "one"),
                resolve=lambda value: str(existing_directory(value, base=tmp_path)),
            ),
        ),
    )


async def wait_for_value(socket_path: Path, value: str) -> None:
    async def answered() -> bool:
        _, headers, body = await get(socket_path, "/", probe=True)
        return pages.STATE_HEADER not in headers and body == f"value={value}"

    await until_async(answered, 10, f"the app answered value={value}")


async def control(runtime: Path, message: object) -> dict | None:
    """What the Jupyter side gets from the launcher's control API for ``message``."""
    return await asyncio.to_thread(ask_launcher, runtime / CONTROL_SOCKET, message)


async def first_failure(app: AppSpec, tmp_path: Path, prefix: str = "/demo/"):
    """Start ``app`` in a supervisor until it fails: (status, page, supervisor)."""
    async with serving(launcher_for(app, tmp_path / "run", prefix)) as launcher:
        await until_failed(launcher)
        status, _, body = await get(launcher.layout.socket)
    return status, body, launcher


async def test_a_url_parameter_starts_relaunches_and_refuses_bad_values(tmp_path):
    runtime = ensure_private_dir(tmp_path / "run")
    launcher = launcher_for(demo_app(tmp_path), runtime)
    task = asyncio.create_task(launcher.run())
    sock = runtime / "socket"
    try:
        await until_async((runtime / CONTROL_SOCKET).exists, 5, "the control socket is up")
        assert oct((runtime / CONTROL_SOCKET).stat().st_mode & 0o777) == "0o600"
        # The first start takes the default; a request to the launcher may choose another.
        await wait_for_value(sock, str(tmp_path / "one"))
        assert launcher.params.current == {"dir": str(tmp_path / "one")}

        # While the app runs, the Jupyter side passes a choice on: the socket is the
        # launcher's again by the time the answer comes, then the app has the new value.
        old_pid = launcher.proc.pid
        switch = {"params": {"dir": "two"}, "origin": "same-origin"}
        assert await control(runtime, switch) == {"result": "switching"}
        status, headers, _ = await get(sock, "/?dir=two")
        assert status == 202 and headers[pages.STATE_HEADER] == "starting"
        await wait_for_value(sock, str(tmp_path / "two"))
        assert launcher.proc.pid != old_pid
        # The same value again (the progress page reloading into the app) changes nothing.
        assert await control(runtime, {"params": {"dir": str(tmp_path / "two")}}) == {
            "result": "same"
        }
        assert launcher.state == "running"

        # A bad value: a page naming it, with a form for another; the app keeps running.
        reply = await control(runtime, {"params": {"dir": "missing<b>"}})
        assert reply["result"] == "error" and reply["status"] == 404
        assert "Demo App cannot open this data directory" in reply["page"]
        assert "missing&lt;b&gt; does not exist" in reply["page"]
        assert "<input name='dir'" in reply["page"] and "<b>" not in reply["page"]
        assert launcher.state == "running"
        await wait_for_value(sock, str(tmp_path / "two"))
        assert await control(runtime, "not a request") is None, "no answer, no change"
        assert launcher.state == "running"

        # After the app exits, a request to the launcher with a value starts it with that.
        os.kill(launcher.proc.pid, signal.SIGKILL)
        await until_async(
            lambda: launcher.state == "stopped" and launcher.listener.listening,
            5,
            "the launcher took its socket back",
        )
        status, headers, body = await get(sock, "/?dir=nope")
        assert status == 404 and "nope does not exist" in body
        assert launcher.state == "stopped", "a bad value starts nothing"
        status, headers, _ = await get(sock, "/?dir=one", headers=SAME_ORIGIN)
        assert status == 202
        await wait_for_value(sock, str(tmp_path / "one"))
    finally:
        launcher.request_shutdown(signal.SIGTERM)
        await asyncio.wait_for(task, 15)
    assert not runtime.exists()


@pytest.mark.parametrize(
    ("headers", "origin"),
    [
        ({"Sec-Fetch-Site": "same-origin"}, "same-origin"),
        ({"sec-fetch-site": "none"}, "none"),  # the address bar, a bookmark
        ({"Sec-Fetch-Site": "cross-site"}, "cross-site"),
        ({"Sec-Fetch-Site": "same-site"}, "same-site"),
        ({"Sec-Fetch-Site": "whatever"}, "unknown"),
        ({}, "unknown"),  # an old browser, or a client with only the cookie
        ({"Authorization": "token abc", "Sec-Fetch-Site": "cross-site"}, "token"),
        ({"Authorization": "Bearer abc"}, "token"),
        ({"Authorization": "Basic YTpi", "Sec-Fetch-Site": "cross-site"}, "cross-site"),
        ({pages.CONFIRM_HEADER: "1", "Sec-Fetch-Site": "cross-site"}, "confirmed"),
    ],
)
def test_request_origin_trusts_only_what_another_site_cannot_send(headers, origin):
    lower = {name.lower(): value for name, value in headers.items()}
    assert request_origin(lower) == origin
    assert request_origin(HTTPHeaders(headers)) == origin, "tornado's headers, as Jupyter has"
    assert (origin in MAY_RELAUNCH) == (origin in ("same-origin", "none", "token", "confirmed"))


def test_the_confirmation_page_names_the_values_escaped_and_asks_from_our_origin():
    html = pages.confirm_page(
        "Demo App", [("data directory", "/d/<b>two", "/d/one&")], "/demo/", running=True
    )
    assert "<title>Open Demo App on /d/&lt;b&gt;two?</title>" in html
    assert "<h1>Open Demo App on /d/&lt;b&gt;two?</h1>" in html
    assert "<th>data directory</th><td><code>/d/&lt;b&gt;two</code></td>" in html
    assert "<th>now</th><td><code>/d/one&amp;</code></td>" in html and "<b>" not in html
    assert "<button id='confirm' type='button'>Open this data directory</button>" in html
    # The button sends this header (test_tensorboard_browser clicks it and sees the
    # relaunch logged as "request: confirmed").
    assert f"data-confirm-header='{pages.CONFIRM_HEADER}'" in html
    assert "<a id='keep' href='/demo/'>Keep Demo App as it is</a>" in html
    assert "restarts Demo App" in html
    several = pages.confirm_page(
        "Demo App", [("a", "1", ""), ("b", "2", "3")], "/demo/", running=False
    )
    assert "<h1>Relaunch Demo App with other values?</h1>" in several
    assert "<th>a</th><td><code>1</code></td></tr><tr><th>b</th>" in several, "no 'now' row"
    assert "Demo App starts with it." in several


async def test_a_new_value_from_another_site_is_asked_for_and_changes_nothing(tmp_path):
    """Both ways a value reaches the launcher: from the Jupyter side while the app runs
    (the control socket, with the request's origin), and as a request on the launch
    socket while the app starts or is stopped. A link from another site gets the page
    that asks; the app and its start under way go on untouched."""
    gate = tmp_path / "gate"
    gate.touch()
    runtime = ensure_private_dir(tmp_path / "run")
    launcher = launcher_for(demo_app(tmp_path, gate), runtime)
    task = asyncio.create_task(launcher.run())
    sock = runtime / "socket"
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    try:
        await until_async((runtime / CONTROL_SOCKET).exists, 5, "the control socket is up")
        await wait_for_value(sock, one)
        running = launcher.proc.pid

        # While the app runs: the Jupyter side passes the origin on (none: "unknown").
        for origin in ("cross-site", "same-site", "unknown", None):
            message = {"params": {"dir": "two"}} | ({"origin": origin} if origin else {})
            reply = await control(runtime, message)
            assert reply["result"] == "confirm" and reply["status"] == 409, reply
            assert reply["state"] == "running"
            assert f"<h1>Open Demo App on {two}?</h1>" in reply["page"]
            assert f"<th>now</th><td><code>{one}</code></td>" in reply["page"]
            assert "restarts Demo App, which is running now" in reply["page"]
            assert launcher.state == "running" and launcher.proc.pid == running
            assert launcher.params.chosen == {} and launcher.lifecycle.generation == 1
        await wait_for_value(sock, one)
        # The value it runs with already: nothing to ask.
        same = await control(runtime, {"params": {"dir": one}, "origin": "cross-site"})
        assert same == {"result": "same"}

        # A start under way (held at the gate) is not overtaken by a link either.
        gate.unlink()
        switch = {"params": {"dir": "two"}, "origin": "confirmed"}
        assert await control(runtime, switch) == {"result": "switching"}
        assert launcher.state == "starting"
        await until_async(  # the old app is stopped first, then the new one starts
            lambda: launcher.proc is not None and launcher.proc.pid != running,
            10,
            "the new app started",
        )
        starting, generation = launcher.proc.pid, launcher.lifecycle.generation
        for headers in ({"Sec-Fetch-Site": "cross-site"}, {}):
            status, got, body = await get(sock, "/?dir=one", headers=headers)
            assert status == 409 and got[pages.STATE_HEADER] == "starting", (status, body)
            assert got["Content-Security-Policy"] == "frame-ancestors 'self'"
            assert got["Cache-Control"] == "no-store"
            assert f"<h1>Open Demo App on {one}?</h1>" in body
            assert f"<th>now</th><td><code>{two}</code></td>" in body
            assert (launcher.proc.pid, launcher.lifecycle.generation) == (starting, generation)
        gate.touch()
        await wait_for_value(sock, two)
        assert launcher.proc.pid == starting

        # Stopped: a link's value neither starts the app nor is kept for the next start.
        os.kill(launcher.proc.pid, signal.SIGKILL)
        await until_async(
            lambda: launcher.state == "stopped" and launcher.listener.listening,
            5,
            "the launcher took its socket back",
        )
        status, got, body = await get(sock, "/?dir=one", headers={"Sec-Fetch-Site": "cross-site"})
        assert status == 409 and got[pages.STATE_HEADER] == "stopped", (status, body)
        assert "Demo App starts with it." in body
        assert launcher.state == "stopped" and launcher.proc is None
        assert launcher.params.chosen == {"dir": two}
        # Our own page asks again (its button): that starts it with the value.
        status, got, _ = await get(sock, "/?dir=one", headers={pages.CONFIRM_HEADER: "1"})
        assert status == 202 and got[pages.STATE_HEADER] == "starting"
        await wait_for_value(sock, one)
    finally:
        launcher.request_shutdown(signal.SIGTERM)
        await asyncio.wait_for(task, 15)
    assert not runtime.exists()


async def test_a_bad_default_gives_a_page_not_a_start(tmp_path):
    app = demo_app(tmp_path)
    app = AppSpec(
        **{
            **app.__dict__,
            "parameters": (
                Parameter(
                    "dir",
                    "data directory",
                    default=lambda settings: str(tmp_path / "gone"),
                    resolve=lambda value: str(existing_directory(value)),
                ),
            ),
        }
    )
    status, body, launcher = await first_failure(app, tmp_path)
    assert status == 404
    assert f"{tmp_path / 'gone'} does not exist" in body
    assert launcher.proc is None


# ---------------------------------------------------------------- flags at launch
def flag_app(program: Path) -> AppSpec:
    def command(launch):
        argv = [str(program)] + [f for f in ("--b", "--c") if launch.supports(f)]
        return ["sh", "-c", f"echo {' '.join(argv)}; sleep 30"]

    return AppSpec(
        name="demo",
        title="Demo App",
        icon="",
        requires=(Requirement(str(program), ""),),
        command=command,
        flags=(Flag("--a", required="It cannot listen privately without it."), Flag("--b")),
    )


async def test_a_missing_required_flag_gives_a_page_naming_it(tmp_path):
    program = fake_program(tmp_path / "prog", "Options:\n  --b arg  bee")
    status, html, launcher = await first_failure(flag_app(program), tmp_path, "/")
    assert status == 503
    assert "Demo App cannot run with the version installed here" in html
    assert f"<code>{program} --help</code> does not list <code>--a</code>" in html
    assert "It cannot listen privately without it." in html
    assert "--b arg  bee" in html, "the program's help is shown as its output"
    assert launcher.proc is None, "nothing was started"


@pytest.mark.parametrize(
    ("help_text", "expected"),
    [("  --a arg\n  --b arg\n  --c arg", "--b"), ("  --a arg\n  --c arg", "")],
)
async def test_optional_flags_are_used_only_when_listed(tmp_path, help_text, expected):
    """``--b`` is used only if listed; ``--c`` is listed but not declared, so never asked."""
    program = fake_program(tmp_path / "prog", help_text)
    runtime = ensure_private_dir(tmp_path / "run")
    launcher = launcher_for(flag_app(program), runtime, "/")
    await launcher.serve()
    try:
        await until_async(
            lambda: any(line.startswith(str(program)) for line in launcher.tail),
            10,
            "the app printed its argv",
        )
        assert f"{program} {expected}".strip() in list(launcher.tail), list(launcher.tail)
    finally:
        launcher.request_shutdown(signal.SIGTERM)
        await asyncio.wait_for(launcher.done.wait(), 15)
