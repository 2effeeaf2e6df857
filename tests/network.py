"""Network set-ups for tests: another host, and a kernel policy without user namespaces.

``peer_host()``: another host on the network, for tests of what is reachable beyond
loopback.
A network namespace joined to this one by a veth pair: from inside it, this machine is
``host_address``, a non-loopback address, exactly as another machine on the cluster's
network would see it. Needs root and iproute2 (``ip``).

``WITHOUT_USER_NAMESPACES``: a prefix for an argv that runs it where no further user
namespace may be made, as on a site whose kernel forbids unprivileged ones (a user
namespace whose ``user.max_user_namespaces`` is 0: the limit is per namespace, so the
machine's own setting is untouched).
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass

WITHOUT_USER_NAMESPACES = [
    "unshare",
    "--user",
    "--map-root-user",
    "sh",
    "-c",
    'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"',
    "sh",
]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class PeerHost:
    namespace: str
    host_address: str

    def can_connect(self, port: int, address: str | None = None) -> bool:
        """Whether a TCP connection from the peer to ``address:port`` is accepted."""
        code = (
            "import socket, sys\n"
            "try:\n"
            f"    socket.create_connection(({address or self.host_address!r}, {port}), 5)\n"
            "except OSError:\n"
            "    sys.exit(1)\n"
        )
        done = subprocess.run(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-c", code],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return done.returncode == 0


@contextmanager
def peer_host():
    """Yield a :class:`PeerHost`; remove its namespace and link afterwards."""
    tag = os.getpid() % 100000
    namespace, host_end, peer_end = f"hpcpx-peer-{tag}", f"hpxh{tag}", f"hpxp{tag}"
    subnet = f"10.{200 + tag % 50}.{tag % 250}"
    ip("netns", "add", namespace)
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", peer_end)
        ip("link", "set", peer_end, "netns", namespace)
        ip("addr", "add", f"{subnet}.1/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("netns", "exec", namespace, "ip", "addr", "add", f"{subnet}.2/30", "dev", peer_end)
        ip("netns", "exec", namespace, "ip", "link", "set", peer_end, "up")
        ip("netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        yield PeerHost(namespace, f"{subnet}.1")
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
