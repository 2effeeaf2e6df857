"""The whole chain an HPC centre runs, in chromium: a user logs in to JupyterHub, whose
SlurmSpawner submits their JupyterLab as a Slurm job, and uses every tile through
``/user/<name>/``; a second user attacks from inside a job of their own on the same
node; stopping the server from the hub, and ``scancel``, leave nothing behind.

The tests run in order and share the hub, the two users (ada, who uses the tiles, and
bob, the neighbour) and ada's server. The figures (login to JupyterLab, click to first
picture per tile; the same on a plain ``jupyter lab`` of ada's in the same run; the
scancel-to-nothing time) are written to ``ARTIFACTS/deployment-figures.json``.

Screenshots: ``ARTIFACTS/hub-<step>.png`` and ``ARTIFACTS/plain-<step>.png``.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import slurm
import tiles
from as_user import users_jupyter
from browser import SharedChromium, chromium, screenshot, tile, wait_for
from conftest import ARTIFACTS
from hubfixtures import (
    Hub,
    HubUser,
    give,
    hub_user,
    running_hub,
    server_process,
    user_processes,
)
from playwright.sync_api import Page
from processes import cmdline, environ_of, launcher_runtime_dir, launchers, tcp_ports
from test_neighbour import APPS, files_below, x_displays

from hpc_proxies import procs

pytestmark = pytest.mark.browser

#: The neighbour's catalogue of attempts (test_neighbour's), run inside bob's job.
ATTACK = Path(__file__).parent.parent / "neighbour_attempts.py"

slurm_cluster = slurm.slurm_cluster  # the session fixture

#: The five tiles, and the ParaView kernel's notebook tile (its title is the kernel's).
TITLES = (
    "Xpra Desktop",
    "VNC Desktop",
    "TensorBoard",
    "RStudio",
    "ParaView [",
    "ParaView (pvpython)",
)


@pytest.fixture(scope="module")
def ada() -> HubUser:
    return hub_user("hpcp-hub-ada")


@pytest.fixture(scope="module")
def bob() -> HubUser:
    return hub_user("hpcp-hub-bob")


@pytest.fixture(scope="module")
def hub(slurm_cluster, ada, bob) -> Iterator[Hub]:
    with running_hub(slurm_cluster, [ada, bob]) as running:
        yield running
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "deployment-figures.json").write_text(
            json.dumps(running.figures, indent=2) + "\n"
        )


@pytest.fixture(scope="module")
def shared_chromium() -> Iterator[SharedChromium]:
    with SharedChromium() as shared:
        yield shared


def log_in(page: Page, hub: Hub, user: HubUser) -> None:
    """The hub's login form, as a user fills it in."""
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user.name)
    page.fill("#password_input", hub.password)
    page.click("#login_submit")


def wait_for_tiles(page: Page, hub: Hub, timeout: float = 120) -> None:
    for title in TITLES:
        wait_for(
            f"the {title!r} tile",
            lambda t=title: tile(page, t).first.is_visible(),
            hub,
            page,
            timeout,
        )


def test_login_waits_in_the_queue_then_opens_jupyterlab_with_every_tile(
    hub, ada, bob, slurm_cluster, shared_chromium
):
    """While another job holds both CPUs the hub says "Pending in queue"; when it ends,
    ada's job starts and JupyterLab opens, as ada, with the five tiles."""
    blocker = slurm_cluster.submit(
        "sleep 600", time_minutes=10, user=bob.local, extra=["--cpus-per-task=2"]
    )
    slurm_cluster.wait_state(blocker, "RUNNING", 30)
    with chromium("hub-pending-failure", shared=shared_chromium) as context:
        page = context.new_page()
        log_in(page, hub, ada)
        wait_for(
            '"Pending in queue"',
            lambda: "Pending in queue" in page.inner_text("body"),
            hub,
            page,
            timeout=60,
        )
        screenshot(page, "hub-pending")
        job = hub.job_of(ada)
        assert job is not None
        record = slurm_cluster.job(job)
        assert record["JobState"] == "PENDING" and record["Reason"] == "Resources", record
        assert record["UserId"].startswith(f"{ada.name}("), record
        slurm_cluster.run("scancel", blocker)
        started = time.monotonic()
        wait_for_tiles(page, hub)
        hub.figures["queue_end_to_jupyterlab_s"] = round(time.monotonic() - started, 2)
        assert page.url.startswith(f"{hub.url}/user/{ada.name}/lab"), page.url
        screenshot(page, "hub-launcher")
        assert slurm_cluster.state(job) == "RUNNING"


def ada_lab(hub: Hub, ada: HubUser, prefix: str = "hub") -> tiles.Lab:
    return tiles.Lab(f"{hub.url}/user/{ada.name}", prefix, lambda: user_processes(ada), hub.log)


