"""Running one generation job (the worker side): run its graph in ComfyUI, write the files.

Where files go: with chapter + page, the pipeline's files (`pipeline_files`); with a `destination`
in the job's state, that file (a reg image); otherwise the state dir's `images/<job id>.png`
with the workflow beside it. The job records the ComfyUI prompt_id before the graph is posted
and the reserved page name before anything is written, so a restart finds a job's prompt in
ComfyUI again and never writes a page twice.

Before the prompt is sent, the folders are checked to take a file (and a page's generation log to
read), so a storage fault costs no render; after it, an image that is all one colour (NaN) fails
the job and is kept in <state>/rejected/ instead of being published. A disk that fills meanwhile
is a STORAGE error naming the folder, with nothing half-written: `retry` runs the job again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from typing import Any

from plasmad.comfy.answers import ImageRef
from plasmad.context import Core
from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.core.fsutil import check_writable, create_new, replace_atomic, same_content, storage_errors
from plasmad.core.images import check_generated
from plasmad.core.job_queue import RunContext
from plasmad.core.jobs import Destination, GenerationState
from plasmad.core.states import JobStatus
from plasmad.core.store import Job, now
from plasmad.core.wire import GenerateRequest
from plasmad.generation import fingerprints, fresh_run, pipeline_files
from plasmad.generation.attempts import Attempts
from plasmad.generation.lora_check import LoraCheck
from plasmad.generation.timing import StepTimer

log = logging.getLogger(__name__)


class GenerationHandler:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._loras = LoraCheck(core)

    async def run(self, ctx: RunContext) -> dict[str, object]:
        job = ctx.job
        state = GenerationState.model_validate(job.result)
        await self._check_storage(job, state)  # before ComfyUI spends minutes on it
        # ComfyUI going away (a crash, a restart, a hang) costs an attempt, not the job.
        png = await Attempts(self._core, ctx, state).run(lambda: self._attempt(ctx, state))
        await self._check_image(job, state, png)
        outputs = await self._save(job, state, png)
        log.info("job %s: wrote %s", job.id, ", ".join(outputs))
        state.outputs = outputs
        return state.dump()

    async def _attempt(self, ctx: RunContext, state: GenerationState) -> bytes:
        """One attempt: the prompt found again in ComfyUI, or sent (again); its image."""
        comfy = self._core.comfy
        images: list[ImageRef] | None = None
        if ctx.job.prompt_id:
            images = await self._find_again(ctx.job.prompt_id, ctx)
        if images is None:
            images = await self._send(ctx, state)
        png = await comfy.view(images[0])
        await self._loras.check(ctx.job, state)
        state.comfy_image = images[0].filename
        return png

    async def _send(self, ctx: RunContext, state: GenerationState) -> list[ImageRef]:
        job = ctx.job
        if ctx.cancelled.is_set():
            raise PlasmaError(ErrorCode.CONFLICT, "cancelled before it reached ComfyUI")
        self._settle_unet_dtype(job, state)
        prompt_id = str(uuid.uuid4())
        state.comfy_log_offset = await self._loras.mark()
        # Stored before POST /prompt: after a crash this id finds the prompt in ComfyUI again.
        await self._core.store.update(job.id, prompt_id=prompt_id, result=state.dump())
        ctx.job.prompt_id = prompt_id
        timer = StepTimer(ctx.report)  # the benchmark (INFRA-04) reads state.timing
        await fresh_run.before_render(self._core, state, job.id)  # a reproduction; a replaced model
        log.info("job %s: sending prompt %s to ComfyUI", job.id, prompt_id)
        images = await self._core.comfy.run(
            state.graph, prompt_id, timer.report, self._core.cfg.job_timeout_s, cancelled=ctx.cancelled
        )
        timer.stop()
        state.timing = timer.summary()
        if fresh_run.wanted(state):
            await fresh_run.check(self._core, prompt_id, state.timing)
        log.info("job %s: ComfyUI ran prompt %s: %s", job.id, prompt_id, timer.describe())
        return images

    def _settle_unet_dtype(self, job: Job, state: GenerationState) -> None:
        """PLASMA_UNET_DTYPE=auto queued before any ComfyUI was seen: decided now, from the device
        ComfyUI reports (it answers: the job waited for that)."""
        if not state.unet_dtype_pending:
            return
        dtype = self._core.monitor.unet_dtype(self._core.cfg.unet_dtype)
        template = self._core.templates.get(state.template)
        for node_id, input_name in template.slots.get("unet_dtype", []):
            state.graph[node_id]["inputs"][input_name] = dtype.value
        state.unet_dtype, state.unet_dtype_why = dtype.value, dtype.why
        state.unet_dtype_pending = not dtype.known
        log.info("job %s: UNet %s (%s)", job.id, dtype.value, dtype.why)

    async def _find_again(self, prompt_id: str, ctx: RunContext) -> list[ImageRef] | None:
        """An earlier attempt's prompt, if ComfyUI has it (or runs it): its images; None to send it
        anew (ComfyUI restarted since, or the prompt failed there)."""
        comfy = self._core.comfy
        try:
            if await comfy.history(prompt_id) is not None or await comfy.in_queue(prompt_id):
                log.info("job %s: found prompt %s in ComfyUI again", ctx.job.id, prompt_id)
                return await comfy.wait(prompt_id, ctx.report, self._core.cfg.job_timeout_s)
        except PlasmaError as exc:
            if exc.code != ErrorCode.COMFYUI_REJECTED:
                raise
            log.info("job %s: the earlier attempt failed in ComfyUI (%s); running it again", ctx.job.id, exc)
        return None

    # --- no silent wrong pages, no lost ones (issue 10) -----------------------------------------------

    def _folder(self, job: Job, state: GenerationState) -> Path:
        """Where the job's image goes: a destination's folder, the chapter's raw/, or state images/."""
        if state.destination is not None:
            return Path(state.destination.image).parent
        req = GenerateRequest.model_validate(job.request)
        if req.chapter is not None and req.page is not None:
            return pipeline_files.raw_dir(self._core.cfg.require_pipeline_dir(), req.chapter)
        return self._core.cfg.state_dir / "images"

    async def _check_storage(self, job: Job, state: GenerationState) -> None:
        """The job's files can be written (and a page's log read) before its prompt is sent."""
        then = retry_hint(job.id)
        if state.destination is None:
            req = GenerateRequest.model_validate(job.request)
            if req.chapter is not None:
                pipeline = self._core.cfg.require_pipeline_dir()
                await asyncio.to_thread(pipeline_files.check_page_storage, pipeline, req.chapter, then)
                return
        await asyncio.to_thread(check_writable, self._folder(job, state), then=then)

    async def _check_image(self, job: Job, state: GenerationState, png: bytes) -> None:
        """Fail the job on an image that is no picture (all one colour: NaN), keeping it aside in
        <state>/rejected/ for inspection instead of publishing it."""
        try:
            await asyncio.to_thread(check_generated, png, f"the image of job {job.id}")
        except PlasmaError as exc:
            if exc.code != ErrorCode.BAD_IMAGE:
                raise
            kept = self._core.cfg.state_dir / "rejected" / f"{job.id}.png"
            try:
                await asyncio.to_thread(keep_rejected, kept, png, state.graph)
            except OSError as err:
                log.warning("job %s: could not keep its rejected image at %s: %s", job.id, kept, err)
                raise exc from None
            log.warning("job %s: %s; kept at %s", job.id, exc.message, kept)
            raise PlasmaError(
                exc.code,
                f"{exc.message} (the image is kept for inspection at {kept}, not published)",
                details={**(exc.details or {}), "rejectedImage": str(kept)},
            ) from None

    async def _save(self, job: Job, state: GenerationState, png: bytes) -> list[str]:
        # Fingerprints (issue 12): the hashes started when the job was queued; in the log entry
        # (via `state`) and in the PNG, as a text chunk beside ComfyUI's graph.
        state.fingerprints = await fingerprints.fingerprint(self._core.hasher, state.files)
        png = fingerprints.add_to_png(png, state.fingerprints)
        then = retry_hint(job.id)
        if state.destination is not None:
            # A file named when the job was queued (a reg image, a reproduction): created there,
            # never replaced. Its job's request need not be a GenerateRequest (a reproduction's is not).
            with storage_errors(self._folder(job, state), then):
                return [str(await asyncio.to_thread(write_destination, state.destination, png))]
        req = GenerateRequest.model_validate(job.request)
        if req.chapter is None or req.page is None:
            image = self._folder(job, state) / f"{job.id}.png"
            with storage_errors(image.parent, then):
                await asyncio.to_thread(write_beside, image, png, state.graph)
            return [str(image)]
        pipeline = self._core.cfg.require_pipeline_dir()
        if not state.reserved:
            state.reserved = await asyncio.to_thread(
                pipeline_files.next_free_stem, pipeline, req.chapter, req.page
            )
            # A retry reuses this name, never a second one.
            await self._core.store.update(job.id, result=state.dump())
        saved = await asyncio.to_thread(
            pipeline_files.save_page,
            pipeline,
            req.chapter,
            req.page,
            state.reserved,
            png,
            state.graph,  # exactly what ComfyUI got
            log_entry(req, state),
            job.id,
            then,
        )
        return [str(saved.image)]

    async def stop(self, ctx: RunContext) -> None:
        if ctx.parked:
            return  # leave the prompt running in ComfyUI: the next start finds it by its prompt_id
        if ctx.job.prompt_id:
            await self._core.monitor.interrupt(ctx.job.prompt_id)  # or once ComfyUI is back

    async def recover(self, job: Job) -> JobStatus:
        return JobStatus.QUEUED  # run() looks for its prompt_id in ComfyUI before posting again


