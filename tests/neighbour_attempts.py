"""What a second user of the node tries against the first user's apps: one catalogue of
attempts, run as that user by the system Python and nothing else (from a login shell:
``test_neighbour``, ``test_apps_as_user``; from inside a Slurm job of their own:
``tests/deployment``).

    python3 neighbour_attempts.py '{"dirs": [...], "sockets": [...], ...}'

The targets come as one JSON argument (found by the test, as root), each optional:
``pids`` (read their environment), ``argv`` (true: read every process's command line),
``dirs`` (list them), ``sockets`` (connect), ``files`` (read: secrets, X cookies),
``displays`` (open them, on their socket and over TCP), ``tcp`` (send garbage to these
ports on 127.0.0.1), ``http`` (GET ``paths`` from ``port`` on 127.0.0.1, without
credentials) and ``search`` (read every file below these directories that the user can,
and name those holding one of the secrets given on standard input, a JSON list: never
in the argv, which everyone can read). One JSON object is printed: what came of each
attempt, for the test to judge and the docs to show.
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


def files_holding(directories, secrets):
    """Every file below ``directories`` this user can read that holds one of ``secrets``."""
    found = []
    for directory in directories:
        for root, _dirs, names in os.walk(directory):
            for name in names:
                path = os.path.join(root, name)
                try:
                    if not os.path.isfile(path) or os.path.getsize(path) > 16 << 20:
                        continue
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                if any(secret.encode() in data for secret in secrets):
                    found.append(path)
    return found


def main():
    targets = json.loads(sys.argv[1])
    out = {"whoami": os.getuid(), "job": os.environ.get("SLURM_JOB_ID")}
    if "pids" in targets:
        out["environ"] = {
            str(p): error_name(lambda p=p: read(f"/proc/{p}/environ")) for p in targets["pids"]
        }
    if targets.get("argv"):
        out["argv"] = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    out["argv"].append(f.read().decode(errors="replace"))
            except OSError:
                pass
    if "dirs" in targets:
        out["dirs"] = {d: error_name(lambda d=d: os.listdir(d)) for d in targets["dirs"]}
    if "sockets" in targets:
        out["sockets"] = {s: error_name(lambda s=s: unix_connect(s)) for s in targets["sockets"]}
    if "files" in targets:
        out["files"] = {f: error_name(lambda f=f: read(f)) for f in targets["files"]}
    if "displays" in targets:
        out["displays"] = {}
        for display in targets["displays"]:
            for target in (display, "127.0.0.1" + display):
                done = subprocess.run(
                    ["xdpyinfo", "-display", target], capture_output=True, text=True, timeout=30
                )
                out["displays"][target] = "opened" if done.returncode == 0 else done.stderr.strip()
    if "tcp" in targets:
        out["tcp"] = {str(port): tcp_garbage(port) for port in targets["tcp"]}
    if "http" in targets:
        port = targets["http"]["port"]
        out["http"] = {path: http_get(port, path)[:2] for path in targets["http"]["paths"]}
    if "search" in targets:
        out["search"] = files_holding(targets["search"], json.load(sys.stdin))
    print(json.dumps(out))


main()
