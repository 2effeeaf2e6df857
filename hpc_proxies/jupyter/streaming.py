"""Large response bodies streamed through jupyter-server-proxy's handlers, with backpressure.

jupyter-server-proxy 4.6 reads a whole response into the Jupyter server before it sends
the first byte (``_proxy_buffered``), so that its ``rewrite_response`` hooks can change
it; its tornado client refuses a body over 100 MiB (``max_body_size``) with a 599, and
each buffered byte costs about two in the server's memory. Only a request that says
``Accept: text/event-stream`` is streamed (``_proxy_progressive``), under the same
100 MiB limit and without backpressure (a slow reader makes the server hold what the app
sent). A user downloading a big file from an app (RStudio's file pane) gets an error.

:class:`StreamingMixin` goes in front of jupyter-server-proxy's handler class of an app
(:func:`streaming_handler`) and takes over ``_proxy_buffered``, keeping everything else
of the engine (authentication, launching, ``mappath``, request headers, websockets):

* the request goes to the app as jupyter-server-proxy builds it, but the body comes in
  chunks; the first :data:`BUFFER_LIMIT` bytes are kept;
* a response that ends within that (pages, API answers, errors, HEAD) or that a rewrite
  hook may change (a redirect, or a path in ``rewritten_paths``: the entry pages whose
  secret or URL parameters the hooks handle) is handed to jupyter-server-proxy's own
  ``_proxy_buffered``, as if its client had fetched it: the hooks, its header handling
  and its errors (a refused connection, a timeout) stay exactly the engine's;
* any other response is passed on as it comes: the app's status and headers (its
  ``Content-Length`` too), then each chunk, the next read from the app waiting until
  the last chunk is out to the browser (tornado awaits the streaming callback's
  future, here tornado's own ``flush``: jupyter-server-proxy's handlers wrap ``flush``
  and drop that future). The Jupyter server then holds at most the limit and a chunk
  per download.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Awaitable, Iterable
from typing import Any

from tornado import httpclient, httputil, web
from tornado.iostream import IOStream, StreamClosedError
from tornado.simple_httpclient import SimpleAsyncHTTPClient

log = logging.getLogger("ServerApp.hpc_proxies")

#: A body up to this size is buffered and goes through jupyter-server-proxy's own path
#: (and its rewrite hooks); a larger one is streamed if no hook may rewrite it.
BUFFER_LIMIT = 1 << 20
#: The most a response that a hook may rewrite can hold in memory: jupyter-server-proxy's
#: own limit (its client's default ``max_body_size``).
REWRITE_LIMIT = 100 << 20
#: Our client's ``max_body_size``: no limit a download could reach.
MAX_BODY = 1 << 62
#: How long one proxied request may take in all: jupyter-server-proxy's own choice for
#: its streaming mode (its buffered mode's 300 s would cut a long download short).
STREAM_TIMEOUT = 7200.0
#: While a download streams, jupyter-server-proxy's activity hook runs this often (so the
#: idle check never stops an app in the middle of one).
ACTIVITY_PERIOD = 10.0
#: Headers of one connection, never passed on (RFC 9110, 7.6.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class _Fetched:
    """Stands in for the HTTP client in jupyter-server-proxy's ``_proxy_buffered``: its
    ``fetch`` gives back the response already fetched, or raises the error it met."""

    def __init__(self, outcome: httpclient.HTTPResponse | Exception) -> None:
        self.outcome = outcome

    async def fetch(self, request: Any, raise_error: bool = True) -> httpclient.HTTPResponse:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


class _Relay:
    """One response on its way from the app: kept while it may still need the engine's
    own path, passed on chunk by chunk once it cannot."""

    def __init__(self, handler: StreamingMixin, path: str) -> None:
        self.handler = handler
        self.path = path
        self.lines: list[str] = []
        self.start: httputil.ResponseStartLine | None = None
        self.headers = httputil.HTTPHeaders()
        self.kept: list[bytes] = []
        self.size = 0
        self.streaming = False
        #: A response a hook may rewrite grew past REWRITE_LIMIT: the rest is dropped.
        self.too_large = False
        self.last_activity = time.monotonic()
        #: The connection to the app, once made.
        self.backend: IOStream | None = None

    def header_line(self, line: str) -> None:
        """tornado's ``header_callback``: the status line, each header, an empty line."""
        if line.startswith("HTTP/"):
            self.lines = [line]  # a new (final) response after an interim one
        elif line.strip():
            self.lines.append(line)
        elif self.lines:
            self.start = httputil.parse_response_start_line(self.lines[0].strip())
            self.headers = httputil.HTTPHeaders.parse("".join(self.lines[1:]))

    def body_received(self, chunk: bytes) -> Awaitable[None] | None:
        """tornado's ``streaming_callback``: keep the chunk, or send it on. The future it
        returns (the flush to the browser) is awaited before the next read from the app."""
        self.size += len(chunk)
        if self.streaming:
            return self.send(chunk)
        if self.too_large:
            return None
        self.kept.append(chunk)
        if self.size <= BUFFER_LIMIT:
            return None
        assert self.start is not None
        if self.handler.may_stream(self.path, self.start.code, self.headers):
            self.streaming = True
            self.send_headers()
            kept, self.kept = b"".join(self.kept), []
            return self.send(kept)
        if self.size > REWRITE_LIMIT:
            self.too_large, self.kept = True, []
        return None

    def send_headers(self) -> None:
        assert self.start is not None
        handler = self.handler
        handler.set_status(self.start.code, self.start.reason)
        # The app's headers only (not tornado's or Jupyter's defaults), as
        # jupyter-server-proxy sends them.
        handler._headers = httputil.HTTPHeaders()
        for name, value in self.headers.get_all():
            if name.lower() not in HOP_BY_HOP:
                handler.add_header(name, value)

    def send(self, chunk: bytes) -> Awaitable[None]:
        now = time.monotonic()
        if now - self.last_activity >= ACTIVITY_PERIOD:
            self.last_activity = now
            self.handler._record_activity()
        self.handler.write(chunk)
        # Not handler.flush: jupyter-server-proxy's WebSocketHandlerMixin replaces it, per
        # handler, with a wrapper that drops the future (the backpressure).
        return self.sent(web.RequestHandler.flush(self.handler))

    async def sent(self, flushed: Awaitable[None]) -> None:
        """Once the browser has the chunk; if it has left, the app's connection is closed
        (the fetch then ends, the app stops writing), quietly: an exception here would be
        logged by tornado as uncaught."""
        try:
            await flushed
        except StreamClosedError:
            if self.backend is not None:
                self.backend.close()

    def response(
        self, request: httpclient.HTTPRequest, fetched: httpclient.HTTPResponse
    ) -> httpclient.HTTPResponse:
        """The whole response, as jupyter-server-proxy's client would have given it."""
        start = self.start
        code, reason = (start.code, start.reason) if start else (fetched.code, fetched.reason)
        return httpclient.HTTPResponse(
            request,
            code,
            reason=reason,
            headers=self.headers if start else fetched.headers,
            buffer=io.BytesIO(b"".join(self.kept)),
            effective_url=request.url,
            request_time=fetched.request_time,
            start_time=fetched.start_time,
        )


