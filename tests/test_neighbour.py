"""A second ordinary user of the node attacks the first user's apps, one attempt a test.

The first user (an ordinary account, ``hpcp-victim``) runs all five apps behind one
Jupyter server: Xpra, VNC, TensorBoard, RStudio (the stand-in rserver) and ParaView's
pvserver. The neighbour is a real account of this machine (the ``neighbour`` fixture),
with a shell of its own, as on a login node: it can list processes, read world-readable
files, and connect to anything it can name. Root would bypass file permissions, so
neither the victim nor any attempt runs as root; only this test, looking on, does.
docs/security.md lists these attempts as the table of what is refused.
"""

from __future__ import annotations

import http.client
import json
import os
import stat
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from as_user import anyone_python, users_jupyter
from conftest import JupyterServer
from processes import LocalUser, cmdline, ordinary_user, uids_of
from test_paraview import start_pvserver
from test_rstudio_integration import RSERVER

APPS = ("xpra", "vnc", "tensorboard", "rstudio", "paraview")


@pytest.fixture(scope="module")
def victim_user() -> LocalUser:
    """The first user, whose apps the neighbour attacks."""
    return ordinary_user("hpcp-victim")


@pytest.fixture(scope="module")
def python() -> Iterator[str]:
    """An interpreter with this venv's packages that the victim can run."""
    with anyone_python() as python:
        yield python


@pytest.fixture(scope="module")
def victim(victim_user: LocalUser, python: str) -> Iterator[JupyterServer]:
    """The victim's Jupyter server, in a directory only the victim can enter, with every
    app running, as the victim."""
    toml = f'[apps.rstudio]\nexecutable = "{RSERVER}"\n[apps.tensorboard]\nlogdir = "~/runs"\n'
    with users_jupyter(victim_user, python, toml, dirs=("home/runs",)) as server:
        for app in APPS:
            server.request(f"/{app}/")  # start them all at once
        for app in APPS:
            server.wait_for_app(f"/{app}/")
        start_pvserver(server)
        assert_all_run_as(server, victim_user)
        yield server


def assert_all_run_as(server: JupyterServer, user: LocalUser) -> None:
    """The server, every process of every app and every runtime directory are the
    user's: an attempt that fails against them fails for the neighbour, not because
    the victim was root."""
    pids = {server.proc.pid} | server.descendants()
    assert len(pids) >= 10, "the server and every app's processes"
    wrong = [(pid, uids_of(pid), cmdline(pid)) for pid in pids if uids_of(pid) - {user.uid}]
    assert not wrong, wrong
    for directory in runtime_dirs(server):
        st = directory.stat()
        assert (st.st_uid, st.st_gid) == (user.uid, user.gid), directory


#: The catalogue of what a neighbour tries (also run inside Slurm jobs by the deployment
#: tier), run by the system Python as the neighbour.
ATTEMPTS = Path(__file__).with_name("neighbour_attempts.py")


