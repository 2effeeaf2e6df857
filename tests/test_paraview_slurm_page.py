"""The ParaView tile's status page where pvserver is a Slurm job of its own
(``[apps.paraview] engine = "slurm"``): what the user sees while the job waits in the
queue, once it runs, and after Stop, in chromium against the real test cluster
(:mod:`slurm`: one node, 2 CPUs).

Another job holds both CPUs, so pvserver's job (2 ranks) pends; the page says so in
words ("pending: Resources"). Once that job is cancelled, pvserver's starts: the page
says Running, with the job's node, its 2 ranks and the walltime it has left. Stop
cancels the job: the queue is empty and the page says Stopped.
"""

from __future__ import annotations

import re

import pytest
import slurm
from browser import chromium, log_in, screenshot, wait_js
from conftest import jupyter_with_site
from test_paraview import status
from test_paraview_slurm import site
from waiting import until

slurm_cluster = slurm.slurm_cluster  # the session fixture

#: The text of an element of the page, "" while it is not there (the progress page).
TEXT = "(id) => (document.getElementById(id) || {textContent: ''}).textContent"
CLOCK = re.compile(r"^(\d+):(\d\d):(\d\d)$")


@pytest.fixture(scope="module")
def slurm_page_jupyter(slurm_cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("pvslurm-page")
    toml = site(slurm_cluster, base / "jobs")
    with jupyter_with_site(base, toml, {"SLURM_CONF": str(slurm_cluster.conf)}) as server:
        yield server
    slurm_cluster.cancel_all()


def page_says(condition: str) -> str:
    """A page expression: ``condition`` (JS, with ``t(id)`` an element's text)."""
    return f"(() => {{ const t = {TEXT}; return {condition}; }})()"


def queue(cluster) -> str:
    return cluster.run("squeue", "-h", "-o", "%i %T %r").stdout.strip()


@pytest.mark.browser
def test_the_status_page_follows_pvservers_job_from_the_queue_to_stop(
    slurm_page_jupyter, slurm_cluster
):
    server = slurm_page_jupyter
    slurm_cluster.cancel_all()
    blocker = slurm_cluster.submit("sleep 300", time_minutes=5, extra=["--ntasks=2"])
    try:
        slurm_cluster.wait_state(blocker, "RUNNING", 30)
        with chromium("paraview-slurm-page-failure", {"width": 1000, "height": 860}) as context:
            page = context.new_page()
            log_in(page, server)
            # Opening the tile's page starts pvserver: its job queues behind the blocker.
            page.goto(f"{server.url}/paraview/")
            page.wait_for_selector("#job-rows", state="attached", timeout=90_000)
            wait_js(
                page,
                page_says(
                    "/ — pending: (Resources|Priority)$/.test(t('job'))"
                    " && t('state') === 'Starting…'"
                    " && t('message').includes('is pending')"
                ),
                "the page to show pvserver's job pending for Resources or Priority",
                server,
                timeout=60,
            )
            info = status(server)
            job_id = info["job"]["id"]
            assert info["engine"] == "slurm" and info["job"]["state"] == "PENDING", info
            assert page.is_visible("#job-rows")
            assert page.inner_text("#job").startswith(f"{job_id} — pending: "), info
            assert page.inner_text("#job-nodes") == "—"
            assert page.inner_text("#job-ranks") == "2"
            assert page.inner_text("#job-limit") == "00:10:00"
            assert page.inner_text("#job-left") == "—"
            assert not page.is_visible("#job-ending-row")
            assert f"job {job_id} is pending" in page.inner_text("#message")
            assert not page.is_disabled("#stop")
            screenshot(page, "paraview-slurm-pending")

            # The CPUs are free: pvserver's job starts, and pvserver connects back.
            slurm_cluster.run("scancel", blocker)
            node = slurm_cluster.node
            wait_js(
                page,
                page_says(
                    "t('state') === 'Running'"
                    f" && t('job') === '{job_id} — running'"
                    f" && t('job-nodes') === '{node}'"
                    " && t('job-ranks') === '2' && t('ranks') === '2'"
                    " && /^\\d+:\\d\\d:\\d\\d$/.test(t('job-left'))"
                ),
                "the page to show pvserver's job running on its node with 2 ranks",
                server,
                timeout=240,
            )
            left = CLOCK.match(page.inner_text("#job-left"))
            assert left, page.inner_text("#job-left")
            seconds = int(left[1]) * 3600 + int(left[2]) * 60 + int(left[3])
            assert 0 < seconds <= 600, seconds  # the site's time = "10" (minutes)
            reachable = page.inner_text("#network")
            assert reachable.startswith("nowhere on the job's nodes"), reachable
            assert "connects back to" in reachable
            assert not page.is_visible("#job-ending-row")
            screenshot(page, "paraview-slurm-running")

            # Stop cancels the job: nothing of it is left in the queue.
            page.click("#stop")
            until(
                lambda: queue(slurm_cluster) == "",
                90,
                "Slurm's queue to be empty after Stop",
                interval=0.2,
            )
            wait_js(
                page,
                page_says("t('state') === 'Stopped'"),
                "the page to show pvserver stopped",
                server,
                timeout=90,
            )
            # The job is over: no walltime counts down for it any more.
            wait_js(
                page,
                page_says(f"t('job') === '{job_id} — cancelled' && t('job-left') === '—'"),
                "the page to show the job cancelled, with no walltime left",
                server,
                timeout=10,
            )
            assert page.inner_text("#message") == "Stopped from the status page."
            assert page.inner_text("#restart") == "Start"
            screenshot(page, "paraview-slurm-stopped")
    finally:
        slurm_cluster.cancel_all()