def log_entry(req: GenerateRequest, state: GenerationState) -> dict[str, Any]:
    """The page's generation-log entry (PIPE-04), less what `save_page` adds (file names, version)."""
    return {
        "promptFile": req.prompt_file,
        "promptHash": pipeline_files.prompt_hash(req.prompt, req.negative_prompt),
        "model": req.checkpoint,
        "timestamp": now(),
        "approved": False,
        "generationBackend": "comfyui",
        "seed": req.seed,
        "sampler": req.sampler,
        "scheduler": req.scheduler,
        "steps": req.steps,
        "cfg": req.cfg,
        "loraId": req.lora_id,
        "loraStrength": req.lora_strength if req.lora_id else None,
        "controlnetStrength": state.controlnet_strength,
        "workflowTemplate": f"{state.template}.json",
        "width": state.width,
        "height": state.height,
        "unetDtype": state.unet_dtype,
        **state.log_extra,
        "fingerprints": state.fingerprints,  # issue 12
    }


def retry_hint(job_id: str) -> str:
    """How to run a job again once a storage fault is fixed (the end of its error message)."""
    return f"retry it: plasmactl retry {job_id} (POST /jobs/{job_id}/retry)"


def keep_rejected(path: Path, png: bytes, graph: dict[str, Any]) -> None:
    """A rejected image and its graph, under the job's name in the state dir (ours: replaced
    whole if a retry is rejected again). Blocking."""
    replace_atomic(path, png)
    replace_atomic(path.with_name(f"{path.stem}.workflow.json"), json.dumps(graph, indent=2).encode())