def attempt(neighbour, secrets: list[str] | None = None, **targets) -> dict:
    """Run ``neighbour_attempts.py`` on ``targets`` as the neighbour; what came of each.
    ``secrets`` (for a ``search``) go to it on standard input, never in its argv."""
    done = subprocess.run(
        neighbour.argv("/usr/bin/python3", str(ATTEMPTS), json.dumps(targets)),
        input=json.dumps(secrets or []),
        capture_output=True,
        text=True,
        timeout=120,
        env=neighbour.env(),
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def run_as(neighbour, script: str, *args: str) -> dict:
    """Run ``script`` (Python) as the neighbour; it prints one JSON object."""
    done = neighbour.run("/usr/bin/python3", "-c", textwrap.dedent(script), *args, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def runtime_dirs(server) -> list[Path]:
    return [server.runtime_dir(app) for app in APPS]


def files_below(directories: list[Path], kind) -> list[Path]:
    """Every file of ``kind`` (``stat.S_ISSOCK``, ``stat.S_ISREG``) below the directories
    (read as this test's user, who owns them)."""
    found = []
    for directory in directories:
        for root, _dirs, names in os.walk(directory):
            for name in names:
                path = Path(root) / name
                try:
                    mode = path.lstat().st_mode
                except FileNotFoundError:
                    continue  # a file the app just removed
                if kind(mode):
                    found.append(path)
    return found


def secrets_of(server) -> list[str]:
    """Each app's per-launch secret, and pvserver's connect-id."""
    names = ("secret", "connect-id")
    return [
        p.read_text().strip()
        for p in files_below(runtime_dirs(server), stat.S_ISREG)
        if p.name in names
    ]


# ------------------------------------------------------------------ the attempts
def test_the_neighbour_cannot_read_the_apps_environment(victim, neighbour):
    pids = sorted(victim.descendants())
    assert len(pids) >= 10, "every app's processes"
    result = attempt(neighbour, pids=pids)["environ"]
    assert set(result.values()) <= {"PermissionError", "FileNotFoundError"}, result
    assert "PermissionError" in result.values()


def test_no_secret_is_in_any_argv_the_neighbour_can_read(victim, neighbour):
    secrets = secrets_of(victim)
    assert len(secrets) >= 4, "Xpra, VNC, RStudio and pvserver each have one"
    seen = attempt(neighbour, argv=True)["argv"]
    ours = {" ".join(cmdline(pid)) for pid in victim.descendants()}
    assert any("hpc_proxies.launcher" in line for line in ours)
    assert len(seen) > len(ours)  # the neighbour does see every process's argv
    for secret in secrets:
        assert not any(secret in line for line in seen)


def test_the_neighbour_cannot_enter_the_runtime_directories(victim, neighbour):
    dirs = runtime_dirs(victim)
    for directory in dirs:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    result = attempt(neighbour, dirs=[str(d) for d in dirs])["dirs"]
    assert len(result) == len(dirs) and set(result.values()) == {"PermissionError"}, result


def test_the_neighbour_cannot_connect_to_any_socket(victim, neighbour):
    sockets = files_below(runtime_dirs(victim), stat.S_ISSOCK)
    # Five launch sockets, TensorBoard's control socket, the VNC server's RFB socket and
    # the pvserver namespace keeper's connector.
    assert len(sockets) >= 8, sockets
    result = attempt(neighbour, sockets=[str(p) for p in sockets])["sockets"]
    assert set(result.values()) == {"PermissionError"}, result


def test_the_neighbour_cannot_read_a_secret_file(victim, neighbour):
    private = files_below(runtime_dirs(victim), stat.S_ISREG)
    secret_files = [p for p in private if p.name in ("secret", "connect-id", "Xauthority")]
    assert len(secret_files) >= 6, secret_files
    for path in secret_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    result = attempt(neighbour, files=[str(p) for p in secret_files])["files"]
    assert set(result.values()) == {"PermissionError"}, result


def x_displays(pids: set[int]) -> set[str]:
    """The X displays the processes use (their ``DISPLAY``)."""
    displays = set()
    for pid in pids:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"DISPLAY=:"):
                displays.add(item.split(b"=", 1)[1].decode())
    return displays


def test_the_neighbour_cannot_open_an_x_display(victim, neighbour):
    displays = x_displays(victim.descendants())
    assert len(displays) >= 3, displays  # Xpra's, VNC's and pvserver's
    result = attempt(neighbour, displays=sorted(displays))["displays"]
    assert len(result) == 2 * len(displays), result  # on its socket, and over TCP
    assert "opened" not in result.values(), result


#: Paths a browser of the neighbour's (no token, no cookie) might try, ``..`` forms too.
PROBES = [
    ("GET", "/xpra/"),
    ("GET", "/xpra/index.html"),
    ("GET", "/vnc/"),
    ("GET", "/vnc/vnc.html"),
    ("GET", "/tensorboard/"),
    ("GET", "/tensorboard/?logdir=/"),
    ("GET", "/rstudio/"),
    ("GET", "/paraview/"),
    ("GET", "/paraview/api/status"),
    ("POST", "/paraview/api/stop"),
    ("GET", "/xpra/../api/contents"),
    ("GET", "/xpra/%2e%2e/api/contents"),
    ("GET", "/xpra/%2e%2e/%2e%2e/api/status"),
    ("GET", "/server-proxy/servers-info"),
]


def test_no_jupyter_url_answers_without_the_token(victim, neighbour):
    result = run_as(
        neighbour,
        """
        import http.client, json, sys
        port, probes = int(sys.argv[1]), json.loads(sys.argv[2])
        out = []
        for method, path in probes:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request(method, path)
            resp = conn.getresponse()
            out.append([method, path, resp.status, resp.read(4000).decode(errors="replace")])
            conn.close()
        print(json.dumps(out))
        """,
        str(victim.port),
        json.dumps(PROBES),
    )
    for method, path, status, body in result:
        assert status in (302, 403), (method, path, status, body[:300])
        for leak in ("xpra websockets client", "noVNC", "TensorBoard", "RStudio", "pvserver"):
            assert leak not in body, (method, path, body[:300])
    # Everything still runs for its owner.
    for app in APPS:
        assert victim.request(f"/{app}/").status < 500
    conn = http.client.HTTPConnection("127.0.0.1", victim.port, timeout=30)
    conn.request("GET", "/paraview/api/status", headers={"Authorization": f"token {victim.token}"})
    assert json.loads(conn.getresponse().read())["state"] == "running"
