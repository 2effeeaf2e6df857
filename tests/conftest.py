"""Shared fixtures: a real Jupyter server on a random port with a token, and process helpers.

The browser tests' helpers are in ``browser.py``; waiting for a condition is ``waiting.until``."""

from __future__ import annotations

import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from importlib.metadata import entry_points
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from processes import LocalUser, launcher_runtime_dir, ordinary_user, wait_gone
from waiting import until

from hpc_proxies import config, procs

ARTIFACTS = Path(
    os.environ.get("HPC_PROXIES_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts")
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Response:
    status: int
    headers: Message  # case-insensitive, as HTTP header names are
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


@dataclass
class JupyterServer:
    """A `jupyter lab` subprocess; all requests carry its token unless told otherwise."""

    proc: subprocess.Popen
    port: int
    token: str
    log_path: Path
    root_dir: Path
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, path: str, token: bool = True, headers: dict | None = None) -> Response:
        req = urllib.request.Request(self.url + path, headers=dict(headers or {}))
        if token:
            req.add_header("Authorization", f"token {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return Response(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as err:
            return Response(err.code, err.headers, err.read())

    def raw_get(self, path: str) -> tuple[int, Message, str]:
        """GET with the token, without following redirects."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path, headers={"Authorization": f"token {self.token}"})
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def wait_for_app(self, path: str, timeout: float = 90) -> Response:
        """Request ``path`` until the app itself answers (not our progress page)."""
        return self._request_until(
            path,
            lambda resp: "X-HPC-Proxies-State" not in resp.headers and resp.status < 500,
            timeout,
            f"{path} still not ready",
        )

    def wait_for_text(self, path: str, text: str, timeout: float = 15) -> Response:
        """Request ``path`` until the page contains ``text`` (e.g. past the progress page);
        fail, showing the last page, if it does not within ``timeout``."""
        return self._request_until(
            path, lambda resp: text in resp.text, timeout, f"{path} never showed {text!r}"
        )

    def _request_until(self, path: str, good, timeout: float, what: str) -> Response:
        """Request ``path`` every 0.1 s until ``good(response)``; the failure shows the
        last response."""
        last: list[Response] = []

        def answered() -> Response | None:
            last[:] = [self.request(path)]
            return last[0] if good(last[0]) else None

        try:
            return until(answered, timeout, what, interval=0.1)
        except AssertionError as err:
            raise AssertionError(f"{err}; {last[0].status} {last[0].text[:2000]}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def descendants(self) -> set[int]:
        return procs.descendants(self.proc.pid)

    def launcher_pid(self, app: str) -> int:
        for pid in self.descendants():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"hpc_proxies.launcher" in cmdline and app.encode() in cmdline:
                return pid
        raise AssertionError(f"no launcher for {app} under the Jupyter server")

    def runtime_dir(self, app: str) -> Path:
        return launcher_runtime_dir(self.launcher_pid(app))

    def stop_all(self) -> None:
        """Stop the server, then kill whatever it started that did not stop with it."""
        left = self.descendants()
        self.stop()
        kill_leftovers(left)

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


#: ``python -m jupyterlab``, but without rfc3987-syntax: jupyter_events' jsonschema loads
#: it, if installed, for an optional "iri" format check, and it builds its grammar on
#: import, about 2 s of CPU, a third of each start. Nothing here validates IRIs; an
#: optional package that fails to import is what jsonschema expects (it skips the check).
JUPYTERLAB = (
    "import runpy, sys; sys.modules['rfc3987_syntax'] = None; "
    "runpy.run_module('jupyterlab', run_name='__main__', alter_sys=True)"
)


def start_jupyter(
    tmp_path: Path,
    env_update: dict | None = None,
    user: LocalUser | None = None,
    python: str = sys.executable,
) -> JupyterServer:
    """``jupyter lab`` in ``tmp_path``, run by ``python``; as ``user`` if given (who must
    own ``tmp_path`` and be able to run ``python``: see ``python_for_anyone``)."""
    port = free_port()
    token = secrets.token_hex(16)
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    jupyter_dirs = tmp_path / "jupyter"
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(jupyter_dirs / "config"),
        JUPYTER_RUNTIME_DIR=str(jupyter_dirs / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
        JUPYTER_TOKEN=token,  # not in argv, which other users can read
        # Desktop sessions run $SHELL in their xterm: a plain /bin/sh, not this
        # machine's interactive bash, whose rc files (pyenv's rehash lock) can stall it.
        SHELL="/bin/sh",
    )
    env.update(env_update or {})
    # No "Would you like to get notified about official Jupyter news?" over the pages
    # the tests look at (JupyterLab's user settings live under JUPYTER_CONFIG_DIR).
    news = jupyter_dirs / "config/lab/user-settings/@jupyterlab/apputils-extension"
    news.mkdir(parents=True, exist_ok=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    if user is not None:  # theirs, as the rest of tmp_path: JupyterLab writes there too
        for path in (jupyter_dirs, *jupyter_dirs.rglob("*")):
            os.chown(path, user.uid, user.gid)
    log_path = tmp_path / "jupyter.log"
    cmd = [
        python,
        "-c",
        JUPYTERLAB,
        "--no-browser",
        "--allow-root",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if user is not None:
        cmd = user.argv(*cmd)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    server = JupyterServer(proc, port, token, log_path, root)

    def up_or_exited() -> bool:
        if proc.poll() is not None:
            return True
        try:
            return server.request("/api/status").status == 200
        except OSError:
            return False  # not listening yet

    try:
        until(up_or_exited, 60, "jupyter did not start")
    except AssertionError as err:
        raise AssertionError(f"{err}\n{server.log()}") from None
    if proc.poll() is not None:
        raise AssertionError(f"jupyter exited early:\n{server.log()}")
    return server


def python_for_anyone(directory: Path, scripts: tuple[str, ...] = ()) -> str:
    """A Python that any local user can run, with this venv's packages: the test venv's
    own interpreter may live where only root can reach it (e.g. under /root/.pyenv).
    A venv of the system's Python of the same version, whose .pth adds our site-packages
    and whose etc/ and share/ are ours (Jupyter looks for its extensions there). The
    console ``scripts`` named (``tensorboard``, ``jupyterhub-singleuser``...) are
    written beside it as pip would: ours name a Python only root may run."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = Path("/usr/bin") / version
    if not system.exists():
        pytest.fail(f"{system} is needed to run Jupyter as an ordinary user")
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    venv = directory / "venv"
    subprocess.run([str(system), "-m", "venv", "--without-pip", str(venv)], check=True)
    ours = Path(sys.prefix) / "lib" / version / "site-packages"
    (venv / "lib" / version / "site-packages" / "hpc-proxies-tests.pth").write_text(
        f"import site; site.addsitedir({str(ours)!r})\n"
    )
    for shared in ("etc", "share"):  # Jupyter's server extensions, kernels, lab assets
        (venv / shared).symlink_to(Path(sys.prefix) / shared)
    python = venv / "bin" / "python"
    found = {ep.name: ep for ep in entry_points(group="console_scripts")}
    for name in scripts:
        module, _, attr = found[name].value.partition(":")
        head, _, rest = attr.partition(".")
        script = python.parent / name
        script.write_text(
            f"#!{python}\nimport sys\nfrom {module} import {head}\n"
            f"sys.exit({head}{'.' + rest if rest else ''}())\n"
        )
        script.chmod(0o755)
    return str(python)


def kill_leftovers(pids: set[int], grace: float = 15) -> None:
    """After a test: give the launchers time to stop their apps, then kill what is left."""
    procs.send(wait_gone(pids, grace), signal.SIGKILL)


@contextmanager
def jupyter_with_site(
    tmp_path: Path,
    toml: str | None = None,
    env_update: dict | None = None,
    user: LocalUser | None = None,
    python: str = sys.executable,
):
    """A Jupyter server (whose site configuration is ``toml``, if given; with
    ``env_update`` in its environment; run as ``user`` by ``python``, if given); it and
    everything below it stopped after."""
    env = dict(env_update or {})
    if toml is not None:
        site = tmp_path / "site.toml"
        site.write_text(toml)
        env["HPC_PROXIES_CONFIG"] = str(site)
    server = start_jupyter(tmp_path, env, user, python)
    try:
        yield server
    finally:
        server.stop_all()


@pytest.fixture(autouse=True)
def no_site_config_of_this_machine(monkeypatch):
    """A test in this process never reads this machine's site configuration (what an
    admin put in /etc would change what it sees): ``config.load`` must be told which
    files to read (``files=``, or ``$HPC_PROXIES_CONFIG`` in its ``env``). Jupyter
    servers the tests start get their own (``jupyter_with_site``)."""
    real_load = config.load

    def load(env=None, hostname=None, files=None):
        chosen = (os.environ if env is None else env).get(config.ENV_CONFIG)
        if files is None and not chosen:
            raise AssertionError("a test read this machine's site configuration")
        return real_load(env, hostname, files)

    monkeypatch.setattr(config, "load", load)


@pytest.fixture
def jupyter(tmp_path):
    """A fresh Jupyter server for one test; stopped (and anything it left killed) after."""
    with jupyter_with_site(tmp_path) as server:
        yield server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def neighbour():
    """A second ordinary user of this machine: the neighbour on a shared node."""
    return ordinary_user("hpcp-neighbour")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel admins would install, built once from this checkout."""
    out = tmp_path_factory.mktemp("wheel")
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(root)],
        check=True,
    )
    (built,) = out.glob("hpc_proxies-*.whl")
    return built


@pytest.fixture(scope="module")
def shared_jupyter(tmp_path_factory):
    """One Jupyter server shared by the tests of a module that do not stop it."""
    with jupyter_with_site(tmp_path_factory.mktemp("jupyter")) as server:
        yield server


_skipped: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    """A test whose dependency is missing must fail the run, never pass as skipped."""
    if _skipped and session.exitstatus == 0:
        session.exitstatus = 1
        sys.stderr.write(f"\nskipped tests count as failures here: {_skipped}\n")