def test_every_tile_through_the_hub(hub, ada, shared_chromium):
    """Xpra's and VNC's xterm, TensorBoard's charts of real event files and the RStudio
    stand-in, each from its tile in ada's JupyterLab at /user/ada/lab."""
    tiles.write_runs(ada.home, lambda path: give(ada, path))
    lab = ada_lab(hub, ada)
    clicks = hub.figures.setdefault("hub_click_to_picture_s", {})
    with chromium("hub-tiles-failure", shared=shared_chromium) as context:
        page = context.new_page()
        log_in(page, hub, ada)  # the server runs: the hub sends the browser to it
        wait_for_tiles(page, hub)
        clicks["xpra"] = round(tiles.xpra(lab, context, page), 2)
        clicks["vnc"] = round(tiles.vnc(lab, context, page), 2)
        clicks["tensorboard"] = round(tiles.tensorboard(lab, context, page, ada.home), 2)
        clicks["rstudio"] = round(tiles.rstudio(lab, context, page), 2)
    apps = tiles_processes(lab)
    assert {"xpra", "vnc", "tensorboard", "rstudio"} <= set(launchers(apps)), apps
    for pid in apps:
        assert os.stat(f"/proc/{pid}").st_uid == ada.local.uid, cmdline(pid)


def tiles_processes(lab: tiles.Lab) -> set[int]:
    """The apps' processes: each launcher and everything below it."""
    found = set()
    for launcher in launchers(lab.processes()).values():
        found |= {launcher} | procs.descendants(launcher)
    return found


def test_the_paraview_notebook_runs_on_the_paraview_kernel_through_the_hub(
    hub, ada, shared_chromium
):
    """examples/paraview.ipynb, opened in ada's JupyterLab and run: pvserver's picture,
    and the interactive view turns under a drag."""
    notebook = tiles.copy_notebook(ada.home, lambda path: give(ada, path))
    lab = ada_lab(hub, ada)
    with chromium("hub-paraview-failure", shared=shared_chromium) as context:
        page = context.new_page()
        log_in(page, hub, ada)
        wait_for_tiles(page, hub)
        seconds = tiles.paraview(lab, context, notebook)
    hub.figures.setdefault("hub_click_to_picture_s", {})["paraview"] = round(seconds, 2)


def test_the_same_tiles_on_a_plain_jupyter_lab_of_the_same_user(hub, ada, shared_chromium):
    """The baseline for the hub's figures, in the same run: ada's own ``jupyter lab``
    (no hub, no job) with the same site venv, site file and tiles."""
    python = str(hub.venv / "bin" / "python")
    toml = hub.site_config.read_text()
    with users_jupyter(ada.local, python, toml) as server:
        lab = tiles.Lab(server.url, "plain", server.descendants, server.log)
        tiles.write_runs(server.root_dir, lambda path: give(ada, path))
        notebook = tiles.copy_notebook(server.root_dir, lambda path: give(ada, path))
        clicks = hub.figures.setdefault("plain_click_to_picture_s", {})
        with chromium("plain-failure", shared=shared_chromium) as context:
            page = context.new_page()
            started = time.monotonic()
            page.goto(f"{server.url}/lab?token={server.token}")
            wait_for_tiles(page, server)
            hub.figures["plain_open_to_jupyterlab_s"] = round(time.monotonic() - started, 2)
            clicks["xpra"] = round(tiles.xpra(lab, context, page), 2)
            clicks["vnc"] = round(tiles.vnc(lab, context, page), 2)
            clicks["tensorboard"] = round(tiles.tensorboard(lab, context, page, server.root_dir), 2)
            clicks["rstudio"] = round(tiles.rstudio(lab, context, page), 2)
            clicks["paraview"] = round(tiles.paraview(lab, context, notebook), 2)


