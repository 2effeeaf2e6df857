"""The Running panel's API in a real Jupyter server, with real Xpra desktops and a real
TensorBoard: list, stop, restart, log, several instances, the limit, and who may ask.

Nothing is mocked: the pids and memory the API reports are checked against /proc, a
stop against every process of the instance, a restart against the secret file.
"""

from __future__ import annotations

import http.client
import json
import time

from conftest import jupyter_with_site
from instances_api import api, instance, launcher_of, listed, ok, runtime_dir_of, wait_state
from processes import alive, cmdline, find_process

from hpc_proxies import procs
from hpc_proxies.layout import LaunchLayout
from hpc_proxies.runtime import read_secret

MiB = 2**20
TWO_DESKTOPS = """
[apps.xpra]
max_instances = 2
"""


def tree(root: int) -> set[int]:
    return {root} | procs.descendants(root)


def login_cookies(server) -> tuple[str, str]:
    """A browser's login (``?token=`` once, then cookies): the cookie header and the
    XSRF token Jupyter gave it."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", f"/lab?token={server.token}")
        reply = conn.getresponse()
        reply.read()
        cookies = dict(
            c.split(";", 1)[0].split("=", 1) for c in reply.headers.get_all("Set-Cookie") or []
        )
    finally:
        conn.close()
    assert "_xsrf" in cookies and any(k.startswith("username-") for k in cookies), cookies
    return "; ".join(f"{k}={v}" for k, v in cookies.items()), cookies["_xsrf"]


def test_the_list_shows_xpra_and_tensorboard_with_their_processes_and_memory(tmp_path):
    with jupyter_with_site(tmp_path) as server:
        server.wait_for_app("/xpra/")
        server.wait_for_app("/tensorboard/")
        items = listed(server)
        for app, main, least in (
            ("xpra", "xpra", 60 * MiB),
            ("tensorboard", "tensorboard", 30 * MiB),
        ):
            item = items[(app, "default")]
            assert item["state"] == "running", item
            assert item["url"] == f"/{app}/" and item["title"]
            launcher = launcher_of(server, app)
            pids = set(item["pids"])
            assert launcher in pids, (launcher, pids)
            assert find_process(tree(launcher), main) in pids
            assert pids <= tree(launcher) | set(item["pids"]) and all(
                pid == launcher or pid in procs.descendants(launcher) for pid in alive(pids)
            ), "only the instance's own processes"
            # PSS of exactly those processes, read again from /proc: within 25 %.
            again = sum(procs.pss_bytes(pid) or 0 for pid in item["pids"])
            assert item["memory"] > least, item["memory"]
            assert abs(item["memory"] - again) < 0.25 * again, (item["memory"], again)
            assert item["uptime"] >= 0 and item["started"].endswith("+00:00")
            assert item["last_exit"] is None and item["problem"] is None
        never_opened = items[("vnc", "default")]
        assert never_opened["state"] == "stopped" and never_opened["pids"] == []


def test_two_desktops_stopping_one_ends_all_of_it_and_leaves_the_other(tmp_path):
    with jupyter_with_site(tmp_path, TWO_DESKTOPS) as server:
        created = ok(server, "POST", "instances", {"app": "xpra"})
        assert (created["instance"], created["url"], created["state"]) == (
            "2",
            "/xpra@2/",
            "stopped",
        )
        server.wait_for_app("/xpra/")
        server.wait_for_app("/xpra@2/")
        first = wait_state(server, "xpra", "default", "running")
        second = wait_state(server, "xpra", "2", "running")
        first_tree, second_tree = (
            tree(launcher_of(server, "xpra")),
            tree(launcher_of(server, "xpra@2")),
        )
        assert not first_tree & second_tree, "each instance has its own processes"
        first_dir, second_dir = runtime_dir_of(server, "xpra"), runtime_dir_of(server, "xpra@2")
        assert first_dir != second_dir
        secrets = {
            read_secret(LaunchLayout(d / "socket").secret_file) for d in (first_dir, second_dir)
        }
        assert len(secrets) == 2, "each instance has its own secret"

        started = time.monotonic()
        stopped = ok(server, "POST", "instances/xpra/2/stop")
        took = time.monotonic() - started
        assert alive(second_tree) == set(), [cmdline(p) for p in alive(second_tree)]
        assert not second_dir.exists(), f"{second_dir} left behind"
        assert stopped["state"] == "stopped" and stopped["last_exit"]["reason"] == "stopped"
        print(f"stop of a running Xpra instance, API call to every process gone: {took:.2f} s")

        assert alive(first_tree) == first_tree, "the other desktop runs on, untouched"
        assert set(instance(server, "xpra", "default")["pids"]) == set(first["pids"])
        assert server.wait_for_app("/xpra/").status == 200
        assert set(second["pids"]) & alive(set(second["pids"])) == set()

        # Its URL starts it again: a new launch, in a new directory.
        server.wait_for_app("/xpra@2/")
        again = wait_state(server, "xpra", "2", "running")
        assert not set(again["pids"]) & set(second["pids"])
        assert runtime_dir_of(server, "xpra@2") != second_dir


def test_restart_gives_new_processes_and_a_new_secret(tmp_path):
    with jupyter_with_site(tmp_path) as server:
        server.wait_for_app("/xpra/")
        before = wait_state(server, "xpra", "default", "running")
        launcher = launcher_of(server, "xpra")
        layout = LaunchLayout(runtime_dir_of(server, "xpra") / "socket")
        old_secret = read_secret(layout.secret_file)
        old_app = set(before["pids"]) - {launcher}

        ok(server, "POST", "instances/xpra/default/restart")

        def restarted() -> dict | None:
            now = instance(server, "xpra", "default")
            fresh = now["state"] == "running" and not (set(now["pids"]) - {launcher}) & old_app
            return now if fresh else None

        from waiting import until

        after = until(restarted, 60, "xpra to run again with new processes", interval=0.1)
        assert launcher in after["pids"], "the same supervisor, new app processes"
        assert alive(old_app) == set()
        assert read_secret(layout.secret_file) != old_secret
        assert server.wait_for_app("/xpra/").status == 200


def test_the_log_shows_the_apps_own_lines_and_streams_new_ones(tmp_path):
    with jupyter_with_site(tmp_path) as server:
        server.wait_for_app("/tensorboard/")
        wait_state(server, "tensorboard", "default", "running")
        log = ok(server, "GET", "instances/tensorboard/default/log?since=1")
        texts = [line["text"] for line in log["lines"]]
        assert any(t.startswith("TensorBoard ") and " serving " in t for t in texts), texts[-20:]
        assert any(t.startswith("ready after") for t in texts), texts[-20:]
        seqs = [line["seq"] for line in log["lines"]]
        assert seqs == sorted(seqs) and log["next"] == seqs[-1] + 1
        assert (
            ok(server, "GET", f"instances/tensorboard/default/log?since={log['next']}")["lines"]
            == []
        )

        # The stream: the lines so far, then a restart's lines as they come.
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request(
            "GET",
            f"/hpc-proxies/api/instances/tensorboard/default/log/stream?since={log['next']}",
            headers={"Authorization": f"token {server.token}"},
        )
        reply = conn.getresponse()
        assert reply.status == 200 and reply.headers["Content-Type"] == "text/event-stream"
        ok(server, "POST", "instances/tensorboard/default/restart")
        events = []
        while not any(e["text"].startswith("TensorBoard ") for e in events):
            line = reply.fp.readline().decode()
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
        conn.close()
        assert events[0]["seq"] == log["next"]
        assert any("restarting" in e["text"] for e in events), events


def test_the_api_needs_jupyters_login_and_xsrf(tmp_path):
    with jupyter_with_site(tmp_path) as server:
        status, _ = api(server, "GET", "instances", token=False)
        assert status == 403
        status, _ = api(server, "POST", "stop-all", token=False)
        assert status == 403
        cookie, xsrf = login_cookies(server)
        status, data = api(server, "GET", "instances", token=False, headers={"Cookie": cookie})
        assert status == 200 and data["instances"], "a logged-in browser may read"
        status, _ = api(server, "POST", "stop-all", token=False, headers={"Cookie": cookie})
        assert status == 403, "a POST with the login cookie but without XSRF is refused"
        status, data = api(
            server,
            "POST",
            "stop-all",
            token=False,
            headers={"Cookie": cookie, "X-XSRFToken": xsrf},
        )
        assert (status, data) == (200, {"stopped": []})


def test_past_max_instances_the_user_is_told_why_not_left_waiting(tmp_path):
    with jupyter_with_site(tmp_path, TWO_DESKTOPS) as server:
        # A second instance by its URL alone (a bookmark): made, then started.
        assert server.wait_for_app("/xpra@exp-a/").status == 200
        assert wait_state(server, "xpra", "exp-a", "running")["url"] == "/xpra@exp-a/"

        status, refused = api(server, "POST", "instances", {"app": "xpra"})
        assert status == 409, refused
        assert "already runs 2 instances" in refused["message"]
        assert "max_instances = 2" in refused["message"] and "Stop one" in refused["message"]
        assert refused["code"] == "instance-limit"

        started = time.monotonic()
        page = server.request("/xpra@third/")
        assert time.monotonic() - started < 5, "an answer, not a hang"
        assert page.status == 409 and "max_instances = 2" in page.text
        assert "Xpra Desktop already runs 2 instances" in page.text

        status, refused = api(server, "POST", "instances", {"app": "paraview"})
        assert status == 409 and "one instance per user" in refused["message"]
        status, refused = api(server, "POST", "instances", {"app": "xpra", "instance": "Bad/Name"})
        assert status == 400 and "cannot have an instance called" in refused["message"]
        status, refused = api(server, "POST", "instances", {"app": "nosuchapp"})
        assert status == 404 and "xpra" in refused["message"]

        # Stopping the second makes room for another.
        ok(server, "POST", "instances/xpra/exp-a/stop")
        made = ok(server, "POST", "instances", {"app": "xpra", "instance": "exp-b"})
        assert made["url"] == "/xpra@exp-b/"
        assert ("xpra", "exp-a") not in listed(server), "a stopped instance made room"
