"""LoRA training as a job of plasmad (LORA-01..03, GEN-06): submitted, queued, watched, stopped,
sampled, promoted. `TrainingOps` holds the operations both APIs expose, implemented once.

A training is a job of kind TRAIN in the same store and the same FIFO queue as generation, so it
runs under the same GPU lock: a generation submitted during a training waits, and its status names
the training. The queue's side of it (run / stop / recover) is `plasmad.training.handler`; what a
training job stores is `plasmad.training.state`.

Choosing the checkpoint (LORA-02/03): `samples` queues, through the normal generation path, the
same prompts with the same seeds for every checkpoint, then one contact sheet is drawn
(`plasmad.training.samples`); `promote` copies the chosen checkpoint into ComfyUI's loras folder
under the LoRA's name, refusing to replace anything there (`plasmad.training.promote`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path
from typing import Any

from plasmad.comfy import model_paths
from plasmad.context import Core
from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.core.states import ACTIVE_STATES, JobKind, JobStatus
from plasmad.core.store import Job
from plasmad.core.wire import (
    CheckpointView,
    LorasView,
    LossParams,
    LossPoint,
    LossView,
    TrainingView,
    TrainRequest,
    checked,
    dump,
    parse,
)
from plasmad.training.checkpoints import list_checkpoints
from plasmad.training.comfy_trainer.staging import OWN_FOLDER
from plasmad.training.loss_log import loss_path, read_loss
from plasmad.training.promote import PromoteOps
from plasmad.training.samples import SAMPLES_LORA_FOLDER, SampleOps
from plasmad.training.state import (
    LOG_NAME,
    OUTPUT_SUBDIR,
    TrainingState,
    find_training,
    spec_of,
    training_dir,
)
from plasmad.training.trainers import make_backend, trainer_name
from plasmad.training.validation import validate_train

log = logging.getLogger(__name__)

TAIL_LINES = 20
TAIL_BYTES = 64 * 1024


class TrainingOps:
    """train / status / list / cancel / samples / promote, for both APIs."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._cfg = core.cfg
        # One change to a training at a time: the 409 check and the insert are one step, and so
        # are reading and writing back a training's samples and promotions.
        self._lock = asyncio.Lock()
        self._samples = SampleOps(core, self._lock)
        self._promote = PromoteOps(core, self._lock)

    async def train(self, body: Any) -> dict[str, Any]:
        """Validate, preflight, and queue a training; 409 while another is queued or running."""
        self._core.check_accepting()
        req = parse(TrainRequest, body)
        plan = await validate_train(req, self._cfg)
        await self._refuse_second()
        job_id = f"t_{secrets.token_hex(6)}"  # service.new_job_id's form for a training
        folder = training_dir(self._cfg, job_id)
        name = trainer_name(self._cfg)
        state = TrainingState(
            trainer=name,
            dir=folder,
            output_dir=folder / OUTPUT_SUBDIR,
            log_file=folder / LOG_NAME,
            image_dir=plan.image_dir,
            reg_dir=plan.reg_dir if plan.reg_dir else None,
            images=plan.images,
            checkpoint=plan.checkpoint,
            checkpoint_path=plan.checkpoint_path,
            warnings=list(plan.warnings),
        )
        job = Job(id=job_id, kind=JobKind.TRAIN, status=JobStatus.QUEUED, request=plan.request)
        backend = make_backend(name, self._cfg, self._core.comfy, self._core.monitor)
        prepared = await backend.prepare(spec_of(job, state))
        state.settings = prepared.settings
        state.warnings = [*state.warnings, *prepared.warnings]
        folders = await asyncio.to_thread(model_paths.model_folders, self._cfg)
        file_name = f"{req.output_name}.safetensors"
        there = await asyncio.to_thread(folders.find, "loras", file_name)
        if there is not None:
            state.warn(
                f"{file_name} is already in ComfyUI's loras folders ({there}): promote will need another "
                "name (--as)"
            )
        state.store_in(job)
        async with self._lock:
            await self._refuse_second()
            await self._core.queue.add(job)
        log.info("training %s queued (%s, %d steps, %s)", job.id, name, req.steps, plan.dataset_dir)
        for warning in state.warnings:
            log.warning("training %s: %s", job.id, warning)
        return await self.view(job)

    async def _refuse_second(self) -> None:
        active = await self._core.store.in_states(JobKind.TRAIN, ACTIVE_STATES)
        if active:
            other = active[0]
            raise PlasmaError(
                ErrorCode.CONFLICT,
                f"training {other.id} is {other.status.value}: one training at a time (GEN-06)",
                details={"training": other.id, "status": other.status.value},
            )

    async def status(self, training_id: Any) -> dict[str, Any]:
        return await self.view(await find_training(self._core, training_id))

    async def view(self, job: Job, tail: int = TAIL_LINES) -> dict[str, Any]:
        state = TrainingState.of(job)
        spec = spec_of(job, state)
        checkpoints = await asyncio.to_thread(list_checkpoints, spec.output_dir, spec.output_name)
        lines = await asyncio.to_thread(read_tail, spec.log_path, tail) if tail else []
        live = self._core.queue.live_progress(job.id)
        step = live[0] if live else (job.step or state.step or 0)
        waiting_for = None
        if job.status == JobStatus.QUEUED:
            waiting_for = await self._core.waiting_for(job)
        running = job.status == JobStatus.RUNNING
        return dump(
            TrainingView(
                id=job.id,
                status=job.status,
                trainer=str(state.trainer),
                output_name=spec.output_name,
                dataset_dir=str(spec.dataset_dir),
                step=int(step),
                total=spec.steps,
                loss=state.loss,
                sec_per_step=state.sec_per_step,
                eta_seconds=state.eta_seconds if running else None,
                checkpoints=[CheckpointView.model_validate(c.dump()) for c in checkpoints],
                log_tail=lines,
                log_file=str(spec.log_path),
                output_dir=str(spec.output_dir),
                outcome=state.outcome,
                reason=state.reason or (job.error or {}).get("message"),
                advice=state.advice,
                warnings=list(state.warnings),
                waiting_for=waiting_for,
                created_at=job.created_at,
                started_at=job.started_at,
                finished_at=job.finished_at,
                request=job.request,
                samples=state.samples.summary() if state.samples is not None else None,
            )
        )

    async def list_trainings(self, body: Any = None) -> dict[str, Any]:
        """The trainings, newest first, and the LoRAs ComfyUI can load."""
        jobs = await self._core.store.recent(kind=JobKind.TRAIN, limit=50)
        current = self._core.queue.current
        trainings = [
            await self.view(current if current is not None and current.id == j.id else j, tail=0)
            for j in jobs
        ]
        folders = await asyncio.to_thread(model_paths.model_folders, self._cfg)
        on_disk = await asyncio.to_thread(folders.names, "loras")  # where ComfyUI looks, links followed
        listed: list[str] | None = None
        error = None
        try:
            self._core.comfy.forget_object_info()  # a promoted file must show up now, not at a restart
            listed = await self._core.comfy.input_choices("LoraLoader", "lora_name")
        except PlasmaError as exc:
            error = exc.message
        own = (f"{SAMPLES_LORA_FOLDER}/", f"{OWN_FOLDER}/")  # plasmad's own copies, not the artist's LoRAs
        names = sorted({*on_disk, *(listed or [])})
        loras = [
            {"name": n, "inFolder": n in on_disk, "comfyui": None if listed is None else n in listed}
            for n in names
            if not n.startswith(own)
        ]
        answer = {
            "trainings": trainings,
            "loras": loras,
            "comfyuiError": error,
            "sampleCopies": sum(1 for n in on_disk if n.startswith(own)),
        }
        return dict(checked(LorasView, answer))

    async def cancel(self, training_id: Any) -> dict[str, Any]:
        job = await find_training(self._core, training_id)
        await self._core.queue.cancel(job)
        return await self.view(await find_training(self._core, training_id))

    async def loss(self, training_id: Any, query: Any = None) -> dict[str, Any]:
        """The loss at each step so far (the board's curve); with `after`, only the newer steps."""
        params = parse(LossParams, query or {})
        job = await find_training(self._core, training_id)
        path = loss_path(spec_of(job).log_path)
        points = await asyncio.to_thread(read_loss, path, params.after)
        return dump(LossView(training=job.id, points=[LossPoint(step=s, loss=v) for s, v in points]))

    # --- choosing the checkpoint (LORA-02/03) ------------------------------------------------------

    async def samples(self, training_id: Any, body: Any = None) -> dict[str, Any]:
        """Queue the same prompts with the same seeds for every checkpoint (and the base, if asked)."""
        return await self._samples.start(training_id, body)

    async def samples_status(self, training_id: Any) -> dict[str, Any]:
        """Where the samples are; the contact sheet is drawn once every job has ended."""
        return await self._samples.status(training_id)

    async def promote(self, training_id: Any, body: Any = None) -> dict[str, Any]:
        """Copy one checkpoint into ComfyUI's loras folder under the LoRA's name (LORA-03)."""
        return await self._promote.promote(training_id, body)


def read_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last lines of a log as a terminal shows them: a tqdm bar redrawn with \\r is its last
    drawing (blocking)."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    text = data.decode("utf-8", "replace").split("\n")
    if len(data) == TAIL_BYTES:
        text = text[1:]  # the first line was cut by the seek
    shown = []
    for line in text:
        drawings = [d for d in line.split("\r") if d.strip()]
        if drawings:
            shown.append(drawings[-1].rstrip())
    return shown[-lines:]
