"""``hpc-proxies batchspawner-singleuser``: start a user's JupyterLab in a batch job on
the address and in the port range the site chose.

batchspawner starts ``jupyterhub-singleuser`` in the job through its own wrapper,
``batchspawner-singleuser``, which tells the hub a random port and leaves the server
listening on every address of the compute node (``0.0.0.0``: batchspawner's ``start()``
resets the spawner's ``ip``, so ``c.Spawner.ip`` has no effect). On a node that other
users' jobs share, and on a cluster network with firewalled port ranges, a site wants
one address (the one the hub connects to) and ports from its own range. This command
does the wrapper's job (pick a port, tell the hub through batchspawner's
``/hub/api/batchspawner`` endpoint, start the command) with both chosen::

    c.SlurmSpawner.batchspawner_singleuser_cmd = (
        "/opt/hpc-proxies/venv/bin/hpc-proxies batchspawner-singleuser --port-range 40000-40999"
    )

The hub's API token comes from the environment batchspawner gives the job
(``JUPYTERHUB_API_TOKEN``), never from argv.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

#: Ports tried at random in a range before giving up (a busy node's range may be full).
ATTEMPTS = 200


class SingleuserError(Exception):
    """Why the user's server cannot be started; the message says what to fix."""


def default_ip() -> str:
    """The address the node's own name resolves to: batchspawner's hub connects to the
    host name Slurm reports for the job (``squeue %B``), so this is what it reaches."""
    name = socket.gethostname()
    try:
        return socket.gethostbyname(name)
    except OSError as err:
        raise SingleuserError(
            f"this node's name {name!r} does not resolve ({err}): give the address the hub "
            "connects to with --ip"
        ) from err


def check_ip(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise SingleuserError(
            f"--ip {ip!r}: expected an IP address of this node, e.g. 10.1.2.3"
        ) from None


def parse_port_range(text: str) -> range:
    """``"40000-40999"`` as a range of ports (both ends included)."""
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high if sep else low)
    except ValueError:
        raise SingleuserError(
            f"--port-range {text!r}: expected LOW-HIGH, e.g. 40000-40999"
        ) from None
    if not 1024 <= first <= last <= 65535:
        raise SingleuserError(
            f"--port-range {text!r}: expected 1024 <= LOW <= HIGH <= 65535, e.g. 40000-40999"
        )
    return range(first, last + 1)


def free_port(ip: str, ports: range | None) -> int:
    """A port nothing listens on at ``ip``: any (the kernel's choice) or one in ``ports``."""
    family = socket.AF_INET6 if ipaddress.ip_address(check_ip(ip)).version == 6 else socket.AF_INET
    candidates = [0] if ports is None else [secrets.choice(ports) for _ in range(ATTEMPTS)]
    for port in candidates:
        with socket.socket(family) as probe:
            try:
                probe.bind((ip, port))
            except OSError as err:
                if port == 0:
                    raise SingleuserError(f"cannot listen on {ip}: {err}") from err
                continue
            return probe.getsockname()[1]
    raise SingleuserError(
        f"no free port in {ports.start}-{ports.stop - 1} on {ip} after {ATTEMPTS} tries: "
        "widen --port-range"
    )


def service_url(url: str, ip: str, port: int) -> str:
    """``JUPYTERHUB_SERVICE_URL`` with its host and port replaced: jupyterhub-singleuser
    listens where that URL points."""
    parts = urlsplit(url)
    host = f"[{ip}]" if ":" in ip else ip
    return urlunsplit(parts._replace(netloc=f"{host}:{port}"))


@dataclass(frozen=True)
class Hub:
    """What the job's environment says of the hub's API."""

    api_url: str
    token: str
    certfile: str | None = None
    keyfile: str | None = None
    client_ca: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Hub:
        missing = [k for k in ("JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN") if not env.get(k)]
        if missing:
            raise SingleuserError(
                f"{' and '.join(missing)} not set: this command is run by batchspawner "
                "inside the user's job, which passes the hub's environment "
                "(check the job script's --export)"
            )
        return cls(
            env["JUPYTERHUB_API_URL"].rstrip("/"),
            env["JUPYTERHUB_API_TOKEN"],
            env.get("JUPYTERHUB_SSL_CERTFILE") or None,
            env.get("JUPYTERHUB_SSL_KEYFILE") or None,
            env.get("JUPYTERHUB_SSL_CLIENT_CA") or None,
        )

    def _context(self) -> ssl.SSLContext | None:
        """JupyterHub's internal TLS, where the site turned it on."""
        if not self.api_url.startswith("https://"):
            return None
        try:
            context = ssl.create_default_context(cafile=self.client_ca)
            if self.certfile and self.keyfile:
                context.load_cert_chain(self.certfile, self.keyfile)
        except OSError as err:  # ssl.SSLError is one too
            raise SingleuserError(
                f"JupyterHub's internal TLS files cannot be used ({err}): check "
                "JUPYTERHUB_SSL_CLIENT_CA, JUPYTERHUB_SSL_CERTFILE and JUPYTERHUB_SSL_KEYFILE"
            ) from err
        return context

    def tell_port(self, port: int, timeout: float = 30) -> None:
        """POST the port to batchspawner's API handler, as its own wrapper does."""
        request = urllib.request.Request(  # noqa: S310 (the hub's own http(s) URL)
            f"{self.api_url}/batchspawner",
            data=json.dumps({"port": port}).encode(),
            method="POST",
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        # The hub's API is on the cluster's own network: never through a site's web proxy
        # (http_proxy in the job's environment), which could not reach it or would see it.
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self._context())
        )
        try:
            with opener.open(request, timeout=timeout):
                return
        except urllib.error.HTTPError as err:
            hint = (
                " (is batchspawner installed in the hub's Python? Its API handler "
                "registers on import of batchspawner)"
                if err.code == 404
                else ""
            )
            raise SingleuserError(
                f"the hub at {self.api_url} refused the port: HTTP {err.code}{hint}"
            ) from err
        except OSError as err:
            raise SingleuserError(
                f"cannot reach the hub at {self.api_url} from this node: {err}"
            ) from err


def resolve_command(command: list[str], env: Mapping[str, str]) -> tuple[str, list[str]]:
    """The program to exec and its argv, checked before the hub is told a port where
    nothing would ever listen."""
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise SingleuserError("no command: batchspawner appends jupyterhub-singleuser's")
    program = shutil.which(command[0], path=env.get("PATH"))
    if program is None:
        raise SingleuserError(f"{command[0]!r} not found on the job's PATH")
    return program, list(command)


def prepare(
    env: Mapping[str, str], ip: str | None, ports: range | None
) -> tuple[dict[str, str], int]:
    """The environment to start the user's server with, and its port (told to the hub)."""
    hub = Hub.from_env(env)
    address = check_ip(ip) if ip else default_ip()
    port = free_port(address, ports)
    hub.tell_port(port)
    new_env = dict(env)
    url = env.get("JUPYTERHUB_SERVICE_URL") or f"http://{address}:{port}/"
    new_env["JUPYTERHUB_SERVICE_URL"] = service_url(url, address, port)
    return new_env, port


def exec_command(program: str, argv: list[str], env: dict[str, str]) -> None:
    """Replace this process with the server: the job's step then tracks it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(program, argv, env)  # noqa: S606 (argv, no shell: nothing to quote)
