"""pvserver on 2 MPI ranks (``[apps.paraview] engine = "mpiexec"``), driven by the same
notebook code as one process: ``connect()``, a source, ``show()``.

What the user sees is checked: each rank's part of a sphere, coloured by ``ProcessId``,
shows in its own colour in the PNG that pvserver renders (two clearly different hues),
and ParaView reports 2 data partitions. The ranks run in the private network namespace
with the rest of the run, so OpenMPI's own TCP listeners are not on the host, and
stopping pvserver leaves no rank behind.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from browser import chromium, log_in, rgb, screenshot
from conftest import ARTIFACTS, jupyter_with_site
from PIL import Image
from processes import cmdline, tcp_listeners, wait_gone
from test_paraview import PvKernel, post, status

SITE = '[apps.paraview]\nengine = "mpiexec"\nranks = 2\nmax_ranks = 3\n'

CELL = """
import base64, json
import hpc_proxies.paraview as pvh
from paraview.simple import *
from paraview import servermanager
pvh.connect()
sphere = Sphere(ThetaResolution=64, PhiResolution=64)
ids = ProcessIdScalars(Input=sphere)
shown = Show(ids)
ColorBy(shown, ("POINTS", "ProcessId"))
lut = GetColorTransferFunction("ProcessId")
lut.ApplyPreset("Rainbow Uniform", True)
lut.RescaleTransferFunction(0.0, 1.0)
view = GetActiveViewOrCreate("RenderView")
view.ViewSize = [480, 360]
view.OrientationAxesVisibility = 0
ResetCamera()
data = servermanager.Fetch(ids)
png = pvh.show(interactive=False).data
print(json.dumps({
    "partitions": servermanager.ActiveConnection.GetNumberOfDataPartitions(),
    "process_ids": list(data.GetPointData().GetArray("ProcessId").GetRange()),
    "png": base64.b64encode(png).decode(),
}))
"""


@pytest.fixture(scope="module")
def mpi_jupyter(tmp_path_factory):
    with jupyter_with_site(tmp_path_factory.mktemp("mpi"), SITE) as server:
        yield server


def ranks_of(server) -> set[int]:
    """pvserver's ranks: each runs ParaView's server.py under mpiexec."""
    return {
        pid
        for pid in server.descendants()
        if cmdline(pid)[1:2] and cmdline(pid)[1].endswith("paraview/server.py")
    }


def hues(png: bytes) -> list[tuple[int, int, int]]:
    """The clearly coloured pixels' colours, rounded (the background is grey-blue and
    shading only darkens a hue), most common first."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    counts: dict[tuple[int, int, int], int] = {}
    for r, g, b in rgb(image):
        if max(r, g, b) - min(r, g, b) < 60:
            continue  # grey: the background, or a shadow
        top = max(r, g, b)
        key = tuple(round(c / top * 4) for c in (r, g, b))  # hue, not brightness
        counts[key] = counts.get(key, 0) + 1
    total = sum(counts.values())
    return [k for k, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n > 0.05 * total]


