"""The launcher's process group with real processes: output, exits, reaping, stopping.

Scenarios that need a child subreaper (orphans re-parented to the test's process) run
in a child Python, so the pytest process itself is never made a subreaper, and a group
that adopts orphans never looks at pytest's other children.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from waiting import until, until_async

from hpc_proxies import procs
from hpc_proxies.launcher.processes import ManagedProcess, OutputTail, ProcessGroup

ENV = dict(os.environ)
TESTS = Path(__file__).parent
ROOT = TESTS.parent


def gone(pid: int) -> bool:
    """Not running any more: no such process, or a zombie its parent has yet to collect."""
    info = procs.proc_info(pid)
    return info is None or info.state == "Z"


def run_in_subreaper(body: str, timeout: float = 20) -> dict:
    """Run ``body`` (the inside of ``async def scenario()``, returning a JSON-ready
    value) in a child Python that is a child subreaper; its result."""
    script = PRELUDE + textwrap.indent(textwrap.dedent(body), "    ") + EPILOGUE
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**ENV, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


PRELUDE = """
import asyncio, collections, json, os, signal, subprocess, sys
from hpc_proxies import procs
from hpc_proxies.launcher.processes import ProcessGroup
from waiting import until_async

assert procs.become_subreaper()
ENV = dict(os.environ)

async def scenario():
"""
EPILOGUE = """
print(json.dumps(asyncio.run(scenario())))
"""


# ---------------------------------------------------------------- output
def test_output_tail_assembles_lines_from_chunks():
    tail = OutputTail(keep=3)
    assert tail.feed(b"par") == []
    assert tail.feed(b"tial\r\nsec") == ["partial"]
    assert tail.feed(b"ond\n\nthird\nla") == ["second", "", "third"]
    assert tail.feed(b"st") == []
    assert tail.feed(b"") == ["last"]  # the end of output completes a final line
    assert list(tail.lines) == ["", "third", "last"]  # only the last ``keep``
    assert tail.feed(b"  \n") == ["  "]
    assert tail.feed(b"") == []
    assert tail.feed(b"\xff\n") == ["\ufffd"]


async def test_interleaved_output_from_two_processes_stays_line_intact():
    seen: list[tuple[str, str]] = []
    group = ProcessGroup(on_line=lambda process, line: seen.append((process.name, line)))
    first = group.spawn("first", ["sh", "-c", "printf aaa; sleep 0.2; printf 'bbb\\n'"], ENV)
    second = group.spawn(
        "second", ["sh", "-c", "sleep 0.1; printf xxx; sleep 0.2; printf 'yyy\\n'"], ENV
    )
    try:
        codes = await asyncio.wait_for(asyncio.gather(first.wait(), second.wait()), 5)
    finally:
        await group.stop()
    assert codes == [0, 0]
    assert sorted(seen) == [("first", "aaabbb"), ("second", "xxxyyy")]
    assert list(first.tail.lines) == ["aaabbb"]
    assert list(second.tail.lines) == ["xxxyyy"]


async def test_a_final_line_without_a_newline_is_delivered_at_exit():
    seen: list[str] = []
    exits: list[tuple[int, list[str]]] = []
    group = ProcessGroup(
        on_line=lambda process, line: seen.append(line),
        on_exit=lambda process, code: exits.append((code, list(seen))),
    )
    process = group.spawn("app", ["sh", "-c", "printf 'one\\ntwo'; exit 1"], ENV)
    try:
        assert await asyncio.wait_for(process.wait(), 5) == 1
    finally:
        await group.stop()
    assert seen == ["one", "two"]
    assert exits == [(1, ["one", "two"])]  # the output before the exit is told
    assert list(process.tail.lines) == ["one", "two"]


# ---------------------------------------------------------------- exits
async def test_exits_are_reported_once_with_their_code():
    exits: list[tuple[str, int]] = []
    group = ProcessGroup(on_exit=lambda process, code: exits.append((process.name, code)))
    three = group.spawn("three", ["sh", "-c", "exit 3"], ENV)
    killed = group.spawn("killed", ["sleep", "100"], ENV)
    try:
        assert await asyncio.wait_for(three.wait(), 5) == 3
        os.kill(killed.pid, signal.SIGKILL)
        assert await asyncio.wait_for(killed.wait(), 5) == -signal.SIGKILL
        assert three.exited.done() and killed.exited.done()
    finally:
        await group.stop()
    assert await three.wait() == 3  # asked again: the same answer
    assert (three.returncode, killed.returncode) == (3, -9)
    assert sorted(exits) == [("killed", -9), ("three", 3)]
    assert procs.proc_info(three.pid) is None  # collected
    assert procs.proc_info(killed.pid) is None


def test_a_helper_command_keeps_its_exit_status_while_orphans_are_collected():
    """The app keeps making orphans that come back to us and exit (SIGCHLD all the
    time); a worker thread meanwhile runs a helper 200 times. Reaping with
    ``waitpid(-1)`` would take some helpers' statuses (subprocess then says 0)."""
    result = run_in_subreaper(
        """
        group = ProcessGroup(adopts_orphans=True, stop_grace=1.0)
        scans = 0
        collect_orphans = group.collect_orphans

        def counting():  # once for the SIGCHLDs since the last time
            nonlocal scans
            scans += 1
            collect_orphans()

        group.collect_orphans = counting
        orphans = "while :; do (sleep 0.01 &); sleep 0.005; done"
        app = group.spawn("app", ["sh", "-c", orphans], ENV)
        await until_async(lambda: scans >= 3, 5, "orphans exiting")
        before = scans

        def helpers():
            return [subprocess.run(["sh", "-c", "exit 7"]).returncode for _ in range(200)]

        def children():
            return [p.pid for p in procs.all_processes() if p.ppid == os.getpid()]

        try:
            codes = await asyncio.to_thread(helpers)
            during = scans - before
        finally:
            await group.stop()
        await until_async(lambda: not children(), 5, "every orphan collected")
        group.close()
        return {"codes": collections.Counter(codes), "scans": during, "app": await app.wait()}
        """
    )
    assert result["codes"] == {"7": 200}
    assert result["scans"] >= 10  # SIGCHLD did keep coming
    assert result["app"] == -signal.SIGTERM


