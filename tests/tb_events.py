"""Real TensorBoard event files for the tests, written with TensorBoard's own writer
(``EventFileWriter`` and its ``Event``/``Summary`` protos: what ``tf.summary`` and
``torch.utils.tensorboard`` write), no TensorFlow needed."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

STEPS = 100


def write_scalars(run_dir: Path, tag: str, curve: Callable[[int], float]) -> list[float]:
    """One run with a scalar ``tag`` at steps 0..99; the values written."""
    writer = EventFileWriter(str(run_dir))
    values = [curve(step) for step in range(STEPS)]
    for step, value in enumerate(values):
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
        writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))
    writer.close()
    return values


def falling(step: int) -> float:
    """A training loss: starts at 1, falls towards 0."""
    return math.exp(-step / 20)


def rising(step: int) -> float:
    """An accuracy: starts at 0, rises towards 1."""
    return 1 - math.exp(-step / 20)


def write_experiments(root: Path) -> dict[str, tuple[Path, str, list[float]]]:
    """Two experiments under ``root``: exp1/run_a (a falling loss) and exp2/run_b (a
    rising accuracy). Returns run name (as TensorBoard names it from ``root``) ->
    (its directory, its tag, its values)."""
    runs = {}
    for exp, run, tag, curve in (
        ("exp1", "run_a", "loss", falling),
        ("exp2", "run_b", "accuracy", rising),
    ):
        run_dir = root / "experiments" / exp / run
        runs[f"experiments/{exp}/{run}"] = (run_dir, tag, write_scalars(run_dir, tag, curve))
    return runs
