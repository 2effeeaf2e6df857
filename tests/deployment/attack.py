"""What a second user tries against the first user's apps, run as that user inside a job
of their own on the same node (``srun --jobid=<their job> --overlap``), by the system
Python and nothing else. The targets come as one JSON argument; one JSON object is
printed: each attempt and what came of it, for the test to judge and the docs to show.

The targets (found by the test, as root): ``pids`` of the apps' processes, their
``dirs`` (runtime directories), ``sockets`` and ``files`` (secrets, X cookies),
``displays`` (X displays), ``tcp`` (the apps' TCP listeners on 127.0.0.1) and
``http`` (the user's Jupyter server's own port, and the paths to ask it for).
"""

import http.client
import json
import os
import socket
import subprocess
import sys


def error_name(func):
    try:
        func()
    except OSError as err:
        return type(err).__name__
    return "succeeded"


def read(path):
    with open(path, "rb") as f:
        f.read(1)


def unix_connect(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
    finally:
        s.close()


def tcp_garbage(port):
    """Connect, send garbage, and see whether anything answers before the close."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError as err:
        return type(err).__name__
    try:
        s.sendall(b"\x00garbage from a neighbour\r\n" * 8)
        data = s.recv(4096)
        return "closed" if not data else f"answered {len(data)} bytes"
    except TimeoutError:
        return "held open"
    except OSError as err:
        return f"closed ({type(err).__name__})"
    finally:
        s.close()


def http_get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read(4000).decode(errors="replace")
        return resp.status, resp.getheader("Location") or "", body
    finally:
        conn.close()


def main():
    targets = json.loads(sys.argv[1])
    out = {"whoami": os.getuid(), "job": os.environ.get("SLURM_JOB_ID"), "argv": []}
    out["environ"] = {
        p: error_name(lambda p=p: read(f"/proc/{p}/environ")) for p in targets["pids"]
    }
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out["argv"].append(f.read().decode(errors="replace"))
        except OSError:
            pass
    out["dirs"] = {d: error_name(lambda d=d: os.listdir(d)) for d in targets["dirs"]}
    out["sockets"] = {s: error_name(lambda s=s: unix_connect(s)) for s in targets["sockets"]}
    out["files"] = {f: error_name(lambda f=f: read(f)) for f in targets["files"]}
    out["displays"] = {}
    for display in targets["displays"]:
        for target in (display, "127.0.0.1" + display):
            done = subprocess.run(
                ["xdpyinfo", "-display", target], capture_output=True, text=True, timeout=30
            )
            out["displays"][target] = "opened" if done.returncode == 0 else done.stderr.strip()
    out["tcp"] = {str(port): tcp_garbage(port) for port in targets["tcp"]}
    port = targets["http"]["port"]
    out["http"] = {path: http_get(port, path)[:2] for path in targets["http"]["paths"]}
    print(json.dumps(out))


main()
