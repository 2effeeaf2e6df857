"""The Running panel in JupyterLab, in Debian's chromium, on a real Jupyter server with
real Xpra desktops: the rows, Stop (checked with /proc), a second desktop from the
launcher drawing its own xterm, Show log, a failed app, idle shutdown, Notebook 7, and
the walltime left of a real Slurm job."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import slurm
from browser import (
    SharedChromium,
    chromium,
    log_tail,
    page_state,
    screenshot,
    stats,
    tile,
    wait_for,
    wait_for_xpra_xterm,
)
from conftest import ARTIFACTS, jupyter_with_site
from instances_api import instance, launcher_of, listed, ok, runtime_dir_of, wait_state
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from processes import alive, cmdline
from test_xpra_browser import assert_xterm_pixels, type_into_xterm

from hpc_proxies import procs

SITE = """
[apps.xpra]
max_instances = 2

[apps.rstudio]
executable = "/nonexistent/bin/rserver"
"""
IDLE_SITE = """
[apps.xpra]
idle_timeout = 0.05   # 3 s: minutes, in a test
"""
slurm_cluster = slurm.slurm_cluster  # the session fixture

#: The panel's section, and a row by "app/instance".
SECTION = ".hpc-proxies-item"
ROW = '[data-hpc-instance="{key}"]'


@pytest.fixture(scope="module")
def shared() -> SharedChromium:
    with SharedChromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with jupyter_with_site(tmp_path_factory.mktemp("panel"), SITE) as server:
        yield server


def open_lab(context, server) -> Page:
    """JupyterLab, logged in, with the Running panel open."""
    lab = context.new_page()
    console: list[str] = []
    lab.on(
        "console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None
    )
    # ?reset: a fresh layout, not the one an earlier test's page left in the workspace.
    lab.goto(f"{server.url}/lab?reset&token={server.token}")
    tab = lab.locator('.jp-SideBar [data-id="jp-running-sessions"]')
    try:
        tab.wait_for(state="visible", timeout=90_000)
    except PlaywrightTimeout:
        raise AssertionError(f"no Running tab{page_state(lab)}{log_tail(server)}") from None
    tab.click()
    lab.locator("#jp-running-sessions").wait_for(state="visible")
    # Our section, and room for it: the panel's other sections folded, as a user would.
    ours = lab.locator('.jp-AccordionPanel-title[aria-label="Apps (hpc-proxies) Section"]')
    ours.wait_for(state="visible", timeout=30_000)
    others = lab.locator(
        '#jp-running-sessions .jp-AccordionPanel-title[aria-expanded="true"]'
        ':not([aria-label="Apps (hpc-proxies) Section"])'
    )
    for title in others.element_handles():  # each once: a click toggles it
        title.click(position={"x": 8, "y": 8})  # on the caret, not the section's buttons
    lab.console_errors = console  # type: ignore[attr-defined]
    return lab


def row(lab: Page, key: str):
    return lab.locator(ROW.format(key=key))


def wait_row(lab: Page, server, key: str, state: str, timeout: float = 30) -> float:
    """Wait until the panel shows ``key`` in ``state``; the seconds it took."""
    started = time.monotonic()
    wait_for(
        f"the panel to show {key} {state}",
        lambda: (
            row(lab, key).count() == 1 and row(lab, key).get_attribute("data-hpc-state") == state
        ),
        server,
        lab,
        timeout,
        interval=0.05,
    )
    return time.monotonic() - started


def x_display(tree: set[int]) -> str:
    """``DISPLAY`` of the xterm in a desktop's process tree."""
    for pid in tree:
        argv = cmdline(pid)
        if argv and argv[0].rsplit("/", 1)[-1] == "xterm":
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            return next(v[8:].decode() for v in environ if v.startswith(b"DISPLAY="))
    raise AssertionError(f"no xterm among {[cmdline(pid)[:1] for pid in sorted(tree)]}")


def status_text(lab: Page, key: str) -> str:
    return row(lab, key).locator("[data-hpc-status]").inner_text()


