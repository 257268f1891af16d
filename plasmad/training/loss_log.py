"""A training's loss log: the trainer's running average loss at each step, for the board's curve.

`<state>/trainings/<id>/loss.jsonl`, one JSON line `{"step", "loss"}` per value the trainer reported
(the training state keeps only the last). Lines are appended off the event loop, in order
(`plasmad.core.appender`); a line cut short by a crash is skipped when read.

kohya draws each step's bar twice, and a step's first drawing still shows the previous step's
average: so a step may have two lines, and the last one for a step is its value.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from plasmad.core.appender import Appender

LOSS_NAME = "loss.jsonl"


def loss_path(log_path: Path) -> Path:
    """Beside the training's train.log, in its own folder."""
    return log_path.with_name(LOSS_NAME)


class LossLog:
    """Appends a training's loss values; `close` once the run ends (what is pending is written)."""

    def __init__(self, path: Path) -> None:
        self._out = Appender(path, "loss log")
        self._last: tuple[int, float] | None = None

    def record(self, step: int, loss: float) -> None:
        if self._last == (step, loss):
            return  # the same drawing again: nothing new
        self._last = (step, loss)
        self._out.write(json.dumps({"step": step, "loss": loss}) + "\n")

    async def close(self) -> None:
        await self._out.close()


def read_loss(path: Path, after: int | None = None) -> list[tuple[int, float]]:
    """(step, loss) in step order, the last value of each step; only steps after `after` if given
    (blocking)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    by_step: dict[int, float] = {}
    for line in text.splitlines():
        try:
            point = json.loads(line)
            step, loss = point["step"], point["loss"]
        except (ValueError, TypeError, KeyError):
            continue  # a line cut short by a crash
        if not isinstance(step, int) or not isinstance(loss, int | float) or not math.isfinite(loss):
            continue  # NaN has no place on a curve (nor in JSON); the training's status tells of it
        if after is None or step > after:
            by_step[step] = float(loss)
    return sorted(by_step.items())