def test_exit_codes_survive_a_stop_while_orphans_are_collected():
    """``stop`` forgets its members before their exits are collected; the orphan
    collector must still leave them to the group (each code is the signal's)."""
    result = run_in_subreaper(
        """
        rounds = []
        for _ in range(3):  # a group after another: a closed one reaps no more
            codes = []
            group = ProcessGroup(
                adopts_orphans=True, stop_grace=2.0, on_exit=lambda p, code: codes.append(code)
            )
            members = [group.spawn(f"p{n}", ["sleep", "100"], ENV) for n in range(15)]
            await until_async(
                lambda: all(procs.proc_info(m.pid).pgid == m.pid for m in members), 5, "setsid"
            )
            await group.stop()
            group.close()
            rounds.append({"reported": codes, "waited": [await m.wait() for m in members]})
        return rounds
        """
    )
    sigterm = [-signal.SIGTERM] * 15
    assert result == [{"reported": sigterm, "waited": sigterm}] * 3


# ---------------------------------------------------------------- stop
async def test_stop_kills_a_process_that_ignores_sigterm():
    logged: list[str] = []
    lines: list[str] = []
    group = ProcessGroup(
        stop_grace=1.0, log=logged.append, on_line=lambda process, line: lines.append(line)
    )
    stubborn = 'trap "" TERM HUP; echo ready; while :; do sleep 0.05; done'
    process = group.spawn("stubborn", ["sh", "-c", stubborn], ENV)
    await until_async(lambda: "ready" in lines, 5, "the traps are set")
    await group.stop()
    assert process.exited.done()
    assert await process.wait() == -signal.SIGKILL
    assert any("killing" in message for message in logged), logged
    assert procs.session_members(process.pid) == set()
    assert procs.proc_info(process.pid) is None
    assert group.members == []


async def test_stop_ends_a_background_child_of_the_app():
    lines: list[str] = []
    group = ProcessGroup(stop_grace=1.0, on_line=lambda process, line: lines.append(line))
    process = group.spawn("app", ["sh", "-c", "sleep 100 & echo $!; wait"], ENV)
    await until_async(lambda: lines, 5, "the background pid")
    child = int(lines[0])
    assert procs.proc_info(child).sid == process.pid  # in the app's session
    await group.stop()
    assert await process.wait() == -signal.SIGTERM
    # Re-parented to whichever reaper is above pytest, which collects it in its time.
    until(lambda: gone(child), 5, "the background sleep ends")
    assert procs.session_members(process.pid) == set()


def test_stop_ends_a_double_forked_orphan_in_a_session_of_its_own():
    result = run_in_subreaper(
        """
        group = ProcessGroup(adopts_orphans=True, stop_grace=1.0)
        app = group.spawn(
            "app", ["sh", "-c", "(setsid sleep 100 & echo $!); echo started; exec sleep 100"], ENV
        )
        await until_async(lambda: "started" in app.tail.lines, 5, "the orphan started")
        orphan = int(app.tail.lines[0])
        info = procs.proc_info(orphan)
        before = {"ppid": info.ppid == os.getpid(), "sid": info.sid == orphan}
        await group.stop()
        # Collected by the group's SIGCHLD handler, not left a zombie.
        await until_async(lambda: procs.proc_info(orphan) is None, 5, "the orphan collected")
        group.close()
        return {
            "before": before,
            "app": await app.wait(),
            "left": sorted(procs.descendants(os.getpid())),
            "children": [p.pid for p in procs.all_processes() if p.ppid == os.getpid()],
        }
        """
    )
    assert result["before"] == {"ppid": True, "sid": True}  # ours, in its own session
    assert result["app"] == -signal.SIGTERM
    assert result["left"] == []
    assert result["children"] == []


