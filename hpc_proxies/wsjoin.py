"""Joining a browser's websocket to another connection, message by message, both ways.

The VNC bridge joins a websocket to a unix socket (:mod:`hpc_proxies.bridge`); the
ParaView service joins one to a kernel's websocket (:mod:`hpc_proxies.paraview.web`).
Both need the same two things, so they are here once:

* backpressure: each message is sent on with an awaited send (``send_bytes``, or
  ``sock_sendall``), so a slow receiver slows its sender instead of filling this
  process's memory (jupyter-server-proxy's raw socket proxy grows to a gigabyte);
* an end: when either direction ends (a close, an error, EOF), the other is cancelled.

Websockets on both ends are made with ``compress=False``: permessage-deflate would cost
the proxy hop a factor of ten in throughput.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

#: What one side receives and sends: a websocket's binary or text message, or a
#: chunk of a socket's bytes.
Message = bytes | str
#: Either end of a websocket (the browser's, or one this process opened).
WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse
#: The most one chunk of a socket carries (read at once, and sent as one message).
CHUNK = 256 * 1024


@dataclass(frozen=True)
class Side:
    """One end of a joined connection: the messages it receives, and how to send to it
    (a coroutine that returns once the message is on its way, which is the backpressure)."""

    messages: AsyncIterator[Message]
    send: Callable[[Message], Awaitable[None]]

    @classmethod
    def websocket(cls, ws: WebSocket) -> Side:
        """A websocket: binary and text messages, until it closes or fails."""
        return cls(_websocket_messages(ws), lambda message: _send_to_websocket(ws, message))

    @classmethod
    def socket(cls, sock: socket.socket) -> Side:
        """A connected non-blocking stream socket, read as :func:`coalesced_chunks`."""
        return cls(coalesced_chunks(sock), lambda message: _send_to_socket(sock, message))


async def join(one: Side, other: Side) -> None:
    """Pass messages both ways until either side ends; then stop the other direction."""
    await until_either_ends(pump(one.messages, other.send), pump(other.messages, one.send))


async def pump(
    messages: AsyncIterator[Message], send: Callable[[Message], Awaitable[None]]
) -> None:
    """One direction: each message is sent before the next is read, so a slow receiver
    holds the sender back rather than queueing here."""
    async for message in messages:
        await send(message)


async def until_either_ends(*directions: Awaitable[None]) -> None:
    """Run both directions of a joined connection; when one ends, cancel the other."""
    tasks = [asyncio.ensure_future(direction) for direction in directions]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def _websocket_messages(ws: WebSocket) -> AsyncIterator[Message]:
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.BINARY:
            yield msg.data
        elif msg.type == aiohttp.WSMsgType.TEXT:
            yield msg.data
        else:  # an error (a close ends the iteration itself)
            return


async def _send_to_websocket(ws: WebSocket, message: Message) -> None:
    if isinstance(message, bytes):
        await ws.send_bytes(message)  # waits while the receiving side is slow
    else:
        await ws.send_str(message)


async def coalesced_chunks(sock: socket.socket, limit: int = CHUNK) -> AsyncIterator[bytes]:
    """Chunks of ``sock`` until EOF, each all that has arrived when it is read.

    A VNC server writes an update in pieces (TigerVNC: 16 KiB), and each message costs
    every hop to the browser the same again (jupyter-server-proxy: ~140 us in Python).
    So after waiting for the first bytes, take what else is already in the socket,
    without waiting for more: fewer, larger messages, and no added latency. At most
    ``limit`` bytes a message.
    """
    loop = asyncio.get_running_loop()
    buffer = bytearray(limit)
    view = memoryview(buffer)
    while size := await loop.sock_recv_into(sock, view):
        while size < limit:
            try:
                got = sock.recv_into(view[size:])
            except (BlockingIOError, InterruptedError):
                break  # nothing more yet: send what we have now
            if not got:
                break  # EOF: send what we have; the next wait returns 0
            size += got
        yield bytes(view[:size])


async def _send_to_socket(sock: socket.socket, message: Message) -> None:
    data = message if isinstance(message, bytes) else message.encode()
    await asyncio.get_running_loop().sock_sendall(sock, data)  # waits while the peer is slow