def app_targets(hub: Hub, ada: HubUser) -> tuple[dict, list[str]]:
    """What the neighbour will attack (as ``neighbour_attempts.py`` takes it), and
    ada's secrets (which the test alone knows)."""
    lab = ada_lab(hub, ada)
    pids = tiles_processes(lab)
    dirs = [launcher_runtime_dir(pid) for pid in launchers(lab.processes()).values()]
    assert len(dirs) == 5, dirs
    regular = files_below(dirs, stat.S_ISREG)
    files = [p for p in regular if p.name in ("secret", "connect-id", "Xauthority")]
    secrets = [p.read_text().strip() for p in regular if p.name in ("secret", "connect-id")]
    assert len(secrets) >= 4, "Xpra, VNC, RStudio and pvserver each have one"
    displays = x_displays(pids)
    assert len(displays) >= 3, displays  # Xpra's, VNC's and pvserver's
    # The port batchspawner-singleuser told the hub (it set it in the server's URL).
    server = server_process(ada)
    service_url = urlsplit(environ_of(server)["JUPYTERHUB_SERVICE_URL"])
    assert service_url.hostname == "127.0.0.1", service_url
    http_port = service_url.port
    assert http_port in tcp_ports({server})
    targets = {
        "argv": True,
        "pids": sorted(pids),
        "dirs": [str(d) for d in dirs],
        "sockets": [str(s) for s in files_below(dirs, stat.S_ISSOCK)],
        "files": [str(f) for f in files],
        "displays": sorted(displays),
        "tcp": sorted(tcp_ports(pids)),
        "http": {
            "port": http_port,
            "paths": [f"/user/{ada.name}/{app}/" for app in APPS]
            + [f"/user/{ada.name}/paraview/api/status", f"/user/{ada.name}/api/contents"],
        },
    }
    return targets, secrets


def ensure_apps(hub: Hub, ada: HubUser) -> None:
    """Every app of ada's running (pvserver included), started with the tier's token as
    a script of ada's would, where an earlier test has not."""
    for app in APPS:
        wait_for(
            f"{app} to run",
            lambda a=app: hub.get(f"/user/{ada.name}/{a}/")[0] == 200,
            hub,
            timeout=120,
            interval=0.5,
        )
    status, info = hub.post(f"/user/{ada.name}/paraview/api/start")
    assert status == 200, info


def test_the_neighbour_is_refused_from_inside_a_job_and_through_the_hub(
    hub, ada, bob, slurm_cluster, shared_chromium
):
    """bob logs in (his own JupyterLab is a job on the same node), is refused ada's URLs
    through the hub (403), and from a shell inside his job tries everything a user of
    the node can try against ada's apps: none of it reaches them."""
    with chromium("hub-neighbour-failure", shared=shared_chromium) as context:
        page = context.new_page()
        started = time.monotonic()
        log_in(page, hub, bob)
        wait_for_tiles(page, hub)
        hub.figures["hub_login_to_jupyterlab_s"] = round(time.monotonic() - started, 2)
        refused = {}
        for app in APPS:
            response = page.goto(f"{hub.url}/user/{ada.name}/{app}/")
            refused[app] = response.status if response else None
            assert "403" in page.title() or response.status == 403, (app, page.url)
        screenshot(page, "hub-neighbour-403")
        assert set(refused.values()) == {403}, refused

    ensure_apps(hub, ada)
    targets, secrets = app_targets(hub, ada)
    bobs_job = hub.job_of(bob)
    assert bobs_job and bobs_job != hub.job_of(ada)
    refused_before = json.loads(hub.get(f"/user/{ada.name}/paraview/api/status")[1])["refused"]
    done = slurm_cluster.run(
        "srun",
        f"--jobid={bobs_job}",
        "--overlap",
        "/usr/bin/python3",
        str(ATTACK),
        json.dumps(targets),
        user=bob.local,
        timeout=180,
    )
    said = json.loads(done.stdout)
    assert said["whoami"] == bob.local.uid and said["job"] == bobs_job, said
    table = hub.figures.setdefault("attacks_inside_a_job", {})

    def judge(attempt: str, results: dict, refused: set[str]) -> None:
        assert results, f"nothing to try for {attempt}"
        assert set(results.values()) <= refused, (attempt, results)
        table[attempt] = f"{len(results)} tried: " + ", ".join(sorted(set(results.values())))

    judge(
        "read /proc/PID/environ of ada's apps",
        said["environ"],
        {"PermissionError", "FileNotFoundError"},
    )
    judge("list ada's runtime dirs", said["dirs"], {"PermissionError"})
    judge("connect to the apps' unix sockets", said["sockets"], {"PermissionError"})
    judge("read the secret files and X cookies", said["files"], {"PermissionError"})
    assert said["displays"] and "opened" not in said["displays"].values(), said["displays"]
    table["open the apps' X displays (:N and TCP)"] = f"{len(said['displays'])} tried: all refused"
    judge("send garbage to the apps' TCP listeners on 127.0.0.1", said["tcp"], {"closed"})
    http_statuses = {path: status for path, (status, _) in said["http"].items()}
    judge(
        "GET ada's server's own port, no credentials",
        {p: str(s) for p, s in http_statuses.items()},
        {"302", "403"},
    )
    table["ada's URLs through the hub, logged in as bob"] = "403 for all five apps"
    # bob saw every process's argv, ada's too, and no secret in any.
    assert len(said["argv"]) > len(targets["pids"])
    for secret in secrets:
        assert not any(secret in line for line in said["argv"])
    table["look for a secret in every process's argv"] = f"{len(said['argv'])} read: none found"
    # The ParaView relay named him among the refused; ada's own apps still answer.
    refused_after = json.loads(hub.get(f"/user/{ada.name}/paraview/api/status")[1])["refused"]
    assert refused_after["total"] >= refused_before["total"] + len(targets["tcp"]), refused_after
    assert refused_after["latest"][0]["user"] == bob.name
    for app in APPS:
        assert hub.get(f"/user/{ada.name}/{app}/")[0] == 200


