"""Choosing the checkpoint (LORA-02): the same prompts, with the same seeds, for every checkpoint of
a training, then one contact sheet.

The samples go through the normal generation path: each checkpoint is copied into ComfyUI's
`models/loras/plasma-samples/<id>/` (a folder plasmad owns, so the artist's files are never
touched), then one generation job per checkpoint and prompt is queued. Once every job has ended,
one labelled grid is drawn: rows = checkpoints, columns = prompts, every cell drawn with the same
seed per column, so a row-to-row difference is the checkpoint's doing.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from plasmad.comfy import model_paths
from plasmad.context import Core
from plasmad.core.errors import ErrorCode, PlasmaError, invalid, not_found
from plasmad.core.fsutil import copy_new, replace_atomic, same_file_content
from plasmad.core.jobs import Destination, GenerationState
from plasmad.core.states import FINISHED_STATES, JobStatus
from plasmad.core.store import Job, now
from plasmad.core.wire import GenerateRequest, SamplesView, TrainRequest, TrainSamplesRequest, checked, parse
from plasmad.training.backend import TrainSpec
from plasmad.training.checkpoints import Checkpoint, list_checkpoints
from plasmad.training.state import (
    SAMPLES_SUBDIR,
    SampleRow,
    SampleSet,
    TrainingState,
    find_training,
    spec_of,
    training_dir,
)

log = logging.getLogger(__name__)

SAMPLES_LORA_FOLDER = "plasma-samples"  #: under ComfyUI's models/loras: plasmad's own copies
# Three pictures that tell a character LoRA apart (face, figure, pose); the trigger word leads.
DEFAULT_SAMPLE_PROMPTS = (
    "{trigger}, close-up, looking at viewer, white background",
    "{trigger}, full body, standing, white background",
    "{trigger}, upper body, arms crossed, rooftop at night",
)


@dataclass
class _Progress:
    """Where a sample set's jobs are."""

    jobs: dict[str, Job | None]
    done: int
    total: int
    active: int
    failed: list[Job]