def test_the_panel_lists_the_desktop_and_stop_ends_every_process(server, shared):
    with chromium("running-panel-stop", shared=shared) as context:
        lab = open_lab(context, server)
        # Started elsewhere (another tab, the CLI): the panel follows by itself.
        server.wait_for_app("/xpra/")
        running = wait_state(server, "xpra", "default", "running")
        latency = wait_row(lab, server, "xpra/default", "running")
        print(f"panel update latency after the app answered: {latency:.2f} s")
        assert latency < 5
        text = status_text(lab, "xpra/default")
        assert "running" in text and "MiB" in text, text
        shot = screenshot(lab, "running-panel-one")
        box = row(lab, "xpra/default").bounding_box()
        assert box and box["width"] > 100, box
        assert (
            stats(
                shot.crop((box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]))
            ).dark
            > 50
        ), "the row is drawn with text"

        pids = set(running["pids"])
        runtime = runtime_dir_of(server, "xpra")
        clicked = time.monotonic()
        row(lab, "xpra/default").locator('[data-hpc-action="stop"]').click()
        wait_for(
            "every process of the desktop to end",
            lambda: not alive(pids),
            server,
            lab,
            timeout=30,
            interval=0.02,
        )
        gone = time.monotonic() - clicked
        print(f"Stop clicked to every process gone: {gone:.2f} s ({len(pids)} processes)")
        assert not runtime.exists()
        wait_row(lab, server, "xpra/default", "stopped")
        assert "stopped by you" in status_text(lab, "xpra/default")
        screenshot(lab, "running-panel-stopped")
        assert not lab.console_errors, lab.console_errors  # type: ignore[attr-defined]


def test_a_second_desktop_from_the_launcher_draws_its_own_xterm(server, shared):
    with chromium("running-panel-second", shared=shared) as context:
        lab = open_lab(context, server)
        with context.expect_page(timeout=30_000) as first_tab:
            tile(lab, "Xpra Desktop").click()
        tab1 = first_tab.value
        wait_for_xpra_xterm(tab1, "instance-1", server)

        card = lab.locator(".jp-LauncherCard", has_text="New Xpra Desktop instance")
        card.wait_for(state="visible", timeout=30_000)
        with context.expect_page(timeout=30_000) as second_tab:
            card.click()
        tab2 = second_tab.value
        box2, shot2 = wait_for_xpra_xterm(tab2, "instance-2", server)
        assert_xterm_pixels(shot2, box2, "instance-2")
        assert "/xpra@" in tab2.url, tab2.url
        name = tab2.url.split("/xpra@", 1)[1].split("/", 1)[0]

        first, second = instance(server, "xpra", "default"), instance(server, "xpra", name)
        assert first["state"] == second["state"] == "running"
        assert not set(first["pids"]) & set(second["pids"]), "two desktops, two process trees"
        first_tree = {launcher_of(server, "xpra")} | procs.descendants(launcher_of(server, "xpra"))
        second_tree = {launcher_of(server, f"xpra@{name}")} | procs.descendants(
            launcher_of(server, f"xpra@{name}")
        )
        assert not first_tree & second_tree
        assert [a for a in cmdline(min(second_tree)) if "xpra@" in a], "its own URL prefix"

        # What is typed in the second tab runs on the second desktop.
        typed = server.root_dir / "typed-in-the-second-desktop"
        type_into_xterm(tab2, box2, f"echo $DISPLAY > {typed}")
        wait_for(
            "the typed command to run", lambda: typed.exists() and typed.read_text(), server, tab2
        )
        shown = typed.read_text().strip()
        assert shown == x_display(second_tree) != x_display(first_tree), (
            shown,
            x_display(first_tree),
        )

        lab.bring_to_front()
        wait_row(lab, server, "xpra/default", "running")
        wait_row(lab, server, f"xpra/{name}", "running")
        screenshot(lab, "running-panel-two")

        # Stopping the second leaves the first drawing.
        row(lab, f"xpra/{name}").locator('[data-hpc-action="stop"]').click()
        wait_for("the second desktop to end", lambda: not alive(second_tree), server, lab)
        assert alive(first_tree) == first_tree
        tab1.bring_to_front()
        wait_for_xpra_xterm(tab1, "instance-1-after", server)


def test_show_log_displays_the_apps_lines_and_a_failed_app_its_problem(server, shared):
    with chromium("running-panel-log", shared=shared) as context:
        lab = open_lab(context, server)
        server.wait_for_app("/xpra/")
        wait_row(lab, server, "xpra/default", "running")
        row(lab, "xpra/default").locator('[data-hpc-action="log"]').click()
        log = lab.locator(".hpc-proxies-log").last
        wait_for(
            "the log to show Xpra's own lines",
            lambda: "xpra" in log.inner_text().lower() and "ready after" in log.inner_text(),
            server,
            lab,
        )
        screenshot(lab, "running-panel-log")

        # RStudio, whose program is not there: its row says so, and its log too.
        server.request("/rstudio/")  # the progress page: the start fails after it
        wait_for(
            "the panel to show RStudio's problem",
            lambda: (
                row(lab, "rstudio/default").count() == 1
                and "not installed" in status_text(lab, "rstudio/default")
            ),
            server,
            lab,
        )
        row(lab, "rstudio/default").locator('[data-hpc-action="log"]').click()
        problem_log = lab.locator(".hpc-proxies-log").last
        wait_for(
            "the failed app's log to show its problem",
            lambda: "/nonexistent/bin/rserver" in problem_log.inner_text(),
            server,
            lab,
        )
        screenshot(lab, "running-panel-failed")


