"""A generation outlives ComfyUI going away: a crash, a restart, a hang.

A job runs in attempts. Before each, it waits until ComfyUI answers (the monitor probes with a
backoff; the job shows what it waits for). An attempt that ends with `ComfyAway` (ComfyUI gone,
restarted, forgot the prompt, hung) is recorded in the job's state with its reason, and the next
attempt first looks for the prompt by its id (a ComfyUI that was only stopped or slow may have
finished it, or still runs it) before sending it again. After MAX_ATTEMPTS such attempts the job
fails, saying each reason, and its prompt is interrupted in ComfyUI (now, or once it is back).
Any other failure (ComfyUI refused or failed the graph) fails the job at once: running it again
would fail the same way.

A hung managed ComfyUI is killed (its supervisor starts it again); a hung ComfyUI the artist runs
is treated like one that crashed: the job waits for it to answer again (after SIGCONT it may even
have rendered the prompt, which is then collected, not lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from plasmad.comfy.answers import ComfyAway
from plasmad.context import Core
from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.core.job_queue import RunContext
from plasmad.core.jobs import Attempt, GenerationState
from plasmad.core.store import now

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ATTEMPTS = 3


class Attempts:
    """The attempts of one job's run (one per `GenerationHandler.run`)."""

    def __init__(self, core: Core, ctx: RunContext, state: GenerationState) -> None:
        self._core = core
        self._ctx = ctx
        self._state = state

    async def run(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()` until one ends without ComfyUI going away, at most MAX_ATTEMPTS times."""
        while True:
            await self._until_comfyui()
            try:
                work = attempt()
                process = self._core.process
                # A managed ComfyUI that dies meanwhile ends the attempt at once, with the reason.
                return await (process.guard(work) if process is not None else work)
            except ComfyAway as exc:
                if self._ctx.cancelled.is_set():
                    raise
                await self._failed(exc)

    async def _until_comfyui(self) -> None:
        """Wait until ComfyUI answers (at once if it does); a cancel ends the wait."""
        monitor, job = self._core.monitor, self._ctx.job
        why = monitor.blocks()
        if why is not None:
            done = len(self._state.attempts)
            self._core.comfy_waits[job.id] = f"{why} (attempt {done + 1} of {MAX_ATTEMPTS} waits for it)"
            log.info("job %s waits for %s", job.id, why)
        up = asyncio.create_task(monitor.wait_up())
        cancelled = asyncio.create_task(self._ctx.cancelled.wait())
        try:
            await asyncio.wait({up, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, cancelled):
                task.cancel()
            await asyncio.gather(up, cancelled, return_exceptions=True)
            self._core.comfy_waits.pop(job.id, None)
        if self._ctx.cancelled.is_set():
            raise PlasmaError(ErrorCode.CONFLICT, "cancelled while waiting for ComfyUI")

    async def _failed(self, exc: ComfyAway) -> None:
        """Record the attempt; kill a hung managed ComfyUI; give up after MAX_ATTEMPTS."""
        core, job, state = self._core, self._ctx.job, self._state
        state.attempts = [*state.attempts, Attempt(at=now(), reason=exc.message, prompt_id=job.prompt_id)]
        await core.store.update(job.id, result=state.dump())
        n = len(state.attempts)
        log.warning("job %s: attempt %d of %d did not finish: %s", job.id, n, MAX_ATTEMPTS, exc.message)
        core.monitor.report_away(exc.reason, timed_out=exc.timed_out)
        if exc.hung and core.process is not None:
            await core.process.kill_hung(exc.reason)
        if n < MAX_ATTEMPTS:
            return
        if job.prompt_id:
            # Else a ComfyUI that comes back would still render a page nobody collects.
            await core.monitor.interrupt(job.prompt_id)
        reasons = "; ".join(f"{i}: {a.reason}" for i, a in enumerate(state.attempts, 1))
        raise PlasmaError(
            ErrorCode.COMFYUI_UNAVAILABLE,
            f"ComfyUI did not finish this job in {n} attempts ({reasons}). Check ComfyUI (`plasmactl "
            "health`, `plasmactl logs comfyui`), then queue the job again.",
            details={"attempts": [a.dump() for a in state.attempts]},
        ) from exc
