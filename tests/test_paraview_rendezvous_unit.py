"""ParaView's handshake as the rendezvous answers it, on the bytes ParaView 5.11 sends
(recorded from a real client and a real reverse pvserver: both send the same), and the
environment a pvserver job is given. The whole path, a real pvserver connecting back
and a real client joined to it, is ``test_paraview_slurm``."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from hpc_proxies.batchjob import job_environment
from hpc_proxies.paraview.rendezvous import (
    ACCEPTED,
    WRONG_ID,
    HandshakeRefused,
    WrongId,
    answer_handshake,
)

HASH = b"5e7a24e1e7033d8c49830a3775623523\0"


def tagged(tag: int, data: bytes) -> bytes:
    return struct.pack("<II", tag, len(data)) + data


def connecting_side(connect_id: int | None) -> bytes:
    """What a connecting ParaView 5.11 process (client, or pvserver with --rc) sends."""
    handshake = b"paraview-5.11." + (
        b"connect_id.%d." % connect_id if connect_id is not None else b""
    )
    handshake += b"renderingbackend.opengl2\0"
    return (
        tagged(0x3C3C3C3C, b"\0")
        + tagged(0x3E3E3E3E, struct.pack("<i", 100))
        + tagged(0x3F3F3F3F, HASH)
        + tagged(0x3D3D3D3D, struct.pack("<i", 1))
        + tagged(99991, struct.pack("<i", len(handshake)))
        + tagged(99991, handshake)
    )


def answered(sent: bytes, connect_id: int, timeout: float = 5) -> tuple[bytes, Exception | None]:
    """The rendezvous' answer to ``sent`` (all it wrote back), and what it raised."""
    ours, theirs = socket.socketpair()
    outcome: list[Exception | None] = [None]

    def serve() -> None:
        try:
            answer_handshake(ours, connect_id, timeout)
        except OSError as err:
            outcome[0] = err
        finally:
            ours.shutdown(socket.SHUT_WR)

    worker = threading.Thread(target=serve)
    worker.start()
    theirs.sendall(sent)
    back = b""
    while chunk := theirs.recv(4096):
        back += chunk
    worker.join()
    theirs.close()
    ours.close()
    return back, outcome[0]


def test_the_right_connect_id_gets_the_accepting_sides_answers():
    sent = connecting_side(4242)
    back, error = answered(sent, 4242)
    assert error is None
    # The socket layer's four messages come back as sent; then "accepted".
    assert back == sent[: len(back) - 12] + struct.pack("<IIi", 99990, 4, ACCEPTED)


@pytest.mark.parametrize("presented", [4243, 42420, 424, None])
def test_any_other_id_is_refused_as_pvserver_refuses_it(presented):
    back, error = answered(connecting_side(presented), 4242)
    assert isinstance(error, WrongId)
    assert back.endswith(struct.pack("<IIi", 99990, 4, WRONG_ID))


def test_garbage_is_refused_before_anything_is_answered():
    back, error = answered(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4, 4242)
    assert isinstance(error, HandshakeRefused) and back == b""


def test_silence_ends_at_the_timeout():
    ours, theirs = socket.socketpair()
    with ours, theirs, pytest.raises(OSError):
        answer_handshake(ours, 4242, timeout=0.2)


def test_a_job_gets_no_secret_of_the_jupyter_servers_environment():
    env = {
        "PATH": "/usr/bin",
        "HOME": "/home/ada",
        "JUPYTERHUB_API_TOKEN": "t",
        "JPY_API_TOKEN": "t",
        "JUPYTER_TOKEN": "t",
        "AWS_SECRET_ACCESS_KEY": "k",
        "MY_PASSWORD": "p",
        "SSH_AUTH_SOCK": "/tmp/s",
        "API_KEY": "k",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
    }
    assert job_environment(env) == {
        "PATH": "/usr/bin",
        "HOME": "/home/ada",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
    }