class SampleOps:
    """`samples` and `samples_status` of TrainingOps."""

    def __init__(self, core: Core, lock: asyncio.Lock) -> None:
        self._core = core
        self._cfg = core.cfg
        self._lock = lock  #: TrainingOps' lock: one change to a training's state at a time

    async def start(self, training_id: Any, body: Any = None) -> dict[str, Any]:
        """Queue the same prompts with the same seeds for every checkpoint (and the base, if asked)."""
        self._core.check_accepting()
        job = await find_training(self._core, training_id)
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
        found = await asyncio.to_thread(list_checkpoints, spec.output_dir, spec.output_name)
        checkpoints = [c for c in found if c.complete]
        if not checkpoints:
            raise PlasmaError(ErrorCode.CONFLICT, f"training {job.id} kept no checkpoint to sample")
        set_id = _set_id(prompts, req, checkpoints)
        async with self._lock:
            job = await find_training(self._core, job.id)
            state = TrainingState.of(job)
            existing = state.samples
            progress = await self._progress(existing) if existing is not None else None
            if progress is not None and progress.active:
                raise PlasmaError(
                    ErrorCode.CONFLICT,
                    f"samples of {job.id} are being drawn ({progress.done} of {progress.total})",
                )
            if existing is None or progress is None or existing.set_id != set_id or progress.failed:
                samples = await self._queue(job, state, spec, req, prompts, checkpoints, set_id)
            else:
                samples = existing  # the same set asked again: its images (and sheet) are reused
        return await self._answer(job.id, samples)

    async def _queue(
        self,
        job: Job,
        state: TrainingState,
        spec: TrainSpec,
        req: TrainSamplesRequest,
        prompts: list[str],
        checkpoints: list[Checkpoint],
        set_id: str,
    ) -> SampleSet:
        """One generation job per checkpoint and prompt, through the normal queue (caller holds the lock)."""
        # ComfyUI's own models/ (under --base-directory when a managed ComfyUI has one), where it
        # and the generation's check find the copies by their names.
        folders = await asyncio.to_thread(model_paths.model_folders, self._cfg)
        lora_dir = folders.models_dir / "loras" / SAMPLES_LORA_FOLDER / job.id
        rows: list[SampleRow] = []
        if req.include_base:
            rows.append(SampleRow(label="base (no LoRA)", step=None, lora_id=None))
        for c in checkpoints:
            await asyncio.to_thread(_copy_for_comfyui, c.path, lora_dir / c.file)
            label = f"step {c.step}" if c.step is not None else f"final (step {spec.steps})"
            lora_id = f"{SAMPLES_LORA_FOLDER}/{job.id}/{c.file}"
            rows.append(SampleRow(label=label, step=c.step, lora_id=lora_id))
        requests: list[tuple[GenerateRequest, Destination | None]] = [
            (_sample_request(req, row, prompt, seed_offset=j), None)
            for row in rows
            for j, prompt in enumerate(prompts)
        ]
        # All or nothing: no half set left in the queue.
        queued = [sample.id for sample in await self._core.submit_generations(requests)]
        for i, row in enumerate(rows):
            row.jobs = queued[i * len(prompts) : (i + 1) * len(prompts)]
        samples = SampleSet(
            set=set_id,
            prompts=prompts,
            seeds=[req.seed + j for j in range(len(prompts))],
            request=req.model_dump(mode="json", by_alias=True, exclude={"prompts"}),
            rows=rows,
            sheet=None,
            created_at=now(),
        )
        state.samples = samples
        await self._core.store.update(job.id, result=state.dump())
        log.info("training %s: %d sample jobs queued (set %s)", job.id, len(queued), set_id)
        return samples

    async def status(self, training_id: Any) -> dict[str, Any]:
        """Where the samples are; the contact sheet is drawn once every job has ended."""
        job = await find_training(self._core, training_id)
        samples = TrainingState.of(job).samples
        if samples is None:
            raise not_found(f"samples of training {job.id} (start them: lora samples {job.id})")
        return await self._answer(job.id, samples)

    async def _progress(self, samples: SampleSet) -> _Progress:
        jobs: dict[str, Job | None] = {}
        for row in samples.rows:
            for job_id in row.jobs:
                jobs[job_id] = await self._core.store.get(job_id)
        ended = [j for j in jobs.values() if j is not None and j.status in FINISHED_STATES]
        failed = [j for j in ended if j.status != JobStatus.SUCCEEDED]
        active = len(jobs) - len(ended)
        return _Progress(jobs=jobs, done=len(ended), total=len(jobs), active=active, failed=failed)

    async def _answer(self, training_id: str, samples: SampleSet) -> dict[str, Any]:
        progress = await self._progress(samples)
        if not progress.active and not samples.sheet:
            async with self._lock:
                samples = await self._draw_sheet(training_id, progress.jobs)
        answer = {
            "training": training_id,
            "set": samples.set_id,
            "state": "drawing" if progress.active else "done",
            "done": progress.done,
            "total": progress.total,
            "failed": [{"job": j.id, "error": (j.error or {}).get("message")} for j in progress.failed],
            "prompts": samples.prompts,
            "seeds": samples.seeds,
            "rows": [row.dump() for row in samples.rows],
            "sheet": samples.sheet,
        }
        return dict(checked(SamplesView, answer))

    async def _draw_sheet(self, training_id: str, jobs: dict[str, Job | None]) -> SampleSet:
        job = await self._core.store.get(training_id)
        assert job is not None
        state = TrainingState.of(job)
        samples = state.samples
        assert samples is not None
        if samples.sheet:
            return samples  # drawn meanwhile by another caller
        cells = [[_sample_image(jobs.get(job_id)) for job_id in row.jobs] for row in samples.rows]
        out = training_dir(self._cfg, training_id) / SAMPLES_SUBDIR / f"sheet-{samples.set_id}.png"
        columns = [
            f"seed {seed}: {prompt}" for prompt, seed in zip(samples.prompts, samples.seeds, strict=True)
        ]
        name = TrainRequest.model_validate(job.request).output_name
        title = f"{name} ({training_id}): rows = checkpoints, columns = prompts"
        rows = [r.label for r in samples.rows]
        await asyncio.to_thread(compose, title, rows, columns, cells, out)
        samples.sheet = str(out)
        await self._core.store.update(training_id, result=state.dump())
        log.info("training %s: contact sheet %s", training_id, out)
        return samples