def test_notebook_7_lists_the_apps_in_its_running_tab(server, shared):
    """The same prebuilt extension in Notebook 7's file browser (no rebuild)."""
    server.wait_for_app("/xpra/")
    wait_state(server, "xpra", "default", "running")
    with chromium("running-notebook7", shared=shared) as context:
        tree = context.new_page()
        errors: list[str] = []
        tree.on("pageerror", lambda err: errors.append(str(err)))
        tree.goto(f"{server.url}/tree?token={server.token}")
        running = tree.get_by_role("tab", name="Running")
        running.wait_for(state="visible", timeout=90_000)
        running.click()
        wait_row(tree, server, "xpra/default", "running")
        assert "running" in status_text(tree, "xpra/default")
        screenshot(tree, "running-notebook7")
        ours = [e for e in errors if "hpc-proxies" in e or "hpc_proxies" in e]
        assert not ours, ours


def test_an_idle_desktop_is_stopped_and_its_url_starts_it_again(tmp_path, shared):
    with (
        jupyter_with_site(tmp_path, IDLE_SITE) as server,
        chromium("running-panel-idle", shared=shared) as context,
    ):
        lab = open_lab(context, server)
        tab = context.new_page()
        tab.goto(f"{server.url}/xpra/")
        wait_for_xpra_xterm(tab, "idle-open", server)
        running = wait_state(server, "xpra", "default", "running")
        assert running["connected"], running

        # Open in a tab for twice the timeout: it stays.
        deadline = time.monotonic() + 6.5
        while time.monotonic() < deadline:
            assert instance(server, "xpra", "default")["state"] == "running"
            time.sleep(0.5)

        tab.close()
        closed = time.monotonic()
        stopped = wait_state(server, "xpra", "default", "stopped", timeout=30)
        took = time.monotonic() - closed
        print(f"idle stop after the tab closed: {took:.1f} s (idle_timeout 3 s)")
        assert stopped["last_exit"]["reason"] == "idle"
        assert stopped["last_exit"]["description"] == "stopped: idle for 0.05 min"
        assert not alive(set(running["pids"]))
        wait_row(lab, server, "xpra/default", "stopped")
        assert "idle for 0.05 min" in status_text(lab, "xpra/default")
        screenshot(lab, "running-panel-idle")

        again = context.new_page()
        again.goto(f"{server.url}/xpra/")
        wait_for(
            "the progress page to say why it starts again",
            lambda: "without use" in again.inner_text("body"),
            server,
            again,
            timeout=15,
        )
        screenshot(again, "running-idle-restart-page")
        wait_for_xpra_xterm(again, "idle-again", server)
        assert listed(server)[("xpra", "default")]["state"] == "running"
        ok(server, "POST", "stop-all")
        assert ARTIFACTS.is_dir()


def test_inside_a_slurm_job_the_panel_shows_the_walltime_left(tmp_path, shared, slurm_cluster):
    """A server whose environment is a real running job's (as in a BatchSpawner job):
    the API and the panel show what the real slurmctld says is left of it."""
    job = slurm_cluster.submit(["sleep", "600"], time_minutes=7)
    slurm_cluster.wait_state(job, "RUNNING", 30)
    env = {"SLURM_JOB_ID": job, "SLURM_CONF": slurm_cluster.env["SLURM_CONF"]}
    try:
        with (
            jupyter_with_site(tmp_path, None, env) as server,
            chromium("running-panel-slurm", shared=shared) as context,
        ):
            told = ok(server, "GET", "instances")["job"]
            assert told is not None and told["id"] == job, told
            assert 5 * 60 < told["remaining"] <= 7 * 60, told
            lab = open_lab(context, server)
            shown = lab.locator(f'.hpc-proxies-job [data-hpc-job="{job}"]')
            shown.wait_for(state="visible", timeout=30_000)
            text = shown.inner_text()
            assert re.fullmatch(rf"Slurm job {job}: [56] min left", text.strip()), text
            screenshot(lab, "running-panel-slurm")
    finally:
        slurm_cluster.run("scancel", job)
