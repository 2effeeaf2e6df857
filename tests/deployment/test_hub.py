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
import time
from collections.abc import Iterator

import pytest
import slurm
import tiles
from browser import SharedChromium, chromium, screenshot, tile, wait_for
from conftest import ARTIFACTS
from hubfixtures import Hub, HubUser, give, hub_user, launchers, running_hub, user_processes
from playwright.sync_api import Page
from processes import cmdline

from hpc_proxies import procs

pytestmark = pytest.mark.browser

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
    for pid in tiles_processes(lab):
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