def _set_id(prompts: list[str], req: TrainSamplesRequest, checkpoints: list[Checkpoint]) -> str:
    """The same prompts, settings and checkpoints make the same set (whose images are reused)."""
    key = json.dumps(
        [prompts, req.model_dump(mode="json", exclude={"prompts"}), [c.file for c in checkpoints]],
        sort_keys=True,
    )
    return hashlib.sha256(key.encode()).hexdigest()[:10]


def _sample_request(
    req: TrainSamplesRequest, row: SampleRow, prompt: str, seed_offset: int
) -> GenerateRequest:
    request: dict[str, Any] = {
        "prompt": prompt,
        "negativePrompt": req.negative_prompt,
        "seed": req.seed + seed_offset,
        "steps": req.steps,
        "resolution": req.resolution.model_dump(),
    }
    if row.lora_id:
        request.update(loraId=row.lora_id, loraStrength=req.lora_strength)
    return parse(GenerateRequest, request)


def _sample_image(sample: Job | None) -> Path | None:
    """A sample job's image; None if it failed (its cell is drawn grey)."""
    if sample is None or sample.status != JobStatus.SUCCEEDED:
        return None
    outputs = GenerationState.model_validate(sample.result).outputs
    return Path(outputs[0]) if outputs else None


def _copy_for_comfyui(source: Path, target: Path) -> None:
    """A checkpoint into plasmad's own sample folder of ComfyUI's loras (blocking)."""
    if not copy_new(source, target) and not same_file_content(source, target):
        raise PlasmaError(ErrorCode.CONFLICT, f"{target} exists with other content; not replaced")


# --------------------------------------------------------------------------------------------------
# The contact sheet (Pillow; blocking: call it through asyncio.to_thread)

CELL = 256  #: the longer side of a cell, px
LABEL_WIDTH = 150
PAD = 8
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MISSING = (225, 225, 225)

_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def _wrap(text: str, font: _Font, width: int, max_lines: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], lines[max_lines - 1] + " ..."]
    return lines


def compose(
    title: str,
    rows: list[str],
    columns: list[str],
    cells: list[list[Path | None]],
    out: Path,
    *,
    cell: int = CELL,
) -> Path:
    """Draw the grid and write it to `out` atomically (a reader never sees half a sheet). A cell
    whose image is None (its job failed) is drawn grey with a word saying so."""
    font: _Font = ImageFont.load_default()
    line_height = int(font.getbbox("Ag")[3]) + 3
    column_lines = [_wrap(text, font, cell - 2 * PAD, 4) for text in columns]
    header = (
        PAD + line_height + PAD + max((len(lines) for lines in column_lines), default=1) * line_height + PAD
    )
    width = LABEL_WIDTH + len(columns) * (cell + PAD) + PAD
    height = header + len(rows) * (cell + PAD) + PAD
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, PAD), title, fill=INK, font=font)
    for c, lines in enumerate(column_lines):
        x = LABEL_WIDTH + c * (cell + PAD)
        for n, line in enumerate(lines):
            draw.text((x, PAD + line_height + PAD + n * line_height), line, fill=INK, font=font)
    for r, label in enumerate(rows):
        y = header + r * (cell + PAD)
        for n, line in enumerate(_wrap(label, font, LABEL_WIDTH - 2 * PAD, 6)):
            draw.text((PAD, y + n * line_height), line, fill=INK, font=font)
        for c in range(len(columns)):
            x = LABEL_WIDTH + c * (cell + PAD)
            path = cells[r][c] if c < len(cells[r]) else None
            picture = _load(path, cell)
            if picture is None:
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=MISSING)
                draw.text(
                    (x + PAD, y + cell // 2), "failed" if path is None else "unreadable", fill=INK, font=font
                )
            else:
                sheet.paste(picture, (x + (cell - picture.width) // 2, y + (cell - picture.height) // 2))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    replace_atomic(out, buffer.getvalue())
    return out


def _load(path: Path | None, cell: int) -> Image.Image | None:
    if path is None:
        return None
    try:
        with Image.open(path) as im:
            im.load()
            # Up or down to the cell: a 64 px test image becomes visible, a 512x768 one fits.
            return ImageOps.contain(im.convert("RGB"), (cell, cell), Image.Resampling.LANCZOS)
    except (OSError, SyntaxError, ValueError):
        return None
