"""Reading the VNC server's socket for the bridge: what has arrived goes on as one
message, at once, and never more than the limit. Real sockets, no app."""

from __future__ import annotations

import asyncio
import socket

from hpc_proxies.wsjoin import coalesced_chunks

PIECE = 16 * 1024  # what TigerVNC writes at a time


def pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    return ours, theirs


def test_pieces_already_there_go_as_one_message():
    async def scenario() -> list[int]:
        ours, theirs = pair()
        for n in range(5):
            theirs.sendall(bytes([n]) * PIECE)
        theirs.close()
        sizes = [len(chunk) async for chunk in coalesced_chunks(ours)]
        ours.close()
        return sizes

    assert asyncio.run(scenario()) == [5 * PIECE]


def test_a_message_never_exceeds_the_limit_and_keeps_the_bytes_in_order():
    async def scenario() -> tuple[list[int], bytes]:
        ours, theirs = pair()
        sent = bytes(range(256)) * (5 * PIECE // 256)
        theirs.sendall(sent)
        theirs.close()
        chunks = [chunk async for chunk in coalesced_chunks(ours, limit=2 * PIECE)]
        ours.close()
        return [len(c) for c in chunks], b"".join(chunks) == sent

    sizes, intact = asyncio.run(scenario())
    assert sizes == [2 * PIECE, 2 * PIECE, PIECE] and intact


def test_what_has_arrived_goes_at_once_without_waiting_for_more():
    async def scenario() -> bytes:
        ours, theirs = pair()
        theirs.sendall(b"RFB 003.008\n")  # and nothing more for now: the peer stays open
        chunks = coalesced_chunks(ours)
        first = await asyncio.wait_for(anext(chunks), timeout=5)
        theirs.close()
        ours.close()
        return first

    assert asyncio.run(scenario()) == b"RFB 003.008\n"
