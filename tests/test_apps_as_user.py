"""Each app started by an ordinary user's Jupyter server, not by root's.

Root bypasses file permissions, so the other integration tests (run as root) show that
the runtime directories are 0700 but not that this keeps anyone out, nor that an app
works where those permissions apply to it. Here the server runs as ``hpcp-app-user``:
every process of the app is that user's, its runtime directory and sockets are too, the
neighbour (a second ordinary user) can neither list the directory nor connect to a
socket in it, the app answers through Jupyter, and stopping Jupyter leaves nothing.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator

import pytest
from as_user import anyone_python, users_jupyter
from conftest import JupyterServer
from processes import (
    LocalUser,
    assert_stopping_leaves_nothing,
    cmdline,
    find_process,
    ordinary_user,
    uids_of,
)
from test_neighbour import attempt, files_below
from test_paraview import start_pvserver
from test_rstudio_integration import RSERVER

from hpc_proxies import procs

USER = "hpcp-app-user"

#: What each app serves through Jupyter: the path, and what is on that page.
PAGES = {
    "xpra": ("/xpra/", ("<title>xpra websockets client</title>",)),
    "vnc": ("/vnc/vnc.html", ("<title>noVNC</title>",)),
    "tensorboard": ("/tensorboard/", ('name="tb-relative-root"',)),
    "rstudio": ("/rstudio/", ("<title>RStudio</title>", f"<p id='user'>{USER}</p>")),
    "paraview": ("/paraview/", ("ParaView server",)),
}

#: The app's own programs (a word of their first two arguments), which must be among
#: the processes checked: the launcher alone running as the user would prove little.
PROGRAMS = {
    "xpra": ("xpra",),
    "vnc": ("Xtigervnc",),
    "tensorboard": ("serve.py",),
    "rstudio": ("rserver",),
    "paraview": ("paraview/server.py", "Xvfb"),
}


@pytest.fixture(scope="module")
def app_user() -> LocalUser:
    """The ordinary user whose Jupyter server runs the apps."""
    return ordinary_user(USER)


@pytest.fixture(scope="module")
def python() -> Iterator[str]:
    """An interpreter with this venv's packages that the user can run."""
    with anyone_python() as python:
        yield python


def app_pids(server: JupyterServer, app: str) -> set[int]:
    """The app's launcher and everything below it."""
    launcher = server.launcher_pid(app)
    return {launcher} | procs.descendants(launcher)


@pytest.mark.parametrize("app", list(PAGES))
def test_the_app_runs_as_the_user_and_keeps_the_neighbour_out(
    app: str, app_user: LocalUser, python: str, neighbour: LocalUser
) -> None:
    toml = f'[apps.rstudio]\nexecutable = "{RSERVER}"\n'
    with users_jupyter(app_user, python, toml) as server:
        server.wait_for_app(f"/{app}/")
        if app == "paraview":
            start_pvserver(server)  # pvserver, its X server and its namespace keeper

        pids = app_pids(server, app) | {server.proc.pid}
        for program in PROGRAMS[app]:
            find_process(pids, program)
        wrong = [(pid, uids_of(pid), cmdline(pid)) for pid in pids if uids_of(pid) - {app_user.uid}]
        assert not wrong, wrong

        runtime = server.runtime_dir(app)
        st = runtime.stat()
        assert stat.S_IMODE(st.st_mode) == 0o700, oct(st.st_mode)
        assert (st.st_uid, st.st_gid) == (app_user.uid, app_user.gid)
        sockets = files_below([runtime], stat.S_ISSOCK)
        assert sockets, f"no socket in {runtime}"
        owners = {str(path): path.lstat().st_uid for path in sockets}
        assert set(owners.values()) == {app_user.uid}, owners
        said = attempt(neighbour, dirs=[str(runtime)], sockets=[str(p) for p in sockets])
        tried = {**said["dirs"], **said["sockets"]}
        assert len(tried) == 1 + len(sockets), tried
        assert set(tried.values()) == {"PermissionError"}, tried

        path, markers = PAGES[app]
        page = server.request(path)
        assert page.status == 200, (path, page.status, page.text[:500])
        for marker in markers:
            assert marker in page.text, (marker, page.text[:2000])

        assert_stopping_leaves_nothing(server, app)
