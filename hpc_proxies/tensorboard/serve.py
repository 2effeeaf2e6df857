"""Run TensorBoard on a unix socket: no TCP port, not even for its data server.

    PYTHON serve.py --socket PATH --path-prefix /user/me/tensorboard --logdir DIR

``tensorboard`` itself can only listen on TCP (its ``--host unix://…`` breaks on the
port it prints), so this small runner gives TensorBoard a server class that binds the
launch's unix socket and otherwise runs TensorBoard as its command line would. It is a
plain script that imports only TensorBoard and the standard library, because it runs
with the Python of the ``tensorboard`` that was found (a site's module may bring its
own), which need not have hpc-proxies installed.

``--load_fast=false`` is always passed: the fast loader is a separate data server that
listens on a TCP port of its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


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
                super().__init__("unix://" + socket_path, 0, wsgi_app, handler)
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
