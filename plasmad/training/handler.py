"""The queue's side of a training: run a TRAIN job under the GPU lock, stop it, recover it.

The trainer itself is a backend behind `plasmad.training.backend` (kohya where KOHYA_* are set, else
ComfyUI's own nodes). Checkpoints are kept in every case: a failure, a cancel, an out-of-memory
kill, or the daemon dying (the training is then `interrupted`, its checkpoints listed, at the next
start). A training cannot be parked for later as a generation can: it has no way to resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from plasmad.context import Core
from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.core.job_queue import RunContext
from plasmad.core.states import JobStatus
from plasmad.core.store import Job, now
from plasmad.training.backend import Outcome, TrainerBackend, TrainEvents, TrainProgress, TrainSpec
from plasmad.training.checkpoints import Checkpoint, list_checkpoints
from plasmad.training.loss_log import LossLog, loss_path
from plasmad.training.state import Announced, TrainingState, spec_of
from plasmad.training.trainers import make_backend

log = logging.getLogger(__name__)

PERSIST_EVERY_S = 15.0  #: progress reaches the store this often (a crash loses at most this much)

_INTERRUPTED_ADVICE = (
    "A training cannot be resumed. Compare the checkpoints it kept (plasmactl lora samples), promote "
    "one if it is good enough, or start the training again."
)


class TrainingHandler:
    """Runs a TRAIN job under the GPU lock the queue holds for it."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._cfg = core.cfg
        self._store = core.store
        self._comfy = core.comfy
        self.events = core.events  #: training.progress and training.checkpoint, for GET /events
        self._stops: dict[str, asyncio.Event] = {}

    def backend(self, name: str | None) -> TrainerBackend:
        return make_backend(name, self._cfg, self._comfy, self._core.monitor)

    @staticmethod
    def needs_comfyui(job: Job) -> bool:
        """kohya trains without ComfyUI; ComfyUI's own trainer is ComfyUI."""
        try:
            return TrainingState.of(job).trainer != "kohya"
        except (KeyError, TypeError, ValueError):
            return True

    async def run(self, ctx: RunContext) -> dict[str, object]:
        job = ctx.job
        # The job object the queue holds is what status reads while it runs: every change to the
        # state is written into it at once (`TrainingState.store_in`).
        state = TrainingState.of(job)
        spec = spec_of(job, state)
        backend = self.backend(state.trainer)
        stop = self._stops.setdefault(job.id, asyncio.Event())
        if ctx.cancelled.is_set():
            stop.set()
        await asyncio.to_thread(spec.output_dir.mkdir, parents=True, exist_ok=True)
        state.total, state.outcome, state.reason, state.advice = spec.steps, None, None, None
        state.store_in(job)
        paused = await self._make_room(job, backend.name)
        reporter = _Events(self, ctx, spec)
        log.info("training %s: %s starts (%d steps)", job.id, backend.name, spec.steps)
        try:
            outcome = await backend.run(spec, reporter.events(), stop)
        except asyncio.CancelledError:
            if ctx.parked:
                await self._park(job, spec, backend)
            raise
        except PlasmaError as exc:
            await self._settle(job, spec, Outcome("failed", exc.message, None))
            raise
        finally:
            self._stops.pop(job.id, None)
            await reporter.close()
            if paused and self._core.process is not None:
                self._core.process.resume()
        error = await self._settle(job, spec, outcome)
        if error is not None:
            raise error
        return dict(job.result or {})

    async def _make_room(self, job: Job, trainer: str) -> bool:
        """The trainer needs the memory ComfyUI holds. A managed ComfyUI is stopped during a kohya
        training (its whole process, not only its models; True: resume it after); otherwise
        ComfyUI is asked to unload its models."""
        process = self._core.process
        if trainer == "kohya" and process is not None:
            await process.pause(f"training {job.id}")
            log.info("training %s: the managed ComfyUI is stopped until the training ends", job.id)
            return True
        await self._free_comfyui(job)
        return False

    async def _free_comfyui(self, job: Job) -> None:
        try:
            # LORA / GEN-06: ComfyUI keeps the last generation's models loaded; the trainer needs
            # that memory. (The ComfyUI backend loads what it needs again.)
            await self._comfy.free()
            log.info("training %s: ComfyUI asked to unload its models", job.id)
        except PlasmaError as exc:
            log.warning("training %s: could not ask ComfyUI to free memory: %s", job.id, exc)
            state = TrainingState.of(job)
            state.warn(f"ComfyUI did not free its memory first: {exc.message}")
            state.store_in(job)

    async def persist(self, job: Job, spec: TrainSpec) -> None:
        """The live job's state into the store (a crash loses what came after)."""
        await self._store.update(job.id, result=job.result, step=TrainingState.of(job).step, total=spec.steps)

    async def _settle(self, job: Job, spec: TrainSpec, outcome: Outcome) -> PlasmaError | None:
        """Record how it ended, with every checkpoint on disk; the error to fail it with, if any."""
        checkpoints = await asyncio.to_thread(list_checkpoints, spec.output_dir, spec.output_name)
        kept = [c for c in checkpoints if c.complete]
        state = TrainingState.of(job)
        state.outcome, state.reason, state.advice = outcome.kind, outcome.reason, outcome.advice
        state.checkpoints = checkpoints
        state.forget_eta()
        state.store_in(job)
        log.info("training %s: %s (%s); %d checkpoints", job.id, outcome.kind, outcome.reason, len(kept))
        if outcome.kind == "succeeded":
            return None
        await self.persist(job, spec)
        details = {"outcome": outcome.kind, "advice": outcome.advice, "checkpoints": [c.file for c in kept]}
        if outcome.kind == "cancelled":
            message = f"{outcome.reason}; {len(kept)} checkpoint{'s' if len(kept) != 1 else ''} kept"
            return PlasmaError(ErrorCode.TRAINING_FAILED, message, details=details)
        error = outcome.as_error()
        assert error is not None
        error.details = details
        return error

    async def _park(self, job: Job, spec: TrainSpec, backend: TrainerBackend) -> None:
        """plasmad is stopping mid-training: a training cannot be resumed, so it ends here as
        `interrupted`, with what the trainer left behind stopped and its checkpoints listed."""
        state, error = await _interrupt(job, spec, backend, "plasmad was stopped during the training")
        await self._store.update(
            job.id,
            status=JobStatus.INTERRUPTED,
            result=state.dump(),
            error=error.to_dict(),
            finished_at=now(),
            step=state.step,
            total=spec.steps,
        )

    async def stop(self, ctx: RunContext) -> None:
        # kohya: SIGTERM to its process group, SIGKILL after a grace; ComfyUI: interrupt the prompt.
        self._stops.setdefault(ctx.job.id, asyncio.Event()).set()

    async def recover(self, job: Job) -> JobStatus:
        """Found running at startup: the daemon died during it. Never run again silently, never lost:
        stop what is left of it, list its checkpoints, and call it interrupted."""
        try:
            state = TrainingState.of(job)
            spec = spec_of(job, state)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("training %s: its stored state is incomplete (%s)", job.id, exc)
            return JobStatus.INTERRUPTED
        backend = self.backend(state.trainer)
        state, error = await _interrupt(job, spec, backend, "plasmad stopped during the training")
        state.forget_eta()
        await self._store.update(job.id, result=state.dump(), error=error.to_dict())
        return JobStatus.INTERRUPTED


