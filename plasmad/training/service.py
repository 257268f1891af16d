"""LoRA training as a job of plasmad (LORA-01..03, GEN-06): submitted, queued, watched, stopped,
sampled, promoted.

A training is a job of kind TRAIN in the same store and the same FIFO queue as generation, so it
runs under the same GPU lock: a generation submitted during a training waits, and its status names
the training. `TrainingHandler` runs it (the queue's Handler: run / stop / recover); the trainer
itself is a backend behind `plasmad.training.backend` (kohya where KOHYA_* are set, else ComfyUI's own
nodes). `TrainingService` holds the operations both APIs expose, implemented once.

Everything about one training is in `<state>/trainings/<id>/`: `train.log` (the trainer's output)
and `output/` (its checkpoints, kohya's names whichever backend). Checkpoints are kept in every
case: a failure, a cancel, an out-of-memory kill, or the daemon dying (the training is then
`interrupted`, its checkpoints listed, at the next start).

Choosing the checkpoint (LORA-02/03): `samples` queues, through the normal generation path, the
same prompts with the same seeds for every checkpoint (copied into ComfyUI's
`models/loras/plasma-samples/<id>/`, a folder plasmad owns, so the artist's files are never
touched), then one contact sheet is drawn; `promote` copies the chosen checkpoint into ComfyUI's
loras folder under the LoRA's name, refusing to replace anything there.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

from plasmad.comfy import modelfiles
from plasmad.comfy.client import ComfyClient
from plasmad.context import Core
from plasmad.core.config import Config
from plasmad.core.errors import ErrorCode, PlasmaError, invalid, not_found
from plasmad.core.fsutil import copy_new, same_file_content
from plasmad.core.job_queue import RunContext
from plasmad.core.jobs import Destination, GenerationState
from plasmad.core.states import ACTIVE_STATES, FINISHED_STATES, JobKind, JobStatus
from plasmad.core.store import Job, now
from plasmad.core.wire import (
    CheckpointView,
    GenerateRequest,
    PromoteRequest,
    TrainingView,
    TrainRequest,
    TrainSamplesRequest,
    dump,
    parse,
)
from plasmad.training import kohya, sample_sheet
from plasmad.training.backend import Outcome, TrainerBackend, TrainEvents, TrainProgress, TrainSpec
from plasmad.training.comfy_trainer import ComfyTrainer
from plasmad.training.kohya_backend import KohyaTrainer
from plasmad.training.validation import check_output_name, validate_train

log = logging.getLogger(__name__)

LOG_NAME = "train.log"
OUTPUT_SUBDIR = "output"
SAMPLES_SUBDIR = "samples"
SAMPLES_LORA_FOLDER = "plasma-samples"  #: under ComfyUI's models/loras: plasmad's own copies
TAIL_LINES = 20
TAIL_BYTES = 64 * 1024
PERSIST_EVERY_S = 15.0  #: progress reaches the store this often (a crash loses at most this much)
# Three pictures that tell a character LoRA apart (face, figure, pose); the trigger word leads.
DEFAULT_SAMPLE_PROMPTS = (
    "{trigger}, close-up, looking at viewer, white background",
    "{trigger}, full body, standing, white background",
    "{trigger}, upper body, arms crossed, rooftop at night",
)


def trainer_name(cfg: Config) -> str:
    """kohya where it is configured (or asked for), else ComfyUI's own nodes."""
    if cfg.trainer == "auto":
        return "kohya" if cfg.kohya_python is not None and cfg.kohya_script is not None else "comfyui"
    return cfg.trainer


def make_backend(name: str, cfg: Config, comfy: ComfyClient) -> TrainerBackend:
    if name == "kohya":
        return KohyaTrainer(cfg)
    return ComfyTrainer(cfg, comfy)


def training_dir(cfg: Config, training_id: str) -> Path:
    return cfg.trainings_dir / training_id


