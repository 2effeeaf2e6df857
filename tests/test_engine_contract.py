"""What jupyter-server-proxy and simpervisor do that hpc_proxies works around.

Each test pins one upstream behaviour that ``hpc_proxies/jupyter/serverproxy.py`` or
``hpc_proxies/launcher.py`` depends on or compensates for. If one fails after an
upgrade, upstream changed: revisit the workaround named in the test, don't patch
the test.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import signal
import stat
import subprocess
import sys
import time
import warnings

import pytest
from aiohttp import web
from jupyter_server_proxy.config import ServerProcess
from jupyter_server_proxy.handlers import SuperviseAndProxyHandler
from jupyter_server_proxy.utils import call_with_asked_args
from simpervisor import SupervisedProcess
from waiting import until, until_async

from hpc_proxies.jupyter.serverproxy import SERVER_KEYS, template_literal


def test_unknown_keys_are_silently_ignored():
    """Why validate_server_process exists: a typo'd key is dropped without an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proc = ServerProcess(name="typo", command=["x"], new_browser_window=True)
    assert not hasattr(proc, "new_browser_window")


def test_our_list_of_keys_matches_upstream():
    """SERVER_KEYS must be exactly the traits a ServerProcess accepts (besides its name)."""
    upstream = set(ServerProcess.class_trait_names()) - {"name", "config", "parent", "log"}
    assert upstream == set(SERVER_KEYS)


PROCESS_ARGS = {"port": 0, "unix_socket": "/tmp/s", "base_url": "/"}


class _Args:
    """Just enough of a handler for jupyter-server-proxy's template rendering."""

    process_args = PROCESS_ARGS
    _render_template = SuperviseAndProxyHandler._render_template


def test_command_strings_go_through_str_format():
    """Why template_literal doubles braces."""
    render = _Args._render_template
    with pytest.raises((KeyError, IndexError, ValueError)):
        render(_Args(), ["echo {oops}"])
    assert render(_Args(), [template_literal("echo {oops}")]) == ["echo {oops}"]
    assert render(_Args(), ["{unix_socket}"]) == ["/tmp/s"]


def test_callables_get_arguments_by_name_and_partials_fail():
    """Why server_process passes plain closures only."""

    def command(unix_socket, base_url):
        return [unix_socket, base_url]

    assert call_with_asked_args(command, PROCESS_ARGS) == ["/tmp/s", "/"]
    with pytest.raises(AttributeError):
        call_with_asked_args(functools.partial(command, base_url="/x/"), PROCESS_ARGS)


class _ReadyProbe:
    def __init__(self, path):
        self.unix_socket = path
        self.log = logging.getLogger("contract")


async def test_readiness_accepts_any_status(tmp_path):
    """Why the launcher can answer the readiness check at once with its progress page
    (202), or a 502/503 failure page."""

    async def starting(request):
        return web.Response(status=503, text="starting")

    app = web.Application()
    app.router.add_get("/", starting)
    runner = web.AppRunner(app)
    await runner.setup()
    path = str(tmp_path / "s")
    await web.UnixSite(runner, path).start()
    try:
        ready = await SuperviseAndProxyHandler._http_ready_func(_ReadyProbe(path), None)
        not_there = await SuperviseAndProxyHandler._http_ready_func(
            _ReadyProbe(str(tmp_path / "nothing")), None
        )
    finally:
        await runner.cleanup()
    assert ready is True
    assert not_there is False


def test_unix_socket_true_makes_a_private_dir_nobody_removes():
    """Why the launcher checks the directory and removes it itself."""
    handler = SuperviseAndProxyHandler.__new__(SuperviseAndProxyHandler)
    handler.state = {}
    handler.requested_unix_socket = True
    path = handler.unix_socket
    directory = os.path.dirname(path)
    try:
        assert os.path.basename(path) == "socket"
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert handler.unix_socket == path  # cached for the life of the server
    finally:
        os.rmdir(directory)


