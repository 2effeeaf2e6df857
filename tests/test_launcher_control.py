"""The supervisor's control API as the Jupyter server uses it (``hpc_proxies.jupyter.control``):
status, the numbered log with a long poll, and restart; on a real supervisor running a
tiny real app on its socket."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

from supervisor import get, launcher_for, serving
from test_core_launch_options import ECHO_APP
from waiting import until_async

from hpc_proxies import pages, procs
from hpc_proxies.jupyter import control
from hpc_proxies.launcher.logbook import LogBook
from hpc_proxies.spec import AppSpec, Requirement


def echo_app() -> AppSpec:
    """The echo app, saying something on its output first."""

    def command(launch):
        script = f"print('echo app up on', {str(launch.socket)!r}, flush=True)\n{ECHO_APP}"
        return [sys.executable, "-c", script, str(launch.socket), "hello"]

    return AppSpec(
        name="demo", title="Demo App", icon="", requires=(Requirement("sh", ""),), command=command
    )


async def running(launcher) -> dict:
    async def answered() -> dict | None:
        status = await control.status(launcher.layout.control)
        return status if status and status["state"] == "running" else None

    return await until_async(answered, 15, "the app to run")


async def test_status_names_every_process_its_memory_and_its_connections(tmp_path):
    async with serving(launcher_for(echo_app(), tmp_path / "run")) as launcher:
        status = await running(launcher)
        app_pid = launcher.proc.pid
        # The launcher runs in this process here; pids are sorted, and after a pid
        # wrap-around the app's may be the smaller, so pids[0] is not the launcher.
        launcher_pid = os.getpid()
        assert set(status["pids"]) == {*procs.descendants(launcher_pid), launcher_pid}
        assert app_pid in status["pids"]
        assert status["memory"] >= sum(procs.pss_bytes(p) or 0 for p in [app_pid]) > 0
        assert status["ready"] >= status["started"] > time.time() - 60
        assert status["connections"] == 0 and status["problem"] is None

        # A browser's long-lived connection (a websocket, once proxied) counts.
        held = socket.socket(socket.AF_UNIX)
        held.connect(str(launcher.layout.socket))
        try:
            await until_async(
                lambda: procs.unix_connections(launcher.launch.socket) == 1, 5, "accepted"
            )
            assert (await control.status(launcher.layout.control))["connections"] == 1
        finally:
            held.close()


async def test_the_log_is_numbered_and_a_reader_can_wait_for_new_lines(tmp_path):
    async with serving(launcher_for(echo_app(), tmp_path / "run")) as launcher:
        await running(launcher)
        first = await control.log(launcher.layout.control, 1)
        texts = [line["text"] for line in first["lines"]]
        assert any(t.startswith("echo app up on") for t in texts), texts
        assert any(t.startswith("ready after") for t in texts), texts
        assert first["next"] == first["lines"][-1]["seq"] + 1

        waiting = asyncio.ensure_future(control.log(launcher.layout.control, first["next"], 10))
        await asyncio.sleep(0.2)
        assert not waiting.done(), "nothing new: the reader waits"
        launcher.log("a new line")
        later = await asyncio.wait_for(waiting, 5)
        assert [line["text"] for line in later["lines"]] == ["a new line"]
        assert (await control.log(launcher.layout.control, later["next"]))["lines"] == []


async def test_restart_gives_new_processes_and_keeps_the_log(tmp_path):
    async with serving(launcher_for(echo_app(), tmp_path / "run")) as launcher:
        before = await running(launcher)
        old = launcher.proc.pid
        answer = await control.restart(launcher.layout.control)
        assert answer is not None and answer["state"] == "starting"

        async def fresh() -> bool:
            status = await control.status(launcher.layout.control)
            return status["state"] == "running" and old not in status["pids"]

        await until_async(fresh, 15, "the app to run again")
        status, headers, body = await get(launcher.layout.socket, "/", probe=True)
        assert (status, body) == (200, "value=hello") and pages.STATE_HEADER not in headers
        texts = [line["text"] for line in (await control.log(launcher.layout.control, 1))["lines"]]
        assert "restarting, as the user asked" in texts
        assert sum(t.startswith("echo app up on") for t in texts) == 2, "both runs' lines"
        assert before["log_next"] < (await control.status(launcher.layout.control))["log_next"]


async def test_restart_after_the_app_ended_starts_it(tmp_path):
    app = echo_app()
    async with serving(launcher_for(app, tmp_path / "run")) as launcher:
        await running(launcher)
        launcher.proc.kill()
        await until_async(lambda: launcher.state == "stopped", 10, "the app's end to be seen")
        status = await control.status(launcher.layout.control)
        assert status["last_exit"]["signal"] == 9 and status["last_exit"]["code"] is None
        assert "signal 9" in status["last_exit"]["description"]
        await control.restart(launcher.layout.control)
        await running(launcher)


async def test_no_answer_is_none_not_an_error(tmp_path: Path):
    assert await control.status(tmp_path / "nothing-here") is None
    silent = socket.socket(socket.AF_UNIX)
    silent.bind(str(tmp_path / "silent"))  # bound, never listening: refused
    try:
        assert await control.status(tmp_path / "silent") is None
    finally:
        silent.close()


async def test_the_log_keeps_the_newest_lines():
    book = LogBook(keep=3)
    for n in range(5):
        book.append(f"line {n}")
    assert [line["text"] for line in book.since(1)] == ["line 2", "line 3", "line 4"]
    assert [line["seq"] for line in book.since(5)] == [5] and book.next_seq == 6
    assert await book.wait_since(6, 0.05) == []


def slow_echo_app(seconds: float) -> AppSpec:
    """The echo app, answering only after ``seconds``."""

    def command(launch):
        script = f"import time; time.sleep({seconds})\n{ECHO_APP}"
        return [sys.executable, "-c", script, str(launch.socket), "hello"]

    return AppSpec(
        name="demo", title="Demo App", icon="", requires=(Requirement("sh", ""),), command=command
    )


async def test_the_progress_probe_is_held_while_starting_and_answered_when_ready(tmp_path):
    """The progress page learns that the app is ready the moment it is: its probe is held
    (at most PROBE_HOLD) and answered as soon as the phase changes."""
    from hpc_proxies.launcher.web import PROBE_HOLD

    async with serving(launcher_for(slow_echo_app(2.0), tmp_path / "run")) as launcher:
        answers = []
        while True:
            asked = time.monotonic()
            _, headers, _ = await get(launcher.layout.socket, "/", probe=True)
            answers.append((time.monotonic() - asked, headers.get(pages.STATE_HEADER), time.time()))
            if answers[-1][1] != "starting":
                break
        held = [took for took, state, _ in answers if state == "starting"]
        assert held and all(took >= PROBE_HOLD * 0.9 for took in held), answers
        took, state, answered_at = answers[-1]
        # "running" from the launcher, or (a probe sent just after the hand-over) the app
        assert state in ("running", None), answers
        ready = (await control.status(launcher.layout.control))["ready"]
        assert 0 <= answered_at - ready < 0.2, "answered when ready, not at the hold's end"
        assert took < PROBE_HOLD, answers
