"""Through JupyterHub and a Slurm job, against a plain ``jupyter lab`` of the same user.

Runs the deployment tier (``tests/deployment/test_hub.py``) ``--runs`` times. Each run
starts its own Slurm, JupyterHub and users, and measures in the same run, for the same
ordinary user, the same site venv and the same tiles in chromium:

* login to JupyterLab through the hub (the spawn of a Slurm job included), against
  opening a plain ``jupyter lab`` of the user's;
* the click on each tile to its first picture, through ``/user/<name>/`` and on the
  plain server;
* Stop on the hub's page, and ``scancel``, to nothing of the user's left.

It prints the medians and, where there is a plain path, the ratio hub / plain.

    .venv/bin/python bench/hub_bench.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIER = ROOT / "tests" / "deployment" / "test_hub.py"
APPS = ("xpra", "vnc", "tensorboard", "rstudio", "paraview")


def one_run() -> dict:
    """The figures of one run of the tier (it must pass: a failed run measures nothing)."""
    with tempfile.TemporaryDirectory(prefix="hpcp-hub-bench-") as artifacts:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(TIER)],
            cwd=ROOT,
            env={**os.environ, "HPC_PROXIES_ARTIFACTS": artifacts},
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            sys.exit(f"the deployment tier failed:\n{done.stdout[-4000:]}")
        return json.loads((Path(artifacts) / "deployment-figures.json").read_text())


def median(runs: list[dict], *keys: str) -> tuple[float, list[float]]:
    values = []
    for run in runs:
        value = run
        for key in keys:
            value = value[key]
        values.append(float(value))
    return statistics.median(values), values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [one_run() for _ in range(args.runs)]

    def row(label: str, hub_keys: tuple[str, ...], plain_keys: tuple[str, ...] | None) -> None:
        hub, hub_all = median(runs, *hub_keys)
        if plain_keys is None:
            print(f"{label}: median {hub:.2f} s  {hub_all}")
            return
        plain, plain_all = median(runs, *plain_keys)
        print(
            f"{label}: hub median {hub:.2f} s, plain median {plain:.2f} s; "
            f"ratio {hub / plain:.2f}  hub {hub_all} plain {plain_all}"
        )

    row("login to JupyterLab", ("hub_login_to_jupyterlab_s",), ("plain_open_to_jupyterlab_s",))
    row("queue end to JupyterLab", ("queue_end_to_jupyterlab_s",), None)
    for app in APPS:
        row(
            f"{app}: click to first picture",
            ("hub_click_to_picture_s", app),
            ("plain_click_to_picture_s", app),
        )
    row("Stop on the hub's page to nothing left", ("hub_stop_to_nothing_s",), None)
    row("scancel to nothing left", ("scancel_to_nothing_s",), None)
    print(json.dumps(runs[-1]["attacks_inside_a_job"], indent=2))


if __name__ == "__main__":
    main()