def write_beside(image: Path, png: bytes, graph: dict[str, Any]) -> None:
    """An image without a page, and its workflow beside it (blocking)."""
    workflow = image.with_name(f"{image.stem}.workflow.json")
    created: list[Path] = []
    try:
        for path, data in ((image, png), (workflow, json.dumps(graph, indent=2).encode())):
            if create_new(path, data):
                created.append(path)
            elif not same_content(path, data):
                raise PlasmaError(ErrorCode.CONFLICT, f"{path} exists with other content")
    except BaseException:
        for path in created:  # both or neither
            path.unlink(missing_ok=True)
        raise


def write_destination(dest: Destination, png: bytes) -> Path:
    """Write a generated image where its job was queued for (blocking).

    The caption first, then the image, each created only where nothing is (fsutil.create_new): the
    image's presence is what marks the item done (its pixels were checked by `_check_image`). A
    file found there with the same bytes is a retry after a restart and is fine; anything else
    stays as it is and fails the job.
    """
    image = Path(dest.image)
    image.parent.mkdir(parents=True, exist_ok=True)
    if dest.caption is not None:
        caption = Path(dest.caption)
        text = ((dest.caption_text or "") + "\n").encode()
        if not create_new(caption, text) and not same_content(caption, text):
            raise PlasmaError(
                ErrorCode.CONFLICT, f"{caption} exists with another caption; remove it to regenerate"
            )
    if not create_new(image, png) and not same_content(image, png):
        raise PlasmaError(ErrorCode.CONFLICT, f"{image} appeared meanwhile with other content; left as it is")
    return image