def spec_of(job: Job) -> TrainSpec:
    """The backend's view of a stored training (job.request is the wire request, job.result ours)."""
    req, res = job.request, job.result or {}
    return TrainSpec(
        training_id=job.id,
        output_name=str(req["outputName"]),
        dataset_dir=Path(req["datasetDir"]),
        image_dir=Path(res["imageDir"]),
        reg_dir=Path(res["regDir"]) if res.get("regDir") else None,
        checkpoint=str(res["checkpoint"]),
        checkpoint_path=Path(res["checkpointPath"]),
        steps=int(req["steps"]),
        save_every=int(req["saveEverySteps"]),
        resolution=int(req["resolution"]),
        network_dim=int(req["networkDim"]),
        network_alpha=float(req["networkAlpha"]),
        learning_rate=float(req["learningRate"]),
        seed=int(req["seed"]),
        output_dir=Path(res["outputDir"]),
        log_path=Path(res["logFile"]),
        settings=dict(res.get("settings") or {}),
    )


def scan_checkpoints(spec: TrainSpec) -> list[dict[str, Any]]:
    """The checkpoints on disk, by step, then the final file (blocking: reads headers only)."""
    found = []
    for step, path in kohya.scan_checkpoints(spec.output_dir, spec.output_name):
        try:
            size = path.stat().st_size
        except OSError:
            continue
        found.append(
            {
                "step": step,
                "file": path.name,
                "path": str(path),
                "bytes": size,
                "complete": kohya.safetensors_complete(path),
            }
        )
    return found


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


def _interrupted_reason(state: dict[str, Any], checkpoints: list[dict[str, Any]], why: str) -> str:
    step, total = state.get("step"), state.get("total")
    where = f" (last recorded: step {step} of {total})" if step else ""
    kept = len([c for c in checkpoints if c["complete"]])
    return f"{why}{where}; {kept} checkpoint{'s' if kept != 1 else ''} kept"


# --------------------------------------------------------------------------------------------------
# The queue's handler


