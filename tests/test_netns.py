"""hpc_proxies.netns with real processes: a TCP server in a private network namespace,
reached only through the keeper's unix socket and a relay on the host's loopback."""

from __future__ import annotations

import asyncio
import grp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from network import WITHOUT_USER_NAMESPACES, peer_host
from processes import wait_gone
from waiting import until_async

from hpc_proxies import netns
from hpc_proxies.runtime import ensure_private_dir

#: A server that listens on every interface (as pvserver does), says where, and
#: answers each connection with what it read, upper-cased, three times.
ECHO_SERVER = textwrap.dedent(
    """
    import os, socket
    server = socket.create_server(("0.0.0.0", 0))
    print("PORT", server.getsockname()[1], os.readlink("/proc/self/ns/net"), flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            data = b"".join(iter(lambda: conn.recv(1 << 20), b""))
            if data == b"quit":
                raise SystemExit(7)
            conn.sendall(data.upper() * 3)
    """
)


class Keeper:
    """The keeper running ECHO_SERVER, as the ParaView service runs pvserver."""

    def __init__(self, directory: Path):
        self.connector = ensure_private_dir(directory) / "connector.sock"
        argv = netns.keeper_argv(self.connector, [sys.executable, "-c", ECHO_SERVER])
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.first_line = self.proc.stdout.readline().strip()
        words = self.proc.stdout.readline().split()
        self.inner_port, self.inner_netns = int(words[1]), words[2]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def keeper(tmp_path):
    k = Keeper(tmp_path / "private")
    yield k
    k.stop()


def children(pid: int) -> set[int]:
    tasks = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in tasks.read_text().split()} if tasks.exists() else set()


async def through_relay(connector: Path, inner_port: int, payloads: list[bytes]) -> list[bytes]:
    """Send each payload on its own connection to a relay; return the answers."""
    relay = await netns.LoopbackRelay(connector, inner_port).start()
    answers = []
    try:
        for payload in payloads:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(payload)
            writer.write_eof()
            answers.append(await reader.read())
            writer.close()
    finally:
        await relay.close()
    return answers


def test_relay_reaches_the_server_in_its_namespace(keeper):
    assert keeper.first_line == f"{netns.MARK} ready"
    assert keeper.inner_netns != os.readlink("/proc/self/ns/net")
    assert oct(keeper.connector.stat().st_mode & 0o777) == "0o600"
    big = os.urandom(3 * 1024 * 1024).hex().encode()  # crosses many reads and drains
    answers = asyncio.run(through_relay(keeper.connector, keeper.inner_port, [b"hello", big]))
    assert answers[0] == b"HELLO" * 3
    assert answers[1] == big.upper() * 3
    # The server's port is on the namespace's loopback, not on the host's.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", keeper.inner_port), 5)


def test_closing_the_relay_ends_its_connections(keeper):
    async def scenario() -> tuple[bytes, int]:
        relay = await netns.LoopbackRelay(keeper.connector, keeper.inner_port).start()
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"ping")  # no EOF: the server waits for more
        await writer.drain()
        # The client's socket and the inner one, once the relay has connected inside.
        await until_async(lambda: len(relay.open) == 2, 10, "the relay's two sockets")
        for sock in relay.open:  # small writes go at once (no 40 ms delayed-ACK stalls)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await relay.close()
        ended = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await until_async(lambda: not relay.open, 5, "the relay to close its sockets", 0.1)
        return ended, len(relay.open), relay.port

    ended, still_open, port = asyncio.run(scenario())
    assert ended == b"" and still_open == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), 5)


def test_nothing_is_reachable_from_another_host(keeper):
    async def peer_reaches_a_relay(peer) -> bool:
        relay = await netns.LoopbackRelay(keeper.connector, keeper.inner_port).start()
        try:
            return await asyncio.to_thread(peer.can_connect, relay.port)
        finally:
            await relay.close()

    with peer_host() as peer, socket.create_server(("0.0.0.0", 0)) as control:
        assert peer.can_connect(control.getsockname()[1]), "the peer host cannot reach us"
        assert not peer.can_connect(keeper.inner_port)
        assert not asyncio.run(peer_reaches_a_relay(peer))


#: Another user's client: connect, send, half-close, and print what came back.
NEIGHBOUR_CLIENT = textwrap.dedent(
    """
    import socket, sys
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), 10) as conn:
        conn.settimeout(10)
        try:
            conn.sendall(sys.argv[2].encode())
            conn.shutdown(socket.SHUT_WR)
            print(repr(b"".join(iter(lambda: conn.recv(1 << 16), b""))))
        except OSError as err:
            print("closed:", type(err).__name__)
    """
)


