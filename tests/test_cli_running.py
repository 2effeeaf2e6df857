"""``hpc-proxies ps/stop/restart/logs`` against a real Jupyter server run by an ordinary
user, with a real Xpra desktop; and a second user (the neighbour) who cannot act on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from as_user import anyone_python, users_jupyter
from conftest import JupyterServer
from instances_api import instance, wait_state
from processes import LocalUser, alive, ordinary_user
from waiting import until


@pytest.fixture(scope="module")
def owner() -> LocalUser:
    return ordinary_user("hpcp-cli-owner")


@pytest.fixture(scope="module")
def python() -> Iterator[str]:
    with anyone_python(()) as python:
        yield python


@pytest.fixture(scope="module")
def owners_server(owner: LocalUser, python: str) -> Iterator[JupyterServer]:
    """The owner's JupyterLab, in a directory only the owner can enter."""
    with users_jupyter(owner, python) as server:
        server.extra["runtime"] = server.extra["base"] / "jupyter" / "runtime"
        server.extra["home"] = server.extra["base"] / "home"
        yield server


def cli(
    user: LocalUser, python: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``hpc-proxies ARGS`` as ``user``."""
    return subprocess.run(
        user.argv(python, "-m", "hpc_proxies.cli", *args),
        capture_output=True,
        text=True,
        timeout=90,
        env={**user.env(), **(env or {})},
    )


def owners_env(server: JupyterServer) -> dict[str, str]:
    return {"JUPYTER_RUNTIME_DIR": str(server.extra["runtime"]), "HOME": str(server.extra["home"])}


def test_ps_logs_restart_and_stop_act_on_the_users_own_server(owner, python, owners_server):
    server = owners_server
    server.wait_for_app("/xpra/")
    running = wait_state(server, "xpra", "default", "running")
    env = owners_env(server)

    ps = cli(owner, python, "ps", env=env)
    assert ps.returncode == 0, ps.stderr
    row = next(line for line in ps.stdout.splitlines() if line.startswith("xpra/default"))
    assert "running" in row and f"{server.url}/xpra/" in row and "MiB" in row, ps.stdout
    assert "vnc/default" not in ps.stdout, "apps never started are not listed"

    logs = cli(owner, python, "logs", "xpra", env=env)
    assert logs.returncode == 0, logs.stderr
    assert "ready after" in logs.stdout and "xpra" in logs.stdout.lower(), logs.stdout[-2000:]

    restart = cli(owner, python, "restart", "xpra/default", env=env)
    assert restart.returncode == 0 and "Restarting Xpra Desktop" in restart.stdout, restart

    def restarted() -> dict | None:
        now = instance(server, "xpra", "default")
        app_pids = set(now["pids"]) - set(running["pids"][:1])
        fresh = now["state"] == "running" and not app_pids & set(running["pids"][1:])
        return now if fresh else None

    again = until(restarted, 60, "xpra to run again with new processes", interval=0.1)

    follow = subprocess.Popen(
        owner.argv(python, "-m", "hpc_proxies.cli", "logs", "-f", "xpra"),
        stdout=subprocess.PIPE,
        text=True,
        env={**owner.env(), **env},
    )
    try:
        assert follow.stdout is not None
        lines = []
        while not any("restarting, as the user asked" in line for line in lines):
            lines.append(follow.stdout.readline())
    finally:
        follow.terminate()
        follow.wait(10)

    stop = cli(owner, python, "stop", "xpra", env=env)
    assert stop.returncode == 0 and "Stopped Xpra Desktop (xpra/default)" in stop.stdout, stop
    assert alive(set(again["pids"])) == set(), "every process of it is gone when stop returns"
    ps = cli(owner, python, "ps", env=env)
    assert "stopped by you" in ps.stdout, ps.stdout

    missing = cli(owner, python, "restart", "xpra", env=env)
    assert missing.returncode == 1 and "is not running" in missing.stderr, missing
    assert "Traceback" not in missing.stderr


def test_the_neighbour_cannot_see_or_act_on_the_owners_server(
    owner, python, owners_server, neighbour
):
    server = owners_server
    server.wait_for_app("/xpra/")
    running = wait_state(server, "xpra", "default", "running")

    # Their own runtime directory has no server; the owner's is closed to them.
    for env in ({}, {"JUPYTER_RUNTIME_DIR": str(server.extra["runtime"])}):
        ps = cli(neighbour, python, "ps", env=env)
        assert ps.returncode == 1 and "no running Jupyter server of yours" in ps.stderr, ps
        assert "xpra" not in ps.stdout

    # Named by URL, the server refuses them.
    stop = cli(neighbour, python, "stop", "xpra", "--server", server.url)
    assert stop.returncode == 1, stop
    assert "403" in stop.stderr and "not your Jupyter server" in stop.stderr, stop.stderr

    # A copy of the owner's server file (say an admin's mistake) is not theirs to use.
    neighbours_runtime = Path(tempfile.mkdtemp(prefix="hpcp-neighbour-runtime-"))
    try:
        os.chown(neighbours_runtime, neighbour.uid, neighbour.gid)
        for info in server.extra["runtime"].glob("jpserver-*.json"):
            copy = neighbours_runtime / info.name
            shutil.copy(info, copy)
            os.chown(copy, neighbour.uid, neighbour.gid)
        ps = cli(neighbour, python, "ps", env={"JUPYTER_RUNTIME_DIR": str(neighbours_runtime)})
        assert ps.returncode == 1 and "no running Jupyter server of yours" in ps.stderr, ps
    finally:
        shutil.rmtree(neighbours_runtime)

    assert alive(set(running["pids"])) == set(running["pids"]), "the desktop runs on"
    assert instance(server, "xpra", "default")["state"] == "running"