class TrainingHandler:
    """Runs a TRAIN job under the GPU lock the queue holds for it."""

    def __init__(self, core: Core) -> None:
        self._cfg = core.cfg
        self._store = core.store
        self._comfy = core.comfy
        self._stops: dict[str, asyncio.Event] = {}

    def backend(self, name: str) -> TrainerBackend:
        return make_backend(name, self._cfg, self._comfy)

    async def run(self, ctx: RunContext) -> dict[str, object]:
        job = ctx.job
        # The job object the queue holds is what status reads while it runs: keep it current.
        state: dict[str, Any] = dict(job.result or {})
        job.result = state
        spec = spec_of(job)
        backend = self.backend(str(state.get("trainer")))
        stop = self._stops.setdefault(job.id, asyncio.Event())
        if ctx.cancelled.is_set():
            stop.set()
        await asyncio.to_thread(spec.output_dir.mkdir, parents=True, exist_ok=True)
        state.update(total=spec.steps, outcome=None, reason=None, advice=None)
        try:
            # LORA / GEN-06: ComfyUI keeps the last generation's models loaded; the trainer needs
            # that memory. (The ComfyUI backend loads what it needs again.)
            await self._comfy.free()
            log.info("training %s: ComfyUI asked to unload its models", job.id)
        except PlasmaError as exc:
            log.warning("training %s: could not ask ComfyUI to free memory: %s", job.id, exc)
            state.setdefault("warnings", []).append(f"ComfyUI did not free its memory first: {exc.message}")
        persisted = time.monotonic()

        async def persist() -> None:
            nonlocal persisted
            persisted = time.monotonic()
            await self._store.update(job.id, result=state, step=state.get("step"), total=spec.steps)

        async def progress(p: TrainProgress) -> None:
            state.update(step=p.step, secPerStep=p.sec_per_step, etaSeconds=p.eta_seconds)
            if p.loss is not None:
                state["loss"] = p.loss
            await ctx.report(p.step, p.total)
            if time.monotonic() - persisted > PERSIST_EVERY_S:
                await persist()

        async def checkpoint(step: int | None, path: Path) -> None:
            state.setdefault("announced", []).append({"step": step, "path": str(path)})
            log.info("training %s: checkpoint %s", job.id, path.name)
            await persist()

        async def started(info: dict[str, Any]) -> None:
            state.setdefault("run", {}).update(info)
            await persist()

        events = TrainEvents(progress=progress, checkpoint=checkpoint, started=started)
        log.info("training %s: %s starts (%d steps)", job.id, backend.name, spec.steps)
        try:
            outcome = await backend.run(spec, events, stop)
        except asyncio.CancelledError:
            if ctx.parked:
                await self._park(job, state, spec, backend)
            raise
        except PlasmaError as exc:
            await self._settle(job, state, spec, Outcome("failed", exc.message, None))
            raise
        finally:
            self._stops.pop(job.id, None)
        error = await self._settle(job, state, spec, outcome)
        if error is not None:
            raise error
        return state

    async def _settle(
        self, job: Job, state: dict[str, Any], spec: TrainSpec, outcome: Outcome
    ) -> PlasmaError | None:
        """Record how it ended, with every checkpoint on disk; the error to fail it with, if any."""
        checkpoints = await asyncio.to_thread(scan_checkpoints, spec)
        kept = [c for c in checkpoints if c["complete"]]
        state.update(
            outcome=outcome.kind, reason=outcome.reason, advice=outcome.advice, checkpoints=checkpoints
        )
        state.pop("etaSeconds", None)
        log.info("training %s: %s (%s); %d checkpoints", job.id, outcome.kind, outcome.reason, len(kept))
        if outcome.kind == "succeeded":
            return None
        await self._store.update(job.id, result=state, step=state.get("step"), total=spec.steps)
        details = {
            "outcome": outcome.kind,
            "advice": outcome.advice,
            "checkpoints": [c["file"] for c in kept],
        }
        if outcome.kind == "cancelled":
            message = f"{outcome.reason}; {len(kept)} checkpoint{'s' if len(kept) != 1 else ''} kept"
            return PlasmaError(ErrorCode.TRAINING_FAILED, message, details=details)
        error = outcome.as_error()
        assert error is not None
        error.details = details
        return error

    async def _park(self, job: Job, state: dict[str, Any], spec: TrainSpec, backend: TrainerBackend) -> None:
        """plasmad is stopping mid-training: a training cannot be resumed, so it ends here as
        `interrupted`, with what the trainer left behind stopped and its checkpoints listed."""
        error = await _interrupt(job, state, spec, backend, "plasmad was stopped during the training")
        await self._store.update(
            job.id,
            status=JobStatus.INTERRUPTED,
            result=state,
            error=error.to_dict(),
            finished_at=now(),
            step=state.get("step"),
            total=spec.steps,
        )

    async def stop(self, ctx: RunContext) -> None:
        # kohya: SIGTERM to its process group, SIGKILL after a grace; ComfyUI: interrupt the prompt.
        self._stops.setdefault(ctx.job.id, asyncio.Event()).set()

    async def recover(self, job: Job) -> JobStatus:
        """Found running at startup: the daemon died during it. Never run again silently, never lost:
        stop what is left of it, list its checkpoints, and call it interrupted."""
        state: dict[str, Any] = dict(job.result or {})
        try:
            spec = spec_of(job)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("training %s: its stored state is incomplete (%s)", job.id, exc)
            return JobStatus.INTERRUPTED
        backend = self.backend(str(state.get("trainer")))
        error = await _interrupt(job, state, spec, backend, "plasmad stopped during the training")
        state.pop("etaSeconds", None)
        await self._store.update(job.id, result=state, error=error.to_dict())
        return JobStatus.INTERRUPTED


_INTERRUPTED_ADVICE = (
    "A training cannot be resumed. Compare the checkpoints it kept (plasmactl lora samples), promote "
    "one if it is good enough, or start the training again."
)


async def _interrupt(
    job: Job, state: dict[str, Any], spec: TrainSpec, backend: TrainerBackend, why: str
) -> PlasmaError:
    """A training that ends without finishing (a stop, a restart): stop what the trainer left
    running, list its checkpoints in `state`, and return the error that says so."""
    try:
        await backend.abandon(spec, dict(state.get("run") or {}))
    except Exception:
        log.exception("training %s: cleaning up what the trainer left failed", job.id)
    checkpoints = await asyncio.to_thread(scan_checkpoints, spec)
    reason = _interrupted_reason(state, checkpoints, why)
    state.update(outcome="interrupted", reason=reason, advice=_INTERRUPTED_ADVICE, checkpoints=checkpoints)
    return PlasmaError(ErrorCode.TRAINING_FAILED, reason, details={"outcome": "interrupted"})


