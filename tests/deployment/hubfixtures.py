"""The deployment an HPC centre runs, started from nothing on 127.0.0.1 for the tier:
munge and a one-node Slurm (``slurm.py``'s session cluster), JupyterHub with
configurable-http-proxy and batchspawner's ``SlurmSpawner`` (configured by
``docs/admins/jupyterhub_config.py``, loaded unchanged), a test authenticator, a site
venv built from the system Python, and two ordinary users created for the test.

Only what a test machine needs is added to the documented configuration: free ports on
127.0.0.1, the test cluster's partition and ``SLURM_CONF``, one CPU per server (two
servers share the two-CPU node), a shared-password authenticator for the two users, and
a service token the tests use to drive the hub's REST API.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from as_user import anyone_python
from conftest import ARTIFACTS, free_port
from processes import LocalUser, alive, cmdline, ordinary_user, wait_gone
from slurm import SlurmCluster
from waiting import until

from hpc_proxies import procs

CHECKOUT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = CHECKOUT / "docs" / "admins" / "jupyterhub_config.py"
RSERVER = CHECKOUT / "tests" / "standin" / "rserver"
#: The console scripts the documented configuration and the apps use from the site venv.
SCRIPTS = ("jupyterhub-singleuser", "hpc-proxies", "tensorboard", "jupyter")
SPAWN_TIMEOUT = 180  # queue wait excluded: from the job running to JupyterLab answering

#: What the tier adds to the documented configuration (``load_subconfig`` runs it first).
TEST_CONFIG = """\
import os
c = get_config()  # noqa: F821
load_subconfig({example!r})  # noqa: F821

c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = {proxy_pid!r}
c.JupyterHub.db_url = "sqlite:///{root}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = {cookie_secret!r}

c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = os.environ["HPCP_TEST_PASSWORD"]
c.Authenticator.allowed_users = {users!r}

# The tests drive the hub's REST API, and reach users' servers, with this token.
c.JupyterHub.services = [{{"name": "tier", "api_token": os.environ["HPCP_TEST_TOKEN"]}}]
c.JupyterHub.load_roles = [{{
    "name": "tier",
    "scopes": ["admin:users", "admin:servers", "admin:server_state", "access:servers"],
    "services": ["tier"],
}}]

# The test cluster: its partition, its slurm.conf (not in /etc), and one CPU per server
# so that two users' servers share its two CPUs.
c.SlurmSpawner.req_nprocs = "1"
c.SlurmSpawner.state_exechost_exp = "127.0.0.1"
c.Spawner.environment["SLURM_CONF"] = {slurm_conf!r}
c.SlurmSpawner.startup_poll_interval = 0.25
c.Spawner.poll_interval = 5  # the hub notices a scancel'ed server sooner (default 30 s)
"""


@dataclass
class HubUser:
    """An ordinary account of the machine who logs in to the hub."""

    local: LocalUser
    home: Path

    @property
    def name(self) -> str:
        return self.local.name


def hub_user(name: str) -> HubUser:
    """``name``, created if needed, with what an earlier run left in the home removed."""
    local = ordinary_user(name)
    home = Path(f"/home/{name}")
    for stale in (".local", ".jupyter", ".ipython", "experiments", "paraview.ipynb"):
        path = home / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for log in home.glob("jupyterhub_slurmspawner_*.log"):
        log.unlink()
    # JupyterLab's news prompt would cover the launcher in the screenshots.
    settings = home / ".jupyter/lab/user-settings/@jupyterlab/apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    for path in (home / ".jupyter", *(home / ".jupyter").rglob("*")):
        os.chown(path, local.uid, local.gid)
    return HubUser(local, home)


def give(user: HubUser, path: Path) -> None:
    """Make ``path`` (and all below it) the user's, as if they had written it."""
    for item in (path, *path.rglob("*")) if path.is_dir() else (path,):
        os.chown(item, user.local.uid, user.local.gid)


@contextlib.contextmanager
def site_venv() -> Iterator[Path]:
    """A site venv as an admin builds it on the nodes: from ``/usr/bin/python3`` (a
    Python under /root would fail every job with "execve(): Permission denied"), with
    the console scripts pip would write. Its packages are this checkout's venv's
    (``python_for_anyone``), so no download happens here."""
    with anyone_python(SCRIPTS) as python:
        yield Path(python).parent.parent


