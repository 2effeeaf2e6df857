"""examples/paraview.ipynb, unchanged, in JupyterLab against each pvserver engine: one
process (``local``), 2 MPI ranks (``mpiexec``) and 2 ranks as a Slurm job of its own
(``slurm``). The user runs all cells, sees one colour per rank in pvserver's picture,
and turns the interactive view with a drag (:mod:`paraview_notebook`)."""

from __future__ import annotations

import colorsys
import io

import pytest
import slurm
from browser import chromium, rgb
from conftest import ARTIFACTS, jupyter_with_site
from paraview_notebook import copy_notebook, run_and_turn
from PIL import Image

slurm_cluster = slurm.slurm_cluster  # the session fixture


class PlainLab:
    """A plain ``jupyter lab`` as the browser reaches it (as tiles.Lab for the hub)."""

    def __init__(self, server, name: str) -> None:
        self.server = server
        self.base = server.url
        self.path = ""
        self.name = name

    def log(self) -> str:
        return self.server.log()


def colour_groups(png: bytes, bin_degrees: int = 10) -> list[float]:
    """The distinct colours of the picture's coloured pixels, as the share of each: hues
    in bins, neighbouring bins with pixels joined (shading and lighting move a colour's
    hue a little, a rank's colour a lot); groups under 5% are noise (edges)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    bins = [0] * (360 // bin_degrees)
    for r, g, b in rgb(image):
        hue, saturation, value = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        if saturation > 0.4 and value > 0.15:  # not the grey background, not shadow
            bins[int(hue * 360) // bin_degrees % len(bins)] += 1
    total = sum(bins) or 1
    occupied = [n > 0.005 * total for n in bins]
    if all(occupied):
        return [1.0]
    start = occupied.index(False)  # walk the circle from an empty bin
    groups, current = [], 0
    for i in range(len(bins)):
        k = (start + i) % len(bins)
        if occupied[k]:
            current += bins[k]
        elif current:
            groups.append(current / total)
            current = 0
    if current:
        groups.append(current / total)
    return [share for share in groups if share >= 0.05]


SITES = {
    "local": "",
    "mpiexec": 'engine = "mpiexec"\nranks = 2\n',
    "slurm": 'engine = "slurm"\nranks = 2\ntime = "10"\n',
}


@pytest.mark.browser
@pytest.mark.parametrize("engine, colours", [("local", 1), ("mpiexec", 2), ("slurm", 2)])
def test_the_example_notebook_unchanged_on_each_engine(engine, colours, request, tmp_path):
    env: dict[str, str] = {}
    toml = "[apps.paraview]\n" + SITES[engine]
    if engine == "slurm":
        cluster = request.getfixturevalue("slurm_cluster")
        env["SLURM_CONF"] = str(cluster.conf)
        toml += f'partition = "{cluster.partition}"\njob_directory = "{tmp_path / "jobs"}"\n'
    with jupyter_with_site(tmp_path, toml, env) as server:
        notebook = copy_notebook(server.root_dir, lambda path: None)
        lab = PlainLab(server, f"notebook-{engine}")
        with chromium(f"notebook-{engine}-failure", {"width": 1280, "height": 1000}) as context:
            page = context.new_page()
            page.goto(f"{server.url}/lab?token={server.token}")
            ran = run_and_turn(lab, context, notebook, timeout=180)
        (ARTIFACTS / f"notebook-{engine}.png").write_bytes(ran.png)
        found = colour_groups(ran.png)
        assert len(found) == colours, f"{engine}: {found}"
        if engine == "slurm":
            cluster.cancel_all()