# --------------------------------------------------------------------------------------------------
# The operations


class TrainingOps:
    """train / status / list / cancel / samples / promote, for both APIs."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._cfg = core.cfg
        self._lock = asyncio.Lock()  # the 409 check and the insert are one step

    async def train(self, body: Any) -> dict[str, Any]:
        """Validate, preflight, and queue a training; 409 while another is queued or running."""
        self._core.check_accepting()
        req = parse(TrainRequest, body)
        plan = await validate_train(req, self._cfg)
        await self._refuse_second()
        job_id = f"t_{secrets.token_hex(6)}"  # service.new_job_id's form for a training
        folder = training_dir(self._cfg, job_id)
        name = trainer_name(self._cfg)
        state: dict[str, Any] = {
            "trainer": name,
            "dir": str(folder),
            "outputDir": str(folder / OUTPUT_SUBDIR),
            "logFile": str(folder / LOG_NAME),
            "imageDir": str(plan.image_dir),
            "regDir": str(plan.reg_dir) if plan.reg_dir else None,
            "images": plan.images,
            "checkpoint": plan.checkpoint,
            "checkpointPath": str(plan.checkpoint_path),
            "warnings": list(plan.warnings),
        }
        job = Job(id=job_id, kind=JobKind.TRAIN, status=JobStatus.QUEUED, request=plan.request, result=state)
        spec = spec_of(job)
        prepared = await make_backend(name, self._cfg, self._core.comfy).prepare(spec)
        state["settings"] = prepared.settings
        state["warnings"] += prepared.warnings
        target = self._cfg.require_comfyui_dir() / "models" / "loras" / f"{req.output_name}.safetensors"
        if await asyncio.to_thread(target.exists):
            state["warnings"].append(
                f"{target.name} is already in ComfyUI's loras folder: promote will need another name (--as)"
            )
        async with self._lock:
            await self._refuse_second()
            await self._core.store.add(job)
        self._core.queue.notify()
        log.info("training %s queued (%s, %d steps, %s)", job.id, name, req.steps, plan.dataset_dir)
        for warning in state["warnings"]:
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

    async def _training(self, training_id: Any) -> Job:
        if not isinstance(training_id, str) or not training_id:
            raise invalid("id", "must be a training id")
        # The running one is the queue's live object: its state holds loss, speed and time left.
        return await self._core.job(training_id, JobKind.TRAIN)

    async def status(self, training_id: Any) -> dict[str, Any]:
        return await self.view(await self._training(training_id))

    async def view(self, job: Job, tail: int = TAIL_LINES) -> dict[str, Any]:
        state = job.result or {}
        spec = spec_of(job)
        checkpoints = await asyncio.to_thread(scan_checkpoints, spec)
        lines = await asyncio.to_thread(read_tail, spec.log_path, tail) if tail else []
        live = self._core.queue.live_progress(job.id)
        step = live[0] if live else (job.step or state.get("step") or 0)
        waiting_for = None
        if job.status == JobStatus.QUEUED:
            waiting_for = await self._core.waiting_for(job)
        outcome = state.get("outcome")
        running = job.status == JobStatus.RUNNING
        return dump(
            TrainingView(
                id=job.id,
                status=job.status,
                trainer=str(state.get("trainer")),
                output_name=spec.output_name,
                dataset_dir=str(spec.dataset_dir),
                step=int(step),
                total=spec.steps,
                loss=state.get("loss"),
                sec_per_step=state.get("secPerStep"),
                eta_seconds=state.get("etaSeconds") if running else None,
                checkpoints=[CheckpointView(**c) for c in checkpoints],
                log_tail=lines,
                log_file=str(spec.log_path),
                output_dir=str(spec.output_dir),
                outcome=outcome,
                reason=state.get("reason") or (job.error or {}).get("message"),
                advice=state.get("advice"),
                warnings=list(state.get("warnings") or []),
                waiting_for=waiting_for,
                created_at=job.created_at,
                started_at=job.started_at,
                finished_at=job.finished_at,
                request=job.request,
                samples=_samples_summary(state.get("samples")),
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
        folder = self._cfg.require_comfyui_dir() / "models" / "loras"
        on_disk = await asyncio.to_thread(modelfiles.list_models, folder)
        listed: list[str] | None = None
        error = None
        try:
            self._core.comfy.forget_object_info()  # a promoted file must show up now, not at a restart
            listed = await self._core.comfy.input_choices("LoraLoader", "lora_name")
        except PlasmaError as exc:
            error = exc.message
        own = (f"{SAMPLES_LORA_FOLDER}/", "plasma-train/")
        names = sorted({*on_disk, *(listed or [])})
        loras = [
            {"name": n, "inFolder": n in on_disk, "comfyui": None if listed is None else n in listed}
            for n in names
            if not n.startswith(own)
        ]
        return {
            "trainings": trainings,
            "loras": loras,
            "comfyuiError": error,
            "sampleCopies": sum(1 for n in on_disk if n.startswith(own)),
        }

    async def cancel(self, training_id: Any) -> dict[str, Any]:
        job = await self._training(training_id)
        await self._core.queue.cancel(job)
        return await self.view(await self._training(training_id))

    # --- choosing the checkpoint (LORA-02/03) ------------------------------------------------------

    async def samples(self, training_id: Any, body: Any = None) -> dict[str, Any]:
        """Queue the same prompts with the same seeds for every checkpoint (and the base, if asked)."""
        self._core.check_accepting()
        job = await self._training(training_id)
        if job.status not in FINISHED_STATES:
            raise PlasmaError(
                ErrorCode.CONFLICT,
                f"training {job.id} is {job.status.value}: samples need it finished or stopped",
            )
        req = parse(TrainSamplesRequest, body or {})
        prompts = list(
            req.prompts or [p.format(trigger=self._cfg.trigger_word) for p in DEFAULT_SAMPLE_PROMPTS]
        )
        for i, prompt in enumerate(prompts):
            if not prompt.strip() or len(prompt) > 8000:
                raise invalid(f"prompts.{i}", "must be 1-8000 characters")
        spec = spec_of(job)
        checkpoints = [c for c in await asyncio.to_thread(scan_checkpoints, spec) if c["complete"]]
        if not checkpoints:
            raise PlasmaError(ErrorCode.CONFLICT, f"training {job.id} kept no checkpoint to sample")
        key = json.dumps(
            [prompts, req.model_dump(mode="json", exclude={"prompts"}), [c["file"] for c in checkpoints]],
            sort_keys=True,
        )
        set_id = hashlib.sha256(key.encode()).hexdigest()[:10]
        async with self._lock:
            job = await self._training(job.id)
            state = dict(job.result or {})
            existing = state.get("samples")
            progress = await self._samples_progress(existing) if existing else None
            if progress is not None and progress["active"]:
                raise PlasmaError(
                    ErrorCode.CONFLICT,
                    f"samples of {job.id} are being drawn ({progress['done']} of {progress['total']})",
                )
            if existing and progress is not None and existing.get("set") == set_id and not progress["failed"]:
                samples = existing  # the same set asked again: its images (and sheet) are reused
            else:
                samples = await self._queue_samples(job, state, spec, req, prompts, checkpoints, set_id)
        return await self._samples_answer(job.id, samples)

    async def _queue_samples(
        self,
        job: Job,
        state: dict[str, Any],
        spec: TrainSpec,
        req: TrainSamplesRequest,
        prompts: list[str],
        checkpoints: list[dict[str, Any]],
        set_id: str,
    ) -> dict[str, Any]:
        """One generation job per checkpoint and prompt, through the normal queue (caller holds the lock)."""
        lora_dir = self._cfg.require_comfyui_dir() / "models" / "loras" / SAMPLES_LORA_FOLDER / job.id
        rows: list[dict[str, Any]] = []
        if req.include_base:
            rows.append({"label": "base (no LoRA)", "step": None, "loraId": None})
        for c in checkpoints:
            await asyncio.to_thread(_copy_for_comfyui, Path(c["path"]), lora_dir / c["file"])
            label = f"step {c['step']}" if c["step"] is not None else f"final (step {spec.steps})"
            rows.append(
                {"label": label, "step": c["step"], "loraId": f"{SAMPLES_LORA_FOLDER}/{job.id}/{c['file']}"}
            )
        requests: list[tuple[GenerateRequest, Destination | None]] = []
        for row in rows:
            for j, prompt in enumerate(prompts):
                request: dict[str, Any] = {
                    "prompt": prompt,
                    "negativePrompt": req.negative_prompt,
                    "seed": req.seed + j,
                    "steps": req.steps,
                    "resolution": req.resolution.model_dump(),
                }
                if row["loraId"]:
                    request.update(loraId=row["loraId"], loraStrength=req.lora_strength)
                requests.append((parse(GenerateRequest, request), None))
        # All or nothing: no half set left in the queue.
        queued = [job.id for job in await self._core.submit_generations(requests)]
        for i, row in enumerate(rows):
            row["jobs"] = queued[i * len(prompts) : (i + 1) * len(prompts)]
        samples = {
            "set": set_id,
            "prompts": prompts,
            "seeds": [req.seed + j for j in range(len(prompts))],
            "request": req.model_dump(mode="json", by_alias=True, exclude={"prompts"}),
            "rows": rows,
            "sheet": None,
            "createdAt": now(),
        }
        state["samples"] = samples
        await self._core.store.update(job.id, result=state)
        log.info("training %s: %d sample jobs queued (set %s)", job.id, len(queued), set_id)
        return samples

    async def samples_status(self, training_id: Any) -> dict[str, Any]:
        """Where the samples are; the contact sheet is drawn once every job has ended."""
        job = await self._training(training_id)
        samples = (job.result or {}).get("samples")
        if not samples:
            raise not_found(f"samples of training {job.id} (start them: lora samples {job.id})")
        return await self._samples_answer(job.id, samples)

    async def _samples_progress(self, samples: dict[str, Any]) -> dict[str, Any]:
        jobs: dict[str, Job | None] = {}
        for row in samples["rows"]:
            for job_id in row["jobs"]:
                jobs[job_id] = await self._core.store.get(job_id)
        ended = [j for j in jobs.values() if j is not None and j.status in FINISHED_STATES]
        failed = [j for j in ended if j.status != JobStatus.SUCCEEDED]
        active = len(jobs) - len(ended)
        return {"jobs": jobs, "done": len(ended), "total": len(jobs), "active": active, "failed": failed}

    async def _samples_answer(self, training_id: str, samples: dict[str, Any]) -> dict[str, Any]:
        progress = await self._samples_progress(samples)
        if not progress["active"] and not samples.get("sheet"):
            async with self._lock:
                samples = await self._draw_sheet(training_id, progress["jobs"])
        return {
            "training": training_id,
            "set": samples["set"],
            "state": "drawing" if progress["active"] else "done",
            "done": progress["done"],
            "total": progress["total"],
            "failed": [{"job": j.id, "error": (j.error or {}).get("message")} for j in progress["failed"]],
            "prompts": samples["prompts"],
            "seeds": samples["seeds"],
            "rows": [
                {"label": r["label"], "step": r["step"], "loraId": r["loraId"], "jobs": r["jobs"]}
                for r in samples["rows"]
            ],
            "sheet": samples.get("sheet"),
        }

    async def _draw_sheet(self, training_id: str, jobs: dict[str, Job | None]) -> dict[str, Any]:
        job = await self._core.store.get(training_id)
        assert job is not None
        samples = dict((job.result or {})["samples"])
        if samples.get("sheet"):
            return samples  # drawn meanwhile by another caller
        cells: list[list[Path | None]] = []
        for row in samples["rows"]:
            line: list[Path | None] = []
            for job_id in row["jobs"]:
                sample = jobs.get(job_id)
                if sample is not None and sample.status == JobStatus.SUCCEEDED:
                    outputs = GenerationState.model_validate(sample.result).outputs
                    line.append(Path(outputs[0]) if outputs else None)
                else:
                    line.append(None)
            cells.append(line)
        out = training_dir(self._cfg, training_id) / SAMPLES_SUBDIR / f"sheet-{samples['set']}.png"
        columns = [
            f"seed {seed}: {prompt}"
            for prompt, seed in zip(samples["prompts"], samples["seeds"], strict=True)
        ]
        title = f"{job.request.get('outputName')} ({training_id}): rows = checkpoints, columns = prompts"
        rows = [r["label"] for r in samples["rows"]]
        await asyncio.to_thread(sample_sheet.compose, title, rows, columns, cells, out)
        state = dict(job.result or {})
        samples = {**samples, "sheet": str(out)}
        state["samples"] = samples
        await self._core.store.update(training_id, result=state)
        log.info("training %s: contact sheet %s", training_id, out)
        return samples

    async def promote(self, training_id: Any, body: Any = None) -> dict[str, Any]:
        """Copy one checkpoint into ComfyUI's loras folder under the LoRA's name (LORA-03)."""
        job = await self._training(training_id)
        req = parse(PromoteRequest, body or {})
        spec = spec_of(job)
        checkpoints = await asyncio.to_thread(scan_checkpoints, spec)
        chosen = _pick(checkpoints, req.step, spec.steps)
        if not chosen["complete"]:
            raise PlasmaError(
                ErrorCode.CONFLICT, f"{chosen['file']} is incomplete (cut off while being saved)"
            )
        name = req.name or spec.output_name
        if name.lower().endswith(".safetensors"):
            name = name[: -len(".safetensors")]
        check_output_name(name, "name")
        target = self._cfg.require_comfyui_dir() / "models" / "loras" / f"{name}.safetensors"
        source = Path(chosen["path"])
        copied = await asyncio.to_thread(copy_new, source, target)
        if not copied and not await asyncio.to_thread(same_file_content, source, target):
            raise PlasmaError(
                ErrorCode.CONFLICT,
                f"{target.name} is already in ComfyUI's loras folder and is another file; it is not "
                'replaced: choose another name (--as NAME / "name")',
                field="name",
                details={"path": str(target)},
            )
        listed: bool | None = None
        warning = None
        try:
            self._core.comfy.forget_object_info()  # ComfyUI's list is re-read, not our cached copy
            listed = target.name in await self._core.comfy.input_choices("LoraLoader", "lora_name")
            if not listed:
                warning = f"ComfyUI does not list {target.name} yet; check its loras folder settings"
        except PlasmaError as exc:
            warning = f"could not ask ComfyUI whether it lists {target.name}: {exc.message}"
        record = {
            "step": chosen["step"],
            "file": chosen["file"],
            "loraId": target.name,
            "path": str(target),
            "copied": copied,
            "at": now(),
        }
        async with self._lock:
            fresh = await self._training(job.id)
            if fresh.status == JobStatus.RUNNING and fresh.result is not None:
                fresh.result.setdefault("promoted", []).append(record)  # the live state: persisted with it
            else:
                state = dict(fresh.result or {})
                state["promoted"] = [*state.get("promoted", []), record]
                await self._core.store.update(job.id, result=state)
        log.info("training %s: %s promoted to %s", job.id, chosen["file"], target)
        return {
            "training": job.id,
            **record,
            "alreadyThere": not copied,
            "listed": listed,
            "warning": warning,
        }


def _pick(checkpoints: list[dict[str, Any]], step: int | None, total: int) -> dict[str, Any]:
    final = next((c for c in checkpoints if c["step"] is None), None)
    if step is None:
        if final is None:
            raise invalid(
                "step", "this training has no final LoRA: give the step of a checkpoint", _steps(checkpoints)
            )
        return final
    found = next((c for c in checkpoints if c["step"] == step), None)
    if found is None and step == total and final is not None:
        return final
    if found is None:
        raise invalid("step", f"no checkpoint at step {step}", _steps(checkpoints))
    return found


def _steps(checkpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {"checkpoints": [c["step"] if c["step"] is not None else "final" for c in checkpoints]}


def _copy_for_comfyui(source: Path, target: Path) -> None:
    """A checkpoint into plasmad's own sample folder of ComfyUI's loras (blocking)."""
    if not copy_new(source, target) and not same_file_content(source, target):
        raise PlasmaError(ErrorCode.CONFLICT, f"{target} exists with other content; not replaced")


def _samples_summary(samples: dict[str, Any] | None) -> dict[str, Any] | None:
    if not samples:
        return None
    return {
        "set": samples.get("set"),
        "sheet": samples.get("sheet"),
        "rows": [r.get("label") for r in samples.get("rows", [])],
        "jobs": sum(len(r.get("jobs", [])) for r in samples.get("rows", [])),
    }
