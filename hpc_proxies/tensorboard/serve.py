"""Run TensorBoard on a unix socket: no TCP port, not even for its data server.

    PYTHON serve.py --socket PATH --path-prefix /user/me/tensorboard --logdir DIR

``tensorboard`` itself can only listen on TCP (its ``--host unix://…`` breaks on the
port it prints), so this small runner gives TensorBoard a server class that binds the
launch's unix socket and otherwise runs TensorBoard as its command line would. It is a
plain script that imports only TensorBoard and the standard library, because it runs
with the Python of the ``tensorboard`` that was found (a site's module may bring its
own), which need not have hpc-proxies installed.

``--load_fast=false`` is always passed: the fast loader is a separate data server that
listens on a TCP port of its own. TensorBoard's page names its fonts by absolute paths
(``url(/font-roboto/…)``), which miss the path prefix (and would be requests to Jupyter's
root); they are made relative to the page.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

FONTS = (b"url(/font-roboto/", b"url(font-roboto/")


def relative_fonts(app: Callable, prefix: str) -> Callable:
    """WSGI middleware: TensorBoard's index page with its font URLs made relative."""
    pages = {prefix + "/", prefix + "/index.html"}

    def wrapped(environ, start_response):
        if environ.get("PATH_INFO") not in pages:
            return app(environ, start_response)
        started = []

        def capture(status, headers, exc_info=None):
            started.append((status, headers, exc_info))
            return lambda data: None

        result = app(environ, capture)
        try:
            body = b"".join(result)
        finally:
            getattr(result, "close", lambda: None)()
        status, headers, exc_info = started[0]
        types = [v for k, v in headers if k.lower() == "content-type"]
        encodings = {v.strip() for k, v in headers if k.lower() == "content-encoding"}
        if types and types[0].startswith("text/html") and encodings <= {"identity"}:
            body = body.replace(*FONTS)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(status, headers, exc_info)
        return [body]

    return wrapped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--socket", required=True, help="unix socket to serve on")
    parser.add_argument("--path-prefix", default="", help="public URL prefix, no trailing /")
    parser.add_argument("--logdir", required=True, help="the directory of runs to show")
    args = parser.parse_args(argv)

    try:
        from tensorboard import program, version
        from werkzeug import serving
    except ImportError as err:
        sys.stderr.write(
            f"TensorBoard cannot be imported by {sys.executable}: {err}\n"
            "Install it into that environment: pip install 'hpc-proxies[tensorboard]' "
            "(or pip install tensorboard).\n"
        )
        return 3

    socket_path = os.path.abspath(args.socket)

    class UnixSocketServer(serving.ThreadedWSGIServer, program.TensorBoardServer):
        """TensorBoard's WSGI app on a unix socket (werkzeug's ``unix://`` host)."""

        daemon_threads = True

        def __init__(self, wsgi_app, flags) -> None:
            self._flags = flags
            handler = getattr(program, "_WSGIRequestHandler", None)
            old = os.umask(0o077)  # the socket: ours only (its directory is 0700 too)
            try:
                app = relative_fonts(wsgi_app, flags.path_prefix.rstrip("/"))
                super().__init__("unix://" + socket_path, 0, app, handler)
            finally:
                os.umask(old)
            # werkzeug would log every request (and its query) into the Jupyter log.
            logging.getLogger("werkzeug").setLevel(logging.WARNING)

        def get_url(self) -> str:
            # TensorBoard parses a port out of this URL (for its info file): keep one.
            return f"http://localhost:0{self._flags.path_prefix.rstrip('/')}/"

        def print_serving_message(self) -> None:
            sys.stderr.write(
                f"TensorBoard {version.VERSION} serving {self._flags.logdir} on "
                f"{socket_path} under {self._flags.path_prefix or '/'}\n"
            )
            sys.stderr.flush()

    tensorboard = program.TensorBoard(server_class=UnixSocketServer)
    tensorboard.configure(
        argv=[
            "tensorboard",
            "--logdir",
            args.logdir,
            "--path_prefix",
            args.path_prefix,
            "--load_fast",
            "false",
        ]
    )
    return tensorboard.main()


if __name__ == "__main__":
    sys.exit(main())