class StreamingMixin:
    """In front of jupyter-server-proxy's handler class: ``_proxy_buffered`` streams what
    no rewrite hook needs (see the module's doc)."""

    #: Paths (as the rewrite hooks see them) whose responses a hook may change.
    rewritten_paths: frozenset[str] = frozenset()

    def may_stream(self, path: str, code: int, headers: httputil.HTTPHeaders) -> bool:
        """Whether no rewrite may touch this response: not a redirect (jupyter-server-proxy
        and our hooks fix ``Location``), not a page our hooks rewrite."""
        if 300 <= code < 400 or "Location" in headers:
            return False
        return path not in self.rewritten_paths

    def _streaming_client(self, relay: _Relay) -> SimpleAsyncHTTPClient:
        """A client like jupyter-server-proxy's, without its 100 MiB body limit, that
        gives ``relay`` its connection to the app (to close it if the browser leaves)."""
        from jupyter_server_proxy.unixsock import UnixResolver

        resolver = {"resolver": UnixResolver(self.unix_socket)} if self.unix_socket else {}
        client = SimpleAsyncHTTPClient(force_instance=True, max_body_size=MAX_BODY, **resolver)
        connect = client.tcp_client.connect

        async def connect_and_keep(*args: Any, **kwargs: Any) -> IOStream:
            relay.backend = await connect(*args, **kwargs)
            return relay.backend

        client.tcp_client.connect = connect_and_keep
        return client

    async def _proxy_buffered(self, host, port, proxied_path, body, client) -> None:
        relay = _Relay(self, proxied_path)
        request = self._build_proxy_request(
            host,
            port,
            proxied_path,
            body,
            header_callback=relay.header_line,
            streaming_callback=relay.body_received,
        )
        request.request_timeout = max(request.request_timeout or 0, STREAM_TIMEOUT)
        ours = self._streaming_client(relay)
        outcome: httpclient.HTTPResponse | Exception
        try:
            fetched = await ours.fetch(request, raise_error=False)
            outcome = relay.response(request, fetched)
        except Exception as error:  # noqa: BLE001 (not caught: the engine's own path raises it below)
            outcome = error
        finally:
            ours.close()
        if relay.streaming:
            self._record_activity()
            if isinstance(outcome, Exception):
                self._cut_short(relay, outcome)
            return None
        if relay.too_large:
            outcome = httpclient.HTTPClientError(
                599, f"a response over {REWRITE_LIMIT >> 20} MiB that a rewrite hook needs"
            )
        await super()._proxy_buffered(host, port, proxied_path, body, _Fetched(outcome))
        length = relay.headers.get("Content-Length")
        if self.request.method == "HEAD" and length and relay.start is not None:
            if self.get_status() == relay.start.code:
                # The engine drops it, and tornado would say 0: the app's size of the file.
                self.set_header("Content-Length", length)
        return None

    def _cut_short(self, relay: _Relay, error: Exception) -> None:
        """The status is sent already: all that is left is to close the connection, so
        the browser sees the download fail rather than end early."""
        left = self.request.connection.stream.closed()
        (log.debug if left else log.warning)(
            "%s: %s after %d bytes: %s",
            self.request.path,
            "the browser left" if left else "the app's response broke off",
            relay.size,
            error,
        )
        self.request.connection.close()


def streaming_handler(handler: type, rewritten_paths: Iterable[str] = ()) -> type:
    """``handler`` (jupyter-server-proxy's class for an app) with :class:`StreamingMixin`
    in front; ``rewritten_paths`` are the paths whose responses a rewrite hook may change."""
    if issubclass(handler, StreamingMixin):
        return handler
    return type(
        handler.__name__,
        (StreamingMixin, handler),
        {"rewritten_paths": frozenset(rewritten_paths), "__module__": __name__},
    )
