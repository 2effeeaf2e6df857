"""ParaView end to end: a real Jupyter server, the installed "ParaView (pvpython)" kernel,
real pvserver processes, a private Xvfb, and Chromium on the interactive view."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbclient
import nbformat
import pytest
from browser import chromium, differing, rgb
from conftest import ARTIFACTS, jupyter_with_site
from jupyter_client import KernelManager
from network import WITHOUT_USER_NAMESPACES, peer_host
from PIL import Image
from processes import as_nobody, assert_stopping_leaves_nothing, cmdline, tcp_listeners, wait_gone
from waiting import until

from hpc_proxies import procs
from hpc_proxies.runtime import ensure_private_dir

EXAMPLE = Path(__file__).parent.parent / "examples" / "paraview.ipynb"
DEBIAN_PYTHON = "/usr/bin/python3"
#: The module's Jupyter server gives a client this long to finish ParaView's handshake
#: (the site's ``handshake_timeout``), so that the stalled-handshake test need not wait
#: the default's 15 s. A real client takes milliseconds, even on a loaded machine.
HANDSHAKE_SECONDS = 4.0


@pytest.fixture(scope="module")
def shared_jupyter(tmp_path_factory):
    """One Jupyter server shared by the tests of this module that do not stop it, with
    a short ``handshake_timeout``."""
    site = f"[apps.paraview]\nhandshake_timeout = {HANDSHAKE_SECONDS}\n"
    with jupyter_with_site(tmp_path_factory.mktemp("jupyter"), site) as server:
        yield server


class PvKernel:
    """The installed paraview kernel, started as nbclient would (a child of the test).

    Starting it does not wait for it: the first :meth:`run` does, so that its start-up
    overlaps whatever the test does meanwhile (another kernel's, pvserver's)."""

    def __init__(self, server):
        env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(server.root_dir.parent / "jupyter/runtime"))
        self.km = KernelManager(kernel_name="paraview")
        self.km.start_kernel(env=env, cwd=str(server.root_dir))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.ready = False
        self.stopped = False

    def __enter__(self) -> PvKernel:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def run(
        self, code: str, timeout: float = 180, texts: list[str] | None = None
    ) -> tuple[str, dict | None]:
        """The cell's text (stdout and results), and its error (ename, evalue) if any.
        ``texts``, if given, gets the cell's output as it comes (watch it from a thread)."""
        if not self.ready:
            self.kc.wait_for_ready(timeout=60)
            self.ready = True
        texts = [] if texts is None else texts
        error: dict | None = None

        def hook(msg):
            nonlocal error
            content = msg["content"]
            if msg["msg_type"] == "stream":
                texts.append(content["text"])
            elif msg["msg_type"] in ("execute_result", "display_data"):
                texts.append(content["data"].get("text/plain", ""))
            elif msg["msg_type"] == "error":
                error = {"ename": content["ename"], "evalue": content["evalue"]}

        self.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        return "".join(texts), error

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernel(shared_jupyter):
    k = PvKernel(shared_jupyter)
    yield k
    k.stop()


def status(server) -> dict:
    return json.loads(server.wait_for_app("/paraview/api/status").body)


def wait_for_state(server, state: str, timeout: float = 30) -> None:
    """Until the ParaView service's status says ``state``."""
    until(
        lambda: status(server)["state"] == state,
        timeout,
        f"ParaView's state to become {state!r}",
        interval=0.1,
    )