@dataclass
class Hub:
    """The running JupyterHub: its public URL, the users, and the REST API."""

    proc: subprocess.Popen
    port: int
    root: Path
    token: str
    password: str
    cluster: SlurmCluster
    venv: Path
    site_config: Path
    users: dict[str, HubUser]
    figures: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 120
    ) -> tuple[int, str]:
        """``path`` (``/hub/api/...``, or ``/user/ada/xpra/`` through the proxy) with the
        tier's service token, as a script of the user's would send it; redirects are
        answers, not followed."""
        request = urllib.request.Request(
            f"{self.url}{path}",
            method=method,
            data=body,
            headers={"Authorization": f"token {self.token}"},
        )
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(request, timeout=timeout) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """The hub's REST API: ``/hub/api/<path>``, its JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        status, text = self.request(method, f"/hub/api/{path}", data)
        return status, _json(text)

    def get(self, path: str) -> tuple[int, str]:
        return self.request("GET", path)

    def post(self, path: str) -> tuple[int, dict]:
        status, text = self.request("POST", path, b"")
        return status, _json(text)

    def job_of(self, user: HubUser) -> str | None:
        """The Slurm job of the user's server, from the hub's own record of it."""
        status, model = self.api("GET", f"users/{user.name}")
        server = model.get("servers", {}).get("", {}) if status == 200 else {}
        return (server.get("state") or {}).get("job_id") or None

    def log(self) -> str:
        """The hub's log and each user's job log (where a job's failure is said)."""
        parts = [(self.root / "hub.log").read_text(errors="replace")[-6000:]]
        for user in self.users.values():
            for log in sorted(user.home.glob("jupyterhub_slurmspawner_*.log"))[-1:]:
                parts.append(f"--- {log}:\n" + log.read_text(errors="replace")[-6000:])
        return "\n".join(parts)

    def wait_running(self, user: HubUser, timeout: float = SPAWN_TIMEOUT) -> dict:
        """Until the user's server is ready; the hub's model of it."""
        seen: dict = {}

        def ready() -> bool:
            status, model = self.api("GET", f"users/{user.name}")
            seen.update(model)
            server = model.get("servers", {}).get("", {})
            return status == 200 and bool(server.get("ready"))

        try:
            until(ready, timeout, f"{user.name}'s server to be ready", interval=0.25)
        except AssertionError as err:
            raise AssertionError(f"{err}; last {seen}\n{self.log()}") from None
        return seen["servers"][""]

    def wait_stopped(self, user: HubUser, timeout: float = 60) -> None:
        """Until the hub has no server of the user's, and nothing pending (a stop)."""

        def stopped() -> bool:
            status, model = self.api("GET", f"users/{user.name}")
            return status == 200 and not model.get("servers") and not model.get("pending")

        try:
            until(stopped, timeout, f"the hub to see {user.name}'s server stopped", interval=0.25)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{self.log()}") from None

    def spawn(self, user: HubUser) -> dict:
        status, body = self.api("POST", f"users/{user.name}/server")
        assert status in (201, 202), (status, body)
        return self.wait_running(user)


def _json(text: str) -> dict:
    """A JSON answer, or (a page, an empty body) what it said."""
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {"body": text}


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def user_processes(user: HubUser) -> set[int]:
    """Every process running as the user."""
    found = set()
    for info in procs.all_processes():
        with contextlib.suppress(OSError):  # one that just ended
            if info.state != "Z" and os.stat(f"/proc/{info.pid}").st_uid == user.local.uid:
                found.add(info.pid)
    return found


def server_process(user: HubUser) -> int:
    """The user's ``jupyterhub-singleuser`` (the site venv's Python running it)."""
    (server,) = {
        pid
        for pid in user_processes(user)
        if cmdline(pid)[1:2] and cmdline(pid)[1].endswith("/jupyterhub-singleuser")
    }
    return server


@contextlib.contextmanager
def running_hub(cluster: SlurmCluster, users: list[HubUser]) -> Iterator[Hub]:
    """JupyterHub as root (it submits each user's job with ``sudo -E -u USER sbatch``),
    stopped after with every user's job and process."""
    missing = [c for c in ("configurable-http-proxy", "sudo") if shutil.which(c) is None]
    if missing:
        raise AssertionError(
            f"{missing} not found: bootstrap.sh installs them "
            "(npm install -g configurable-http-proxy; apt-get install sudo)"
        )
    root = Path(tempfile.mkdtemp(prefix="hpcp-hub-"))
    with site_venv() as venv:
        site_config = root / "site.toml"
        site_config.write_text(f'[apps.rstudio]\nexecutable = "{RSERVER}"\n')
        root.chmod(0o755)  # the users' jobs read site.toml
        port = free_port()
        config = root / "jupyterhub_config.py"
        config.write_text(
            TEST_CONFIG.format(
                example=str(EXAMPLE_CONFIG),
                port=port,
                hub_port=free_port(),
                proxy_api_port=free_port(),
                proxy_pid=str(root / "proxy.pid"),
                root=root,
                cookie_secret=str(root / "cookie_secret"),
                users={u.name for u in users},
                slurm_conf=str(cluster.conf),
            )
        )
        token, password = secrets.token_hex(24), secrets.token_urlsafe(16)
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(root),
            "LANG": "C.UTF-8",
            "HPC_PROXIES_SITE_VENV": str(venv),
            "HPC_PROXIES_CONFIG": str(site_config),
            "HPC_PROXIES_PARTITION": cluster.partition,
            "SLURM_CONF": str(cluster.conf),
            "HPCP_TEST_TOKEN": token,  # not in argv: other users read /proc/*/cmdline
            "HPCP_TEST_PASSWORD": password,
        }
        with (root / "hub.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(config)],
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        hub = Hub(
            proc,
            port,
            root,
            token,
            password,
            cluster,
            venv,
            site_config,
            {u.name: u for u in users},
        )
        try:

            def up() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"JupyterHub exited {proc.returncode}:\n{hub.log()}")
                try:
                    return hub.api("GET", "")[0] == 200
                except OSError:
                    return False

            started = time.monotonic()
            until(up, 60, "JupyterHub to answer", interval=0.2)
            hub.figures["hub_start_s"] = round(time.monotonic() - started, 2)
            yield hub
        finally:
            stop_hub(hub)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "deployment-hub.log").write_text(hub.log())
            shutil.rmtree(root, ignore_errors=True)


def stop_hub(hub: Hub) -> None:
    """SIGTERM to the hub (it stops the proxy and cancels the users' jobs), then cancel
    whatever job is left and kill what the users still run."""
    if hub.proc.poll() is None:
        hub.proc.send_signal(signal.SIGTERM)
        try:
            hub.proc.wait(60)
        except subprocess.TimeoutExpired:
            hub.proc.kill()
            hub.proc.wait(10)
    with contextlib.suppress(OSError, ValueError):
        proxy = int((hub.root / "proxy.pid").read_text())
        procs.send({proxy}, signal.SIGTERM)
    hub.cluster.cancel_all()
    for user in hub.users.values():
        left = wait_gone(user_processes(user), 15)
        procs.send(alive(left), signal.SIGKILL)