class _Events:
    """The callbacks a running backend reports through, for one run: each change goes into the live
    job's state; the store gets it at each checkpoint and every PERSIST_EVERY_S; followers of
    GET /events get `training.progress` (each new step) and `training.checkpoint`."""

    def __init__(self, handler: TrainingHandler, ctx: RunContext, spec: TrainSpec) -> None:
        self._handler = handler
        self._ctx = ctx
        self._job = ctx.job
        self._spec = spec
        self._persisted = time.monotonic()
        self._published_step: int | None = None
        self._loss = LossLog(loss_path(spec.log_path))  #: every loss value, for the board's curve

    def events(self) -> TrainEvents:
        return TrainEvents(progress=self.progress, checkpoint=self.checkpoint, started=self.started)

    async def close(self) -> None:
        await self._loss.close()

    async def _persist(self) -> None:
        self._persisted = time.monotonic()
        await self._handler.persist(self._job, self._spec)

    async def progress(self, p: TrainProgress) -> None:
        state = TrainingState.of(self._job)
        state.step, state.sec_per_step, state.eta_seconds = p.step, p.sec_per_step, p.eta_seconds
        if p.loss is not None:
            state.loss = p.loss
            self._loss.record(p.step, p.loss)
        state.store_in(self._job)
        await self._ctx.report(p.step, p.total)
        if p.step != self._published_step:  # kohya draws each step twice
            self._published_step = p.step
            self._handler.events.publish(
                "training.progress",
                training=self._job.id,
                step=p.step,
                total=p.total,
                loss=state.loss,
                secPerStep=p.sec_per_step,
                etaSeconds=p.eta_seconds,
            )
        if time.monotonic() - self._persisted > PERSIST_EVERY_S:
            await self._persist()

    async def checkpoint(self, step: int | None, path: Path) -> None:
        state = TrainingState.of(self._job)
        state.announced = [*state.announced, Announced(step=step, path=str(path))]
        state.store_in(self._job)
        log.info("training %s: checkpoint %s", self._job.id, path.name)
        self._handler.events.publish(
            "training.checkpoint", training=self._job.id, step=step, file=path.name, path=str(path)
        )
        await self._persist()

    async def started(self, info: dict[str, Any]) -> None:
        state = TrainingState.of(self._job)
        state.run = {**state.run, **info}
        state.store_in(self._job)
        await self._persist()


def _interrupted_reason(state: TrainingState, checkpoints: list[Checkpoint], why: str) -> str:
    step, total = state.step, state.total
    where = f" (last recorded: step {step} of {total})" if step else ""
    kept = len([c for c in checkpoints if c.complete])
    return f"{why}{where}; {kept} checkpoint{'s' if kept != 1 else ''} kept"


async def _interrupt(
    job: Job, spec: TrainSpec, backend: TrainerBackend, why: str
) -> tuple[TrainingState, PlasmaError]:
    """A training that ends without finishing (a stop, a restart): stop what the trainer left
    running, list its checkpoints in the job's state, and return that state and the error that
    says so."""
    try:
        await backend.abandon(spec, dict(TrainingState.of(job).run))
    except Exception:
        log.exception("training %s: cleaning up what the trainer left failed", job.id)
    checkpoints = await asyncio.to_thread(list_checkpoints, spec.output_dir, spec.output_name)
    state = TrainingState.of(job)  # read after the waits: a promotion may have been recorded meanwhile
    reason = _interrupted_reason(state, checkpoints, why)
    state.outcome, state.reason, state.advice = "interrupted", reason, _INTERRUPTED_ADVICE
    state.checkpoints = checkpoints
    state.store_in(job)
    return state, PlasmaError(ErrorCode.TRAINING_FAILED, reason, details={"outcome": "interrupted"})