def test_two_ranks_each_render_their_partition(mpi_jupyter):
    with PvKernel(mpi_jupyter) as kernel:
        out, err = kernel.run(CELL, timeout=240)
        assert err is None, (err, mpi_jupyter.log()[-3000:])
        said = json.loads(out.strip().splitlines()[-1])
        info = status(mpi_jupyter)
        ranks = ranks_of(mpi_jupyter)
        listeners = tcp_listeners(mpi_jupyter.descendants())
        connect_id = Path(info["connect_id_file"]).read_text().strip()
        argvs = [" ".join(cmdline(pid)) for pid in mpi_jupyter.descendants()]
    png = base64.b64decode(said["png"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "paraview-mpi-2-ranks.png").write_bytes(png)
    assert said["partitions"] == 2
    assert said["process_ids"] == [0.0, 1.0]
    colours = hues(png)
    assert len(colours) >= 2, f"one colour only: {colours}"
    assert info["state"] == "running" and info["ranks"] == 2, info
    assert len(ranks) == 2, [cmdline(pid) for pid in ranks]
    # OpenMPI's listeners are in pvserver's network namespace; on the host, only the
    # relay on 127.0.0.1 (as with one process).
    assert all(" 127.0.0.1:" in line for line in listeners), listeners
    # mpiexec and every rank read the connect-id from its 0600 file, never from argv.
    assert any("mpiexec" in argv or "orterun" in argv for argv in argvs), argvs
    assert not [argv for argv in argvs if connect_id in argv]

    code, stopped = post(mpi_jupyter, "stop")
    assert code == 200 and stopped["state"] == "stopped", stopped
    assert not wait_gone(ranks, 10)


ASK = """
import json
import hpc_proxies.paraview as pvh
from hpc_proxies.paraview.errors import ParaViewError
from paraview import servermanager
try:
    pvh.connect(ranks=9)
    refused = None
except ParaViewError as err:
    refused = str(err)
pvh.connect(ranks=1)
print(json.dumps({
    "refused": refused,
    "partitions": servermanager.ActiveConnection.GetNumberOfDataPartitions(),
}))
"""


def test_the_user_asks_for_a_rank_count_within_the_sites_maximum(mpi_jupyter):
    """connect(ranks=N): 9 is over the site's max_ranks (3), and the error says what is
    allowed; 1 gives a pvserver on one rank."""
    with PvKernel(mpi_jupyter) as kernel:
        out, err = kernel.run(ASK, timeout=240)
        assert err is None, (err, mpi_jupyter.log()[-3000:])
        said = json.loads(out.strip().splitlines()[-1])
        info = status(mpi_jupyter)
        ranks = ranks_of(mpi_jupyter)
    assert "9 ranks: this system allows 1 to 3" in said["refused"], said
    assert "max_ranks" in said["refused"]
    assert said["partitions"] == 1
    assert info["ranks"] == 1 and len(ranks) == 1, (info, ranks)
    post(mpi_jupyter, "stop")
    assert not wait_gone(ranks, 10)


def test_one_process_systems_refuse_more_ranks_clearly(tmp_path):
    """engine = "local" (the default): asking for 2 ranks is a 400 that names the key an
    administrator would change, and changes nothing (the tile's one process, which
    opening the tile starts, stays one)."""
    with jupyter_with_site(tmp_path) as server:
        server.wait_for_app("/paraview/api/status")
        code, body = post(server, "start?ranks=2")
        assert code == 400, body
        assert "engine is 'local'" in body["error"] and "mpiexec" in body["error"], body
        assert body["ranks"] in (0, 1) and len(ranks_of(server)) <= 1, body
        code, body = post(server, "start?ranks=two")
        assert code == 400 and "not a number" in body["error"], body
        code, body = post(server, "start?wait=soon")
        assert code == 400 and "not a number of seconds" in body["error"], body


@pytest.mark.browser
def test_the_status_page_restarts_pvserver_on_the_ranks_asked_for(mpi_jupyter):
    """The tile's status page: a Ranks field (up to max_ranks) beside Restart; a count
    the site allows restarts pvserver on it, one it does not is refused in words."""
    mpi_jupyter.wait_for_app("/paraview/api/status")  # launched, also when run alone
    code, body = post(mpi_jupyter, "start?ranks=2")
    assert code == 200 and body["ranks"] == 2, body
    with chromium("paraview-ranks-failure", {"width": 900, "height": 700}) as context:
        page = context.new_page()
        log_in(page, mpi_jupyter)
        page.goto(f"{mpi_jupyter.url}/paraview/")
        page.wait_for_function("document.getElementById('ranks').textContent === '2'")
        field = page.locator("#ranks-input")
        assert field.is_visible() and field.get_attribute("max") == "3"
        field.fill("1")
        page.click("#restart")
        page.wait_for_function(
            "document.getElementById('ranks').textContent === '1'"
            " && document.getElementById('state').textContent === 'Running'",
            timeout=60_000,
        )
        screenshot(page, "paraview-ranks-1")
        assert len(ranks_of(mpi_jupyter)) == 1
        field.fill("9")
        page.click("#restart")
        page.wait_for_function(
            "document.getElementById('message').textContent.includes('allows 1 to 3')"
        )
        screenshot(page, "paraview-ranks-refused")
        assert status(mpi_jupyter)["ranks"] == 1
    post(mpi_jupyter, "stop")