async def test_clean_exit_is_not_restarted_but_a_crash_is_at_once(tmp_path):
    """Why the launcher never exits by itself: exit 0 would leave a dead app in the
    proxy's state; a non-zero exit is restarted immediately, with no back-off."""
    runs = tmp_path / "runs"

    def count() -> int:
        return runs.read_text().count("run") if runs.exists() else 0

    async def count_reaches(n: int, timeout: float = 10) -> int:
        await until_async(lambda: count() >= n, timeout, f"{n} runs")
        await asyncio.sleep(0.3)  # and no more runs come after it
        return count()

    clean = SupervisedProcess("clean", "sh", "-c", f"echo run >> {runs}; exit 0")
    await clean.start()
    assert await count_reaches(1) == 1
    assert clean.running is False

    runs.unlink()
    # Crashes twice (exit 3), then stays up: the two restarts come at once, unasked.
    script = f'echo run >> {runs}; [ "$(grep -c run {runs})" -ge 3 ] && exec sleep 60; exit 3'
    crashing = SupervisedProcess("crash", "sh", "-c", script)
    await crashing.start()
    try:
        assert await count_reaches(3) == 3
        assert crashing.running is True
    finally:
        await asyncio.wait_for(crashing.terminate(), 10)


def test_simpervisor_signals_only_its_direct_child(tmp_path):
    """Why the launcher is a subreaper that stops the whole tree itself: when the
    server gets SIGTERM, simpervisor signals its child and exits; a grandchild lives on."""
    pidfile = tmp_path / "grandchild.pid"
    script = tmp_path / "server.py"
    script.write_text(
        "import asyncio\n"
        "from simpervisor import SupervisedProcess\n"
        "async def main():\n"
        f"    p = SupervisedProcess('t', 'sh', '-c', 'sleep 60 & echo $! > {pidfile}; wait')\n"
        "    await p.start()\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    server = subprocess.Popen([sys.executable, str(script)])
    try:
        until(lambda: pidfile.exists() and pidfile.read_text().strip(), 5, "the grandchild's pid")
        grandchild = int(pidfile.read_text())
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0
        time.sleep(0.3)
        assert os.path.exists(f"/proc/{grandchild}"), "simpervisor now stops grandchildren"
    finally:
        server.kill()
        if pidfile.exists():
            subprocess.run(["kill", "-9", pidfile.read_text().strip()], check=False)


# ---------------------------------------------------------------- the instance manager
# hpc_proxies/jupyter/instances.py and api.py build list, stop, restart and more
# instances on what follows; each test names the code that depends on it.


def test_a_server_process_makes_its_own_handler_class_and_state():
    """Why instance_handler works: jupyter-server-proxy's ServerProcess makes the handler
    class of a server from its dict, with a fresh state dict and the name as proxy base
    (what its redirects and absolute URLs are built from)."""
    first = ServerProcess(name="xpra@2", command=["x"], unix_socket=True)
    second = ServerProcess(name="xpra@3", command=["x"], unix_socket=True)
    (cls_a, kwargs_a), (cls_b, kwargs_b) = first.make_proxy_handler(), second.make_proxy_handler()
    assert issubclass(cls_a, SuperviseAndProxyHandler) and cls_a is not cls_b
    assert kwargs_a == {"state": {}} and kwargs_a["state"] is not kwargs_b["state"]
    assert first.get_proxy_attributes()["proxy_base"] == "xpra@2"


def test_the_state_keeps_proc_lock_and_socket_and_a_given_socket_is_reused(tmp_path):
    """Why InstanceManager.stop works: under ``state["proc_lock"]`` it ends ``state["proc"]``
    and removes ``proc`` and ``unix_socket``; the next request makes a new directory."""
    handler = SuperviseAndProxyHandler.__new__(SuperviseAndProxyHandler)
    state: dict = {}
    handler.initialize(state)
    assert "proc_lock" in state
    handler.requested_unix_socket = True
    given = str(tmp_path / "socket")
    state["unix_socket"] = given
    assert handler.unix_socket == given
    del state["unix_socket"]
    fresh = handler.unix_socket
    try:
        assert fresh != given and state["unix_socket"] == fresh
    finally:
        os.rmdir(os.path.dirname(fresh))
    source = inspect.getsource(SuperviseAndProxyHandler.ensure_process)
    assert 'async with self.state["proc_lock"]' in source
    assert 'if "proc" not in self.state' in source


def test_the_activity_hook_gets_the_handler_and_true_keeps_jupyters_own():
    """Why AppServerProxy.record_activity can find the manager (``handler.settings``) and
    the first instance's state (``handler.state``): the callable is given the handler."""
    from jupyter_server_proxy.handlers import ProxyHandler

    given = []

    class Handler:
        def __init__(self) -> None:
            self.settings: dict = {}
            self.exclude_last_activity_patterns: list = []
            self.update_last_activity = lambda handler: given.append(handler) or True

    handler = Handler()
    ProxyHandler._record_activity(handler)
    assert given == [handler]
    assert "jupyter-server-proxy" in handler.settings["last_activity_times"]


async def test_terminate_reaps_and_does_not_restart(tmp_path):
    """Why InstanceManager.stop terminates through simpervisor: the process is reaped,
    marked not running, and not restarted although it exits non-zero."""
    marker = tmp_path / "runs"
    proc = SupervisedProcess("t", "sh", "-c", f"echo run >> {marker}; exec sleep 60")
    await proc.start()
    await until_async(marker.exists, 5, "the first run")
    await asyncio.wait_for(proc.terminate(), 10)
    assert proc.running is False and proc.returncode == -signal.SIGTERM
    await asyncio.sleep(0.3)
    assert marker.read_text().count("run") == 1


def test_jupyter_server_accepts_a_router_without_methods():
    """Why InstanceRouter has an empty SUPPORTED_METHODS: jupyter_server checks every
    handler it is given for unauthenticated methods, and reads that attribute."""
    from jupyter_server.serverapp import ServerWebApplication

    from hpc_proxies.jupyter.api import InstanceRouter

    assert ServerWebApplication._check_handler_auth(None, "/x@y/", InstanceRouter) == []


# ---------------------------------------------------------------- large bodies
# hpc_proxies/jupyter/streaming.py streams large responses in front of jupyter-server-
# proxy's handlers. These tests fail when an upgrade makes that unnecessary (the engine
# streams on its own, without the 100 MiB limit, with backpressure) or breaks the hook
# (``_proxy_buffered``, its arguments, its use of the client it is given): then revisit
# StreamingMixin, or drop it, rather than patch the test.


def test_the_stock_handler_buffers_every_body_unless_the_request_wants_an_event_stream():
    """Why StreamingMixin exists: ``proxy`` streams (``_proxy_progressive``) only for
    ``Accept: text/event-stream`` exactly; everything else is ``_proxy_buffered``, which
    fetches the whole body (no streaming_callback) before it sends a byte. It is also
    the hook: called with the client it should fetch with, which our mixin replaces."""
    from jupyter_server_proxy.handlers import ProxyHandler

    proxy = inspect.getsource(ProxyHandler.proxy)
    assert 'if accept_header == "text/event-stream":' in proxy
    assert "return await self._proxy_buffered(host, port, proxied_path, body, client)" in proxy
    buffered = inspect.getsource(ProxyHandler._proxy_buffered)
    assert "streaming_callback" not in buffered
    assert "response = await client.fetch(req, raise_error=False)" in buffered
    assert list(inspect.signature(ProxyHandler._proxy_buffered).parameters) == [
        "self",
        "host",
        "port",
        "proxied_path",
        "body",
        "client",
    ]


async def test_the_stock_unix_socket_client_refuses_a_body_over_100_mib(tmp_path):
    """Why StreamingMixin fetches with a client of its own (``max_body_size``): the one
    jupyter-server-proxy makes for a unix socket keeps tornado's default of 100 MiB, so
    a larger body is a 599 in both of its modes (measured: at once, before any byte)."""
    from jupyter_server_proxy.unixsock import UnixResolver
    from tornado import httpclient
    from tornado.simple_httpclient import SimpleAsyncHTTPClient

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nxyz" % (100 * 2**20 + 1))
        await writer.drain()
        writer.close()

    path = str(tmp_path / "socket")
    server = await asyncio.start_unix_server(answer, path)
    client = SimpleAsyncHTTPClient(force_instance=True, resolver=UnixResolver(path))
    try:
        assert (client.max_body_size or client.max_buffer_size) == 100 * 2**20
        with pytest.raises(httpclient.HTTPError) as refused:
            await client.fetch("http://localhost/", raise_error=False)
        assert refused.value.code == 599
    finally:
        client.close()
        server.close()


def test_the_stock_handlers_flush_drops_the_future_that_would_be_backpressure():
    """Why StreamingMixin calls tornado's own ``RequestHandler.flush``: the engine's
    WebSocketHandlerMixin puts a wrapper of ``flush`` on each handler that returns
    None, so nothing can wait for the browser through it (its event-stream mode does
    not: it writes whatever the app sends, as fast as the app sends it)."""
    from jupyter_server_proxy.handlers import ProxyHandler
    from jupyter_server_proxy.websocket import WebSocketHandlerMixin

    init = inspect.getsource(WebSocketHandlerMixin.__init__)
    assert '"flush",' in init
    assert "                getattr(nextparent, method)(self, *args2, **kwargs2)\n" in init
    progressive = inspect.getsource(ProxyHandler._proxy_progressive)
    assert "            self.write(chunk)\n            self.flush()\n" in progressive
