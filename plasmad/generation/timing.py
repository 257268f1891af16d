"""How fast one generation ran in ComfyUI: the wall time and the sampler's iterations per second.

ComfyUI sends `progress {value, max}` after each sampler step. The rate is taken between the first
and the last step of a run of steps, as tqdm does, so model loading and the VAE decode (before
and after the sampler) do not water it down; the wall time has everything. The benchmark
(INFRA-04) reads both from the job's result, where the generation handler puts them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

Report = Callable[[int, int], Awaitable[None]]


class StepTimer:
    def __init__(self, report: Report) -> None:
        self._report = report
        self._started = time.monotonic()
        self._ended: float | None = None
        # The current run of steps, and the longest one seen (a preprocessor may report its own
        # progress before the sampler does; the sampler's run is the long one).
        self._run: tuple[int, float, int, float, int] | None = None  # first v, t, last v, t, max
        self._best: tuple[int, float, int, float, int] | None = None

    async def report(self, step: int, total: int) -> None:
        t = time.monotonic()
        run = self._run
        if run is None or step <= run[2] or total != run[4]:
            run = (step, t, step, t, total)
        else:
            run = (run[0], run[1], step, t, total)
        self._run = run
        if self._best is None or run[2] - run[0] >= self._best[2] - self._best[0]:
            self._best = run
        await self._report(step, total)

    def stop(self) -> None:
        self._ended = time.monotonic()

    def summary(self) -> dict[str, Any]:
        """`seconds` in ComfyUI (queueing the prompt to its end), `steps`, `itPerSec` (None if unknown)."""
        ended = self._ended if self._ended is not None else time.monotonic()
        out: dict[str, Any] = {"seconds": round(ended - self._started, 3), "steps": None, "itPerSec": None}
        if self._best is not None:
            first_v, first_t, last_v, last_t, total = self._best
            out["steps"] = total
            if last_v > first_v and last_t > first_t:
                out["itPerSec"] = round((last_v - first_v) / (last_t - first_t), 3)
        return out

    def describe(self) -> str:
        s = self.summary()
        rate = f", {s['itPerSec']} it/s" if s["itPerSec"] is not None else ""
        steps = f"{s['steps']} steps" if s["steps"] else "no progress reported"
        return f"{steps}{rate}, {s['seconds']:.1f} s in ComfyUI"