def test_stop_leaves_an_older_child_in_another_session_alone():
    """A process the host started before the app, in a session of its own (a test
    suite's Slurm daemons, started before an in-process launcher): a child of ours, but
    older than every process of the run, so not an orphan of the app's. Stopping the
    group ended the test cluster's slurmctld and slurmd once."""
    result = run_in_subreaper(
        """
        daemon = subprocess.Popen(["sleep", "100"], start_new_session=True)
        # /proc's start times count clock ticks since boot, as /proc/uptime does: the
        # app must start in a later tick than the daemon for the two to be told apart.
        stat = open(f"/proc/{daemon.pid}/stat").read().rsplit(")", 1)[1].split()
        daemon_tick = int(stat[19]) / os.sysconf("SC_CLK_TCK")
        uptime = lambda: float(open("/proc/uptime").read().split()[0])  # noqa: E731
        await until_async(lambda: uptime() > daemon_tick + 0.02, 5, "a later tick")
        group = ProcessGroup(adopts_orphans=True, stop_grace=1.0)
        app = group.spawn("app", ["sh", "-c", "setsid sleep 100 & exec sleep 100"], ENV)
        await until_async(lambda: len(procs.descendants(os.getpid())) >= 3, 5, "the orphan")
        await group.stop()
        group.close()
        left = {"daemon": procs.proc_info(daemon.pid).state != "Z"}
        left["others"] = sorted(procs.descendants(os.getpid()) - {daemon.pid})
        daemon.kill()
        daemon.wait()
        return {"app": await app.wait(), **left}
        """
    )
    assert result == {"app": -signal.SIGTERM, "daemon": True, "others": []}


def test_stop_leaves_a_helper_and_its_children_alone():
    """A helper a worker thread runs (in our session) is not the app's, nor is what
    it starts: a stop meanwhile must not end the helper's ``cat``."""
    result = run_in_subreaper(
        """
        group = ProcessGroup(adopts_orphans=True, stop_grace=1.0)
        app = group.spawn("app", ["sleep", "100"], ENV)
        read_end, write_end = os.pipe()  # the helper's cat ends when we close write_end
        helper = asyncio.create_task(
            asyncio.to_thread(
                subprocess.run,
                ["sh", "-c", "cat && echo done"],
                stdin=read_end,
                capture_output=True,
            )
        )

        def helpers_child():  # the helper's cat: a grandchild of ours, in our session
            snapshot = procs.all_processes()
            children = {p.pid for p in snapshot if p.ppid == os.getpid()}
            return [p for p in snapshot if p.ppid in children and p.sid == os.getsid(0)]

        await until_async(helpers_child, 5, "the helper's cat started")
        os.close(read_end)
        await group.stop()
        group.close()
        os.close(write_end)
        done = await helper
        return {"app": await app.wait(), "helper": [done.returncode, done.stdout.decode()]}
        """
    )
    assert result == {"app": -signal.SIGTERM, "helper": [0, "done\n"]}


# ---------------------------------------------------------------- orphans
async def test_collect_orphans_leaves_children_in_our_session_alone():
    group = ProcessGroup()
    helper = subprocess.Popen(["sh", "-c", "sleep 0.1; exit 5"])
    apart = subprocess.Popen(["sh", "-c", "exit 6"], start_new_session=True)
    try:
        until(lambda: procs.proc_info(helper.pid).state == "Z", 5, "the helper exits")
        until(lambda: procs.proc_info(apart.pid).state == "Z", 5, "the other exits")
        group.collect_orphans()
        # Ours keeps its status for Popen.wait; one in another session is collected
        # (Popen then finds no child and says 0).
        assert procs.proc_info(helper.pid) is not None
        assert procs.proc_info(apart.pid) is None
    finally:
        assert helper.wait(5) == 5
        assert apart.wait(5) == 0


async def test_collect_orphans_leaves_the_groups_own_processes_to_the_group():
    group = ProcessGroup()
    member: ManagedProcess = group.spawn("app", ["sh", "-c", "exit 4"], ENV)
    try:
        # Without yielding to the loop, so the group has not collected it yet.
        until(lambda: procs.proc_info(member.pid).state == "Z", 5, "the member exits")
        group.collect_orphans()
        assert procs.proc_info(member.pid) is not None
        assert await asyncio.wait_for(member.wait(), 5) == 4
    finally:
        await group.stop()