def post(server, what: str) -> tuple[int, dict]:
    import urllib.request

    req = urllib.request.Request(
        f"{server.url}/paraview/api/{what}",
        method="POST",
        data=b"",
        headers={"Authorization": f"token {server.token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def start_pvserver(server) -> dict:
    server.wait_for_app("/paraview/api/status")
    code, info = post(server, "start")
    assert code == 200, info
    return info


def sphere_visible(png: bytes) -> tuple[bool, str]:
    """A sphere in the middle of ParaView's plain background: the centre differs from
    the background (read at a corner), and so does a round area of plausible size."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = image.size
    background = image.getpixel((w - 5, 5))

    def differs(px) -> bool:
        return max(abs(a - b) for a, b in zip(px, background, strict=True)) > 40

    centre = image.getpixel((w // 2, h // 2))
    fraction = sum(1 for px in rgb(image) if differs(px)) / (w * h)
    ok = differs(centre) and 0.05 < fraction < 0.8
    return ok, f"centre {centre}, background {background}, sphere fraction {fraction:.2f}"


def wrong_id_client(port: int, connect_id: int) -> subprocess.CompletedProcess:
    code = (
        "from paraview.modules.vtkRemotingCore import vtkRemotingCoreConfiguration\n"
        "from paraview import simple\n"
        f"vtkRemotingCoreConfiguration.GetInstance().SetConnectID({connect_id})\n"
        f"print('CONNECTION', simple.Connect('127.0.0.1', {port}))\n"
    )
    return subprocess.run(
        [DEBIAN_PYTHON, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def pvserver_pids(server) -> set[int]:
    """pvserver's own process (``python server.py``; not its namespace keeper)."""
    return {
        pid
        for pid in server.descendants()
        if cmdline(pid)[1:2] and cmdline(pid)[1].endswith("paraview/server.py")
    }


def xvfb_pids(server) -> set[int]:
    return {pid for pid in server.descendants() if cmdline(pid)[:1] == ["/usr/bin/Xvfb"]}


# ------------------------------------------------------------------ the notebook
def test_example_notebook_runs_on_the_paraview_kernel(shared_jupyter, monkeypatch):
    """examples/paraview.ipynb with nbclient: connect(), a Sphere, a PNG in which the
    sphere is visible, and proof that pvserver (not the kernel) rendered it."""
    monkeypatch.setenv(
        "JUPYTER_RUNTIME_DIR", str(shared_jupyter.root_dir.parent / "jupyter/runtime")
    )
    nb = nbformat.read(EXAMPLE, as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "import json\nfrom paraview import servermanager\n"
            "print(json.dumps({'distributed': bool(view.GetClientSideObject()"
            ".GetUseDistributedRenderingForRender()), 'server_can_render': bool("
            "servermanager.ActiveConnection.Session.GetServerInformation()"
            ".GetRemoteRendering())}))"
        )
    )
    started = time.monotonic()
    nbclient.NotebookClient(
        nb, timeout=240, kernel_name="paraview", resources={"metadata": {"path": "."}}
    ).execute()
    elapsed = time.monotonic() - started
    outputs = [c.outputs for c in nb.cells if c.cell_type == "code"]
    assert "Connection (cs://127.0.0.1:" in outputs[0][0]["data"]["text/plain"]
    png = base64.b64decode(outputs[2][0]["data"]["image/png"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "paraview-notebook.png").write_bytes(png)
    ok, why = sphere_visible(png)
    assert ok, why
    iframe = outputs[3][0]["data"]["text/html"]
    assert re.search(r'src="/paraview/view/[A-Za-z0-9_-]+/"', iframe), iframe
    checks = json.loads(outputs[4][0]["text"])
    assert checks == {"distributed": True, "server_can_render": True}
    assert elapsed < 240


# ------------------------------------------------------------------ security
def test_wrong_connect_id_is_refused_and_rotates(shared_jupyter):
    info = start_pvserver(shared_jupyter)
    port = info["port"]
    secret = int(Path(info["connect_id_file"]).read_text())
    assert oct(Path(info["connect_id_file"]).stat().st_mode & 0o777) == "0o600"
    # Three clients at once (pvserver takes their handshakes one after another), each
    # with a wrong id; after three refusals the server moves to a new port with a new id.
    wrong_ids = [secret + 1 + attempt for attempt in range(3)]
    with ThreadPoolExecutor(len(wrong_ids)) as pool:
        clients = list(pool.map(lambda wrong: wrong_id_client(port, wrong), wrong_ids))
    for done in clients:
        assert "CONNECTION None" in done.stdout, done.stdout + done.stderr

    def moved() -> dict | None:
        now = status(shared_jupyter)
        return now if now["state"] == "running" and now["port"] != port else None

    now = until(moved, 60, f"pvserver to run on another port than {port}", interval=0.1)
    assert int(Path(now["connect_id_file"]).read_text()) != secret
    assert shared_jupyter.log().count("connection ids do not match") >= 3
    assert not now["client_connected"]


def test_no_secret_in_argv_log_and_private_display(shared_jupyter):
    info = start_pvserver(shared_jupyter)
    secret = Path(info["connect_id_file"]).read_text().strip()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            assert secret.encode() not in cmdline, cmdline
    assert secret not in shared_jupyter.log()
    # The private display: the owner with the cookie gets in, another user does not.
    display = info["display"]
    xauthority = Path(info["connect_id_file"]).parent / "Xauthority"
    assert oct(xauthority.stat().st_mode & 0o777) == "0o600"
    env = dict(os.environ, DISPLAY=display, XAUTHORITY=str(xauthority))
    assert subprocess.run(["xdpyinfo"], env=env, capture_output=True).returncode == 0
    nobody = as_nobody("xdpyinfo", "-display", display)
    assert nobody.returncode != 0
    assert "unable to open display" in nobody.stderr


def listening_ports(pid: int) -> dict[int, str]:
    """TCP ports listening in ``pid``'s network namespace, with their bound address."""
    ports = {}
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A":  # LISTEN
            address, port = local.split(":")
            ports[int(port, 16)] = socket.inet_ntoa(bytes.fromhex(address)[::-1])
    return ports


def test_no_tcp_listener_is_reachable_beyond_loopback(shared_jupyter):
    """pvserver listens on every interface of a network namespace of its own; the app's
    only TCP listener on the host is the service's relay on 127.0.0.1. From another
    host neither is reachable (a listener on every interface, the control, is). No MPI
    port, none from Xvfb."""
    info = start_pvserver(shared_jupyter)
    assert info["network"].startswith("127.0.0.1 only"), info
    ours = tcp_listeners(shared_jupyter.descendants())
    assert len(ours) == 1, ours
    assert f" 127.0.0.1:{info['port']} " in f" {ours[0]} ", ours
    (pvserver,) = pvserver_pids(shared_jupyter)
    assert f"pid={pvserver}," not in ours[0]
    assert os.readlink(f"/proc/{pvserver}/ns/net") != os.readlink("/proc/self/ns/net")
    inner = listening_ports(pvserver)
    assert len(inner) == 1 and set(inner.values()) == {"0.0.0.0"}, inner
    (inner_port,) = inner
    with peer_host() as peer, socket.create_server(("0.0.0.0", 0)) as control:
        assert peer.can_connect(control.getsockname()[1]), "the peer host cannot reach us"
        assert not peer.can_connect(info["port"])
        assert not peer.can_connect(inner_port)
    # On the host itself only the relay answers: pvserver's port is not on this loopback.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", inner_port), 5)
    assert status(shared_jupyter)["state"] == "running"


class ServiceWithoutNamespaces:
    """The ParaView service, run by hand on a "node" whose kernel forbids unprivileged
    user namespaces, with the site's ``isolate_network`` setting ``mode``."""

    def __init__(self, tmp_path: Path, mode: str):
        self.socket = tmp_path / "service.sock"
        self.log = tmp_path / "service.log"
        argv = [
            *WITHOUT_USER_NAMESPACES,
            sys.executable,
            "-m",
            "hpc_proxies.paraview.service",
            "--socket",
            str(self.socket),
            "--dir",
            str(ensure_private_dir(tmp_path / "app")),
            "--prefix",
            "/paraview/",
            "--python",
            DEBIAN_PYTHON,
            "--xvfb",
            shutil.which("Xvfb") or "Xvfb",
            "--isolate-network",
            mode,
        ]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

        def listening() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            return self.socket.exists()

        until(listening, 30, f"the service to listen (its log: {self.log})", interval=0.1)

    def post(self, what: str) -> tuple[int, dict]:
        class Connection(http.client.HTTPConnection):
            def connect(conn) -> None:
                conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                conn.sock.connect(str(self.socket))

        connection = Connection("localhost", timeout=120)
        connection.request("POST", f"/api/{what}")
        response = connection.getresponse()
        return response.status, json.loads(response.read())

    def stop(self) -> set[int]:
        """SIGTERM the service; return what it had started that still runs."""
        started = procs.descendants(self.proc.pid)
        self.proc.terminate()
        self.proc.wait(60)
        return wait_gone(started, 15)


def test_where_namespaces_are_forbidden_auto_says_so_and_still_works(tmp_path):
    """isolate_network = 'auto' on such a node: pvserver listens on every interface
    behind its connect-id, and the status says so and why. The exposure is real: another
    host reaches the port (which also shows the peer-host check can see a listener)."""
    service = ServiceWithoutNamespaces(tmp_path, "auto")
    try:
        code, info = service.post("start")
        assert code == 200, info
        assert info["network"].startswith("every interface"), info
        assert "user.max_user_namespaces" in info["network"]
        with peer_host() as peer:
            assert peer.can_connect(info["port"])
    finally:
        assert not service.stop()
    assert "Traceback" not in service.log.read_text()


def test_where_namespaces_are_forbidden_required_refuses_clearly(tmp_path):
    service = ServiceWithoutNamespaces(tmp_path, "required")
    try:
        code, info = service.post("start")
        assert code == 503, info
        assert info["state"] == "failed"
        assert "isolate_network = 'required'" in info["error"]
        assert "user.max_user_namespaces" in info["error"]  # how to allow them
        assert not procs.descendants(service.proc.pid)  # no pvserver, no Xvfb left over
    finally:
        assert not service.stop()
    assert "Traceback" not in service.log.read_text()


# ------------------------------------------------------------------ lifecycle
#: A neighbour's attack on the relay: hold idle connections open (ParaView's handshake
#: waits on them), or send garbage; it prints what became of each connection.
NEIGHBOUR_ATTACK = """
import socket, sys, time
port, mode, count, hold = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
conns = [socket.create_connection(("127.0.0.1", port), 10) for _ in range(count)]
print("holding", len(conns), flush=True)
for conn in conns:
    if mode == "garbage":
        try:
            conn.sendall(bytes(range(256)) * 64)
        except OSError as err:
            print("send:", type(err).__name__, flush=True)
deadline = time.monotonic() + hold
for conn in conns:
    conn.settimeout(max(0.1, deadline - time.monotonic()))
    try:
        print("closed" if conn.recv(1) == b"" else "open", flush=True)
    except socket.timeout:
        print("open", flush=True)
    except OSError as err:
        print("closed:", type(err).__name__, flush=True)
"""


def timed_connect(kernel: PvKernel) -> float:
    """Seconds a fresh kernel's connect() takes; the kernel is stopped after."""
    with kernel:
        out, err = kernel.run(
            "import time\nimport hpc_proxies.paraview as pvh\nstarted = time.monotonic()\n"
            "pvh.connect()\nprint('SECONDS', time.monotonic() - started)"
        )
    assert err is None, err
    return float(out.split("SECONDS")[1].split()[0])


@pytest.fixture(scope="module")
def connect_seconds_alone(shared_jupyter) -> float:
    """What the neighbour tests compare with: the seconds a fresh kernel's connect()
    takes with no neighbour about, measured once, in the same run on the same server,
    and as they measure it (pvserver waits for a client)."""
    shared_jupyter.wait_for_app("/paraview/api/status")
    post(shared_jupyter, "stop")
    with PvKernel(shared_jupyter) as kernel:  # it starts while pvserver does
        start_pvserver(shared_jupyter)  # connect() finds pvserver waiting for a client
        seconds = timed_connect(kernel)
    wait_for_state(shared_jupyter, "stopped")
    return seconds


@pytest.mark.parametrize("mode", ["idle", "garbage"])
def test_a_neighbour_cannot_stall_or_reach_pvserver(
    shared_jupyter, neighbour, mode, connect_seconds_alone
):
    """Another user of the node opens connections to the user's relay on 127.0.0.1 (its
    port and owner are easy to find with ``ss``) and holds them idle, or sends garbage.
    The relay closes them before a byte reaches pvserver, the status page names the
    neighbour, and the owner's connect() takes no longer than it does without them
    (measured in the same run): before, it waited as long as the neighbour held on."""
    usual = connect_seconds_alone
    post(shared_jupyter, "stop")  # connect() finds a fresh pvserver waiting, as alone
    refused_before = status(shared_jupyter)["refused"]["total"]

    with PvKernel(shared_jupyter) as kernel:  # it starts while pvserver does
        info = start_pvserver(shared_jupyter)
        attack = neighbour.popen(
            "/usr/bin/python3", "-c", NEIGHBOUR_ATTACK, str(info["port"]), mode, "3", "120"
        )
        try:
            assert attack.stdout is not None
            assert attack.stdout.readline().startswith("holding 3"), attack.stderr
            with_neighbour = timed_connect(kernel)
            outcome = [attack.stdout.readline().strip() for _ in range(3)]
        finally:
            attack.kill()
            attack.wait()
    assert all(line.startswith("closed") for line in outcome), outcome
    assert with_neighbour <= 2 * usual, (usual, with_neighbour)
    refused = status(shared_jupyter)["refused"]
    assert refused["total"] == refused_before + 3, refused
    assert refused["latest"][0]["user"] == neighbour.name
    assert refused["latest"][0]["uid"] == neighbour.uid
    assert f"refused a connection from {neighbour.name} (uid {neighbour.uid})" in (
        shared_jupyter.log()
    )
    print(f"connect(): {usual:.2f} s alone, {with_neighbour:.2f} s with a neighbour ({mode})")
    wait_for_state(shared_jupyter, "stopped")


def test_a_stalled_handshake_of_ones_own_is_timed_out(shared_jupyter):
    """A connection of the user's own that reaches pvserver and says nothing (a hung
    client) would hold pvserver's handshake for ever: after the site's
    ``handshake_timeout`` (HANDSHAKE_SECONDS here) pvserver starts anew, and a connect()
    waiting behind it gets through, within its deadline."""
    with PvKernel(shared_jupyter) as kernel:  # it starts while pvserver does
        info = start_pvserver(shared_jupyter)
        stalls_before = info["stalled_handshakes"]
        _, err = kernel.run("import time\nimport hpc_proxies.paraview as pvh")
        assert err is None, err
        # The kernel is ready before the hung connection comes, so that its connect()
        # starts at once behind it: it can get through no sooner than the timeout.
        with socket.create_connection(("127.0.0.1", info["port"]), 10) as hung:
            try:
                out, err = kernel.run(
                    "started = time.monotonic()\npvh.connect(timeout=90)\n"
                    "print('SECONDS', time.monotonic() - started)"
                )
            finally:
                kernel.stop()
            hung.settimeout(10)
            assert hung.recv(1) == b""  # pvserver's restart ended the hung connection
    assert err is None, err
    seconds = float(out.split("SECONDS")[1].split()[0])
    assert HANDSHAKE_SECONDS <= seconds < HANDSHAKE_SECONDS + 60, seconds
    now = status(shared_jupyter)
    assert now["stalled_handshakes"] == stalls_before + 1, now
    log = shared_jupyter.log()
    assert f"did not finish ParaView's handshake within {HANDSHAKE_SECONDS:g} s" in log
    wait_for_state(shared_jupyter, "stopped")


def test_stale_server_files_do_not_mislead_connect(shared_jupyter):
    """A killed Jupyter leaves its ``jpserver-*.json`` behind. Beside the live server's
    own file: one whose process is gone; one whose pid now belongs to another process,
    younger than the file; and one naming this kernel's own ancestor (the test) with a
    URL where no Jupyter answers. connect() still finds the live server that started it."""
    runtime = shared_jupyter.root_dir.parent / "jupyter/runtime"
    (real,) = runtime.glob("jpserver-*.json")
    info = json.loads(real.read_text())
    with socket.create_server(("127.0.0.1", 0)) as closed:
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}/"
    gone = subprocess.Popen(["true"])
    gone.wait()
    reused = subprocess.Popen(["sleep", "600"])
    stale = {
        gone.pid: info,
        reused.pid: {**info, "url": nowhere},
        os.getpid(): {**info, "url": nowhere},
    }
    written = []
    try:
        for pid, content in stale.items():
            path = runtime / f"jpserver-{pid}.json"
            path.write_text(json.dumps({**content, "pid": pid}))
            written.append(path)
        an_hour_ago = time.time() - 3600
        os.utime(runtime / f"jpserver-{reused.pid}.json", (an_hour_ago, an_hour_ago))
        kernel = PvKernel(shared_jupyter)
        try:
            out, err = kernel.run(
                "import hpc_proxies.paraview as pvh\nfrom paraview.simple import *\n"
                "from hpc_proxies.paraview.client import find_jupyter_server\n"
                "print('URL', find_jupyter_server().url)\npvh.connect()"
            )
        finally:
            kernel.stop()
    finally:
        for path in written:
            path.unlink()
        reused.kill()
        reused.wait()
    assert err is None, err
    assert f"URL {info['url']}" in out, out
    wait_for_state(shared_jupyter, "stopped")


def test_client_leaves_then_connect_again(shared_jupyter):
    """The client leaves (its kernel shuts down), pvserver exits with it, and connect()
    from the next kernel starts a new one, with a new port and id."""
    # The next kernel starts while the first works; its connect() comes after the first left.
    first_kernel, second_kernel = PvKernel(shared_jupyter), PvKernel(shared_jupyter)
    with second_kernel:
        with first_kernel:
            start_pvserver(shared_jupyter)  # while the kernels start
            _, err = first_kernel.run(
                "import hpc_proxies.paraview as pvh\nfrom paraview.simple import *\npvh.connect();"
            )
            assert err is None, err
            first = status(shared_jupyter)
            assert first["client_connected"], first
        wait_for_state(shared_jupyter, "stopped")
        assert not pvserver_pids(shared_jupyter)
        started = time.monotonic()
        _out, err = second_kernel.run(
            "import hpc_proxies.paraview as pvh\nfrom paraview.simple import *\n"
            "pvh.connect()\nShow(Sphere())\nprint(Render() is not None)"
        )
        assert err is None, err
        assert time.monotonic() - started < 60
        again = status(shared_jupyter)
        assert again["client_connected"] and again["port"] != first["port"]
    wait_for_state(shared_jupyter, "stopped")


def test_disconnect_then_connect_again_in_one_kernel(shared_jupyter, kernel):
    """Disconnect() in the notebook, even with the old connection still referenced
    (as ``c`` here), then connect() again: a working connection to a new pvserver."""
    _, err = kernel.run(
        "import hpc_proxies.paraview as pvh\nfrom paraview.simple import *\nc = pvh.connect()"
    )
    assert err is None, err
    first = status(shared_jupyter)
    assert first["client_connected"], first
    _, err = kernel.run("Disconnect()")
    assert err is None, err
    out, err = kernel.run(
        "c2 = pvh.connect()\nShow(Sphere())\nRender()\n"
        "from paraview import servermanager\nprint(servermanager.ActiveConnection is c2)"
    )
    assert err is None, err
    assert out.strip().endswith("True"), out
    again = status(shared_jupyter)
    assert again["client_connected"] and again["port"] != first["port"]


def test_a_second_kernel_is_told_pvserver_is_taken(shared_jupyter):
    """pvserver serves one client: a second kernel gets a clear error, not a hang."""
    first, second = PvKernel(shared_jupyter), PvKernel(shared_jupyter)
    try:
        start_pvserver(shared_jupyter)  # while the kernels start
        _, err = first.run("import hpc_proxies.paraview as pvh\npvh.connect();")
        assert err is None, err
        _, err = second.run("import hpc_proxies.paraview as pvh\npvh.connect();")
        assert err is not None and err["ename"] == "ParaViewError", err
        assert "already has a client" in err["evalue"]
        assert status(shared_jupyter)["client_connected"]
    finally:
        first.stop()
        second.stop()
    wait_for_state(shared_jupyter, "stopped")


def test_stop_from_status_page_ends_pvserver_and_xvfb(shared_jupyter):
    start_pvserver(shared_jupyter)
    assert pvserver_pids(shared_jupyter) and xvfb_pids(shared_jupyter)
    code, info = post(shared_jupyter, "stop")
    assert code == 200 and info["state"] == "stopped", info
    assert not pvserver_pids(shared_jupyter)
    assert not xvfb_pids(shared_jupyter)
    # The status page has the Stop button: test_interactive_view_in_the_browser clicks
    # it in chromium and sees pvserver and its X server end.
    page = shared_jupyter.request("/paraview/")
    assert page.status == 200 and "ParaView server" in page.text
    assert re.search(r"<button id='stop'[^>]*>Stop</button>", page.text), page.text[:2000]


def test_sigterm_to_jupyter_leaves_nothing(jupyter):
    start_pvserver(jupyter)
    assert pvserver_pids(jupyter) and xvfb_pids(jupyter)
    assert_stopping_leaves_nothing(jupyter, "paraview")


def test_connect_raises_when_disabled(tmp_path):
    with jupyter_with_site(tmp_path, "[apps.paraview]\nenabled = false\n") as server:
        k = PvKernel(server)
        try:
            out, err = k.run("import hpc_proxies.paraview as pvh\npvh.connect()")
        finally:
            k.stop()
        assert err is not None and err["ename"] == "ParaViewDisabled", (out, err)
        assert "disabled" in err["evalue"]


# ------------------------------------------------------------------ the browser
@pytest.mark.browser
def test_interactive_view_in_the_browser(shared_jupyter, kernel):
    """The view show() returns: the sphere is on screen, and dragging turns it."""
    out, err = kernel.run(
        "import hpc_proxies.paraview as pvh\nfrom paraview.simple import *\npvh.connect()\n"
        "s = Sphere(ThetaResolution=48, PhiResolution=48)\n"
        # Coloured by the normals' X: turning the sphere about its vertical axis shows
        # another side, and so another picture (a plain sphere looks the same from all).
        "d = Show(s)\nColorBy(d, ('POINTS', 'Normals', 'X'))\nResetCamera()"
    )
    assert err is None, err
    kernel_pids = {kernel.km.provisioner.process.pid}
    listening_before = tcp_listeners(kernel_pids)  # the kernel's own ZMQ channels
    out, err = kernel.run("frame = pvh.show()\nprint(frame.src)")
    assert err is None, err
    src = out.strip().splitlines()[-1]
    assert src.startswith("/paraview/view/")
    # The view is served on a unix socket: the kernel opened no TCP port for it.
    assert tcp_listeners(kernel_pids) == listening_before
    with chromium("paraview-failure", {"width": 800, "height": 600}) as context:
        page = context.new_page()
        page.goto(f"{shared_jupyter.url}{src}?token={shared_jupyter.token}")
        page.wait_for_function("window.paraviewFrames && window.paraviewFrames.length >= 1")
        page.wait_for_timeout(500)
        before = page.screenshot(path=ARTIFACTS / "paraview-view-before.png")
        ok, why = sphere_visible(before)
        assert ok, why
        frames = page.evaluate("window.paraviewFrames.length")
        page.mouse.move(400, 300)
        page.mouse.down()
        for step in range(1, 16):
            page.mouse.move(400 + step * 12, 300 + step * 4)
            page.wait_for_timeout(30)
        page.mouse.up()
        page.wait_for_function(f"window.paraviewFrames.length > {frames}")
        page.wait_for_timeout(800)
        after = page.screenshot(path=ARTIFACTS / "paraview-view-after.png")
        changed = differing(
            Image.open(io.BytesIO(before)).convert("RGB"),
            Image.open(io.BytesIO(after)).convert("RGB"),
        )
        assert changed > 0.005, f"only {changed:.2%} of the pixels changed after the drag"
        ok, why = sphere_visible(after)
        assert ok, why
        # The status page knows a client is connected.
        status_page = context.new_page()
        status_page.goto(f"{shared_jupyter.url}/paraview/?token={shared_jupyter.token}")
        status_page.wait_for_function(
            "document.getElementById('client').textContent === 'connected'"
        )
        assert status_page.inner_text("#state") == "Running"
        reachable = status_page.inner_text("#network")
        assert reachable.startswith("127.0.0.1 only"), reachable
        status_page.screenshot(path=ARTIFACTS / "paraview-status.png")
        # Its Stop button (a cookie-authenticated POST with Jupyter's XSRF token)
        # ends pvserver and its X server.
        running = pvserver_pids(shared_jupyter) | xvfb_pids(shared_jupyter)
        assert len(running) >= 2, running
        status_page.click("#stop")
        status_page.wait_for_function("document.getElementById('state').textContent === 'Stopped'")
        assert not wait_gone(running, 10)
        assert not pvserver_pids(shared_jupyter) and not xvfb_pids(shared_jupyter)


@pytest.mark.browser
def test_the_status_page_shows_refused_connections(shared_jupyter, neighbour):
    """What the user sees of a neighbour's attempt: the tile's "Refused connections" row,
    naming the neighbour."""
    info = start_pvserver(shared_jupyter)
    knock = neighbour.run(
        "/usr/bin/python3",
        "-c",
        f"import socket; socket.create_connection(('127.0.0.1', {info['port']}), 10).recv(1)",
    )
    assert knock.returncode == 0, knock.stderr
    with chromium("paraview-refused-failure", {"width": 800, "height": 600}) as context:
        page = context.new_page()
        page.goto(f"{shared_jupyter.url}/paraview/?token={shared_jupyter.token}")
        page.wait_for_selector("#refused-row", state="visible")
        text = page.inner_text("#refused-row")
        page.screenshot(path=ARTIFACTS / "paraview-status-refused.png")
    assert "Refused connections" in text and f"the latest from {neighbour.name}" in text, text
    post(shared_jupyter, "stop")


# ------------------------------------------------------------------ the kernel installer
def test_install_kernel_for_a_user(tmp_path):
    """``hpc-proxies install-kernel paraview --user``: a kernelspec in the user's Jupyter
    directory, whose Python imports ParaView, ipykernel and hpc_proxies."""
    hpc_proxies_cli = Path(sys.executable).parent / "hpc-proxies"
    env = dict(os.environ, HOME=str(tmp_path), JUPYTER_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run(
        [str(hpc_proxies_cli), "install-kernel", "paraview", "--user"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    spec = json.loads((tmp_path / "data/kernels/paraview/kernel.json").read_text())
    assert spec["display_name"] == "ParaView (pvpython)"
    python = spec["argv"][0]
    assert python.startswith(str(tmp_path / ".local/share/hpc-proxies/paraview-kernel"))
    assert spec["argv"][1:] == ["-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert (tmp_path / "data/kernels/paraview/logo-svg.svg").exists()
    # Every user reads a kernel an admin installed (--sys-prefix): nothing is private.
    kernel_dir = tmp_path / "data/kernels/paraview"
    assert stat.S_IMODE(kernel_dir.stat().st_mode) == 0o755
    for path in kernel_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path
    imports = subprocess.run(
        [
            python,
            "-c",
            "import paraview.simple, ipykernel, hpc_proxies.paraview as p; print(p.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imports.returncode == 0, imports.stderr
    assert imports.stdout.strip().endswith("hpc_proxies/paraview/__init__.py")


def test_install_kernel_with_a_python_without_paraview(tmp_path):
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "hpc-proxies"),
            "install-kernel",
            "paraview",
            "--user",
            "--python",
            sys.executable,
        ],
        env=dict(os.environ, HOME=str(tmp_path), JUPYTER_DATA_DIR=str(tmp_path / "data")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "cannot import ParaView" in done.stderr and "python3-paraview" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data/kernels/paraview").exists()


# ------------------------------------------------------------------ leftovers
def kernel_started_by(server):
    """A ParaView kernel that the Jupyter server starts (``POST /api/kernels``, as
    JupyterLab does), so the server's death reaches it; and a blocking client attached
    to the kernel's connection file in the server's runtime directory."""
    import urllib.request

    from jupyter_client import BlockingKernelClient

    request = urllib.request.Request(
        f"{server.url}/api/kernels",
        method="POST",
        data=json.dumps({"name": "paraview"}).encode(),
        headers={"Authorization": f"token {server.token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        kernel_id = json.loads(response.read())["id"]
    runtime = server.root_dir.parent / "jupyter" / "runtime"
    (connection_file,) = runtime.glob(f"kernel-{kernel_id}*.json")
    client = BlockingKernelClient(connection_file=str(connection_file))
    client.load_connection_file()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    return kernel_id, client


def run_in(client, code: str, timeout: float = 180) -> str:
    """The cell's stdout; fails the test on an error."""
    out: list[str] = []
    errors: list[str] = []

    def hook(msg) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            errors.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")

    client.execute_interactive(code, timeout=timeout, output_hook=hook)
    assert not errors, errors
    return "".join(out)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGKILL"])
def test_jupyter_dying_with_a_connected_kernel_leaves_nothing(tmp_path, signame):
    """The Jupyter server dies (SIGTERM, or SIGKILL) while a ParaView kernel it started is
    connected: the kernel is killed, so its atexit never runs, yet its private Xvfb
    directory goes, and so does every process. Temporary directories go to a TMPDIR of
    the test's own (tempfile, and so the kernel's mkdtemp, honour it), so that other
    tests running at the same time cannot make /tmp look dirty or clean."""
    import signal
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="hpcp-tmpdir-"))  # short: unix socket paths
    try:
        with jupyter_with_site(tmp_path, env_update={"TMPDIR": str(scratch)}) as server:
            _, client = kernel_started_by(server)
            try:
                out = run_in(
                    client,
                    "import os\nimport hpc_proxies.paraview as pvh\npvh.connect()\n"
                    "print('XAUTHORITY', os.environ['XAUTHORITY'])",
                )
            finally:
                client.stop_channels()
            kernel_dir = Path(out.split("XAUTHORITY", 1)[1].split()[0]).parent
            assert kernel_dir.name.startswith("hpc-proxies-pvkernel-"), kernel_dir
            assert kernel_dir.parent == scratch and kernel_dir.is_dir()
            everything = server.descendants()
            server.proc.send_signal(getattr(signal, signame))
            server.proc.wait(15)
            left = wait_gone(everything, 15)
            assert not left, [cmdline(pid) for pid in left]
        assert not kernel_dir.exists(), f"{kernel_dir} left behind"
        assert not list(scratch.glob("hpc-proxies*")), list(scratch.iterdir())
    finally:
        shutil.rmtree(scratch)