def test_relay_refuses_another_users_connection_before_forwarding_a_byte(keeper, neighbour):
    """A user of the same host connects to the relay on 127.0.0.1: it is closed without
    reaching the server (which would answer HELLOHELLOHELLO), and reported with its uid;
    the relay's own user still gets through, before and after."""
    refusals: list[netns.Refusal] = []

    async def scenario() -> tuple[str, list[bytes]]:
        relay = await netns.LoopbackRelay(
            keeper.connector, keeper.inner_port, on_refusal=refusals.append
        ).start()
        try:
            before = await _exchange(relay.port, b"mine")
            theirs = await asyncio.to_thread(
                neighbour.run, "/usr/bin/python3", "-c", NEIGHBOUR_CLIENT, str(relay.port), "hello"
            )
            after = await _exchange(relay.port, b"mine again")
            return theirs.stdout + theirs.stderr, [before, after]
        finally:
            await relay.close()

    theirs, mine = asyncio.run(scenario())
    assert "HELLO" not in theirs and ("b''" in theirs or "closed:" in theirs), theirs
    assert mine == [b"MINE" * 3, b"MINE AGAIN" * 3]
    assert [r.uid for r in refusals] == [neighbour.uid]
    assert abs(refusals[0].when - time.time()) < 60


def test_the_peer_of_a_loopback_connection_is_its_owner(neighbour):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as mine:
            accepted, _ = server.accept()
            with accepted:
                assert netns.loopback_peer_uid(accepted) == os.getuid()
            mine.close()
        theirs = neighbour.popen(
            "/usr/bin/python3",
            "-c",
            f"import socket, sys; s = socket.create_connection(('127.0.0.1', {port}));"
            "print('in', flush=True); sys.stdin.read()",
        )
        try:
            accepted, _ = server.accept()
            with accepted:
                assert netns.loopback_peer_uid(accepted) == neighbour.uid
        finally:
            theirs.kill()
            theirs.wait()


async def _exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return answer


def test_connector_refuses_a_port_without_a_server(keeper):
    with socket.create_server(("127.0.0.1", 0)) as unused:
        port = unused.getsockname()[1]
    with pytest.raises(ConnectionRefusedError, match="error"):
        netns.connect_inside(keeper.connector, port)
    # A relay client whose inner connection fails sees its connection closed.
    assert asyncio.run(through_relay(keeper.connector, port, [b""])) == [b""]


def test_exit_code_and_signals_pass_through(tmp_path):
    first = Keeper(tmp_path / "a")
    with netns.connect_inside(first.connector, first.inner_port) as conn:
        conn.sendall(b"quit")
        conn.shutdown(socket.SHUT_WR)
    assert first.proc.wait(30) == 7
    assert not first.connector.exists()

    second = Keeper(tmp_path / "b")
    (server,) = children(second.proc.pid)
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(30) == 128 + signal.SIGTERM
    assert not wait_gone({server}, 10)

    third = Keeper(tmp_path / "c")
    (server,) = children(third.proc.pid)
    third.proc.kill()  # no chance to pass anything on: the server dies with its parent
    third.proc.wait()
    assert not wait_gone({server}, 10)


PYTHON = ["/usr/bin/python3", "-c"]


def test_an_unprivileged_user_gets_the_namespace():
    """What a user of a login node does: no root, only its own uid mapped; and data
    shared through a project group stays readable inside."""
    with tempfile.TemporaryDirectory() as readable:  # a copy that user "nobody" can read
        os.chmod(readable, 0o755)
        copy = Path(readable)
        shutil.copytree(Path(netns.__file__).parent, copy / "hpc_proxies")
        for path in copy.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        project_data = copy / "project-data"
        project_data.write_text("shared with the group")
        os.chown(project_data, 0, grp.getgrnam("users").gr_gid)
        project_data.chmod(0o040)  # only the group "users" may read it
        code = (
            "import os, socket, sys\n"
            f"sys.path.insert(0, {str(copy)!r})\n"
            "from hpc_proxies import netns\n"
            "outside = os.readlink('/proc/self/ns/net')\n"
            "netns.enter_private_network()\n"
            "server = socket.create_server(('127.0.0.1', 0))\n"
            "socket.create_connection(server.getsockname(), 5)\n"
            "print(os.getuid(), outside != os.readlink('/proc/self/ns/net'))\n"
            f"print(open({str(project_data)!r}).read())\n"
        )
        done = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--groups=users", "--", *PYTHON, code],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": "/usr/bin:/bin"},
            check=False,
        )
    assert done.returncode == 0, done.stderr
    ids, data = done.stdout.splitlines()
    assert ids.split() == ["65534", "True"]  # the same uid; a new namespace
    assert data == "shared with the group"


def test_where_namespaces_are_forbidden_it_says_how_to_allow_them(tmp_path):
    connector = ensure_private_dir(tmp_path / "private") / "connector.sock"
    marker = tmp_path / "ran"
    argv = netns.keeper_argv(connector, ["touch", str(marker)])
    done = subprocess.run(
        WITHOUT_USER_NAMESPACES + argv, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == netns.EXIT_UNAVAILABLE, done
    assert done.stdout.startswith(f"{netns.MARK} unavailable")
    assert "user.max_user_namespaces" in done.stdout
    assert not marker.exists()  # the command never ran without its namespace
    assert "Traceback" not in done.stderr


def test_a_missing_command_is_named(tmp_path):
    connector = ensure_private_dir(tmp_path / "private") / "connector.sock"
    argv = netns.keeper_argv(connector, [str(tmp_path / "no-such-pvserver")])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 127
    assert f"cannot start {tmp_path / 'no-such-pvserver'}: " in done.stderr
    assert "Traceback" not in done.stderr