KILL_WAIT = 5  # tests/slurm.py's KillWait
SLACK = 2  # scancel's way to the node before KillWait starts, and this test's polling


def job_pids(cluster, job: str) -> dict[int, str]:
    """``scontrol listpids``: the processes Slurm tracks in the job, with their step
    (``0``, ``batch``, ...)."""
    done = cluster.run("scontrol", "listpids", job)
    rows = [line.split() for line in done.stdout.splitlines()[1:] if line.strip()]
    return {int(row[0]): row[2] for row in rows}


def what_is_left(ada: HubUser, dirs: list[Path]) -> dict:
    """ada's processes (her apps', her server's), runtime dirs and TCP listeners."""
    pids = user_processes(ada)
    return {
        "processes": {pid: " ".join(cmdline(pid))[:120] for pid in pids},
        "dirs": [str(d) for d in dirs if d.exists()],
        "listeners": sorted(tcp_ports(pids)),
    }


def wait_for_nothing(hub: Hub, ada: HubUser, dirs: list[Path], since: float) -> float:
    """Seconds from ``since`` until nothing of ada's is left; fails after the kill wait."""
    left: dict = {}

    def nothing() -> bool:
        left.update(what_is_left(ada, dirs))
        return not (left["processes"] or left["dirs"] or left["listeners"])

    wait_for("nothing of ada's left", nothing, hub, timeout=KILL_WAIT + SLACK, interval=0.1)
    return time.monotonic() - since


def running_everything(hub: Hub, ada: HubUser, slurm_cluster) -> tuple[str, list[Path]]:
    """ada's job, with every app running in it; its id and the apps' runtime dirs. Every
    process of ada's is one Slurm tracks in the job (her apps daemonise nowhere), and
    every app process is in the server's own step (batchspawner's ``srun``)."""
    ensure_apps(hub, ada)
    job = hub.job_of(ada)
    assert job is not None
    lab = ada_lab(hub, ada)
    apps = tiles_processes(lab)
    assert len(launchers(lab.processes())) == 5
    tracked = job_pids(slurm_cluster, job)
    assert apps <= tracked.keys(), {p: cmdline(p) for p in apps - tracked.keys()}
    everything = user_processes(ada)
    assert everything <= tracked.keys(), {p: cmdline(p) for p in everything - tracked.keys()}
    step = tracked[server_process(ada)]
    assert step.isdigit(), f"the server runs in step {step!r}, not in srun's"
    assert {tracked[p] for p in apps} == {step}, {p: tracked[p] for p in apps}
    dirs = [launcher_runtime_dir(pid) for pid in launchers(lab.processes()).values()]
    return job, dirs


def test_stop_from_the_hub_leaves_nothing_within_the_kill_wait(
    hub, ada, slurm_cluster, shared_chromium
):
    job, dirs = running_everything(hub, ada, slurm_cluster)
    with chromium("hub-stop-failure", shared=shared_chromium) as context:
        page = context.new_page()
        log_in(page, hub, ada)
        page.goto(f"{hub.url}/hub/home")
        page.locator("#stop").wait_for(state="visible", timeout=30_000)
        screenshot(page, "hub-home")
        clicked = time.monotonic()
        page.click("#stop")
        seconds = wait_for_nothing(hub, ada, dirs, clicked)
        wait_for(
            "the hub to offer a new start",
            lambda: page.locator("#start").is_visible(),
            hub,
            page,
            timeout=60,
        )
    hub.figures["hub_stop_to_nothing_s"] = round(seconds, 2)
    wait_for(
        f"job {job} to end",
        lambda: slurm_cluster.state(job) in slurm.FINISHED | {""},
        hub,
        timeout=30,
        interval=0.2,
    )
    hub.wait_stopped(ada)


def test_scancel_leaves_nothing_within_the_kill_wait(hub, ada, slurm_cluster):
    hub.spawn(ada)
    job, dirs = running_everything(hub, ada, slurm_cluster)
    started = time.monotonic()
    slurm_cluster.run("scancel", job)
    seconds = wait_for_nothing(hub, ada, dirs, started)
    hub.figures["scancel_to_nothing_s"] = round(seconds, 2)
    # The hub sees the server gone (it polls the job), rather than proxying to nothing.
    hub.wait_stopped(ada)
