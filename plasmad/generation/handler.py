"""Running one generation job: fill the template, run it in ComfyUI, write the files.

Where files go: with chapter + page, the pipeline's files (`pipeline_files`); with a `destination`
in the job's result, that file (`dataset_service`: reg images); otherwise the state dir's
`images/<job id>.png` with the workflow beside it. The job records the ComfyUI prompt_id
before the graph is posted and the reserved page name before anything is written, so a restart
finds a job's prompt in ComfyUI again and never writes a page twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from plasmad.comfy.client import ComfyClient, ImageRef
from plasmad.core.config import Config
from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.core.fsutil import create_new, same_content
from plasmad.core.job_queue import RunContext
from plasmad.core.states import JobStatus
from plasmad.core.store import Job, JobStore, now
from plasmad.dataset.ops import write_destination
from plasmad.generation import pipeline_files
from plasmad.generation.timing import StepTimer

log = logging.getLogger(__name__)


class GenerationHandler:
    def __init__(self, cfg: Config, store: JobStore, comfy: ComfyClient) -> None:
        self._cfg = cfg
        self._store = store
        self._comfy = comfy

    async def run(self, ctx: RunContext) -> dict[str, object]:
        job = ctx.job
        state: dict[str, Any] = dict(job.result or {})
        graph: dict[str, Any] = state["graph"]
        images: list[ImageRef] | None = None
        if job.prompt_id:
            images = await self._find_again(job.prompt_id, ctx)
        if images is None:
            if ctx.cancelled.is_set():
                raise PlasmaError(ErrorCode.CONFLICT, "cancelled before it reached ComfyUI")
            prompt_id = str(uuid.uuid4())
            # Stored before POST /prompt: after a crash this id finds the prompt in ComfyUI again.
            await self._store.update(job.id, prompt_id=prompt_id)
            ctx.job.prompt_id = prompt_id
            timer = StepTimer(ctx.report)  # the benchmark (INFRA-04) reads state["timing"]
            log.info("job %s: sending prompt %s to ComfyUI", job.id, prompt_id)
            images = await self._comfy.run(graph, prompt_id, timer.report, self._cfg.job_timeout_s,
                                           cancelled=ctx.cancelled)
            timer.stop()
            state["timing"] = timer.summary()
            log.info("job %s: ComfyUI ran prompt %s: %s", job.id, prompt_id, timer.describe())
        png = await self._comfy.view(images[0])
        outputs = await self._save(job, state, graph, png)
        log.info("job %s: wrote %s", job.id, ", ".join(outputs))
        state.update(outputs=outputs, comfyImage=images[0].filename)
        return state

    async def _find_again(self, prompt_id: str, ctx: RunContext) -> list[ImageRef] | None:
        """After a restart: the prompt's images if ComfyUI has them (or will), None to run it anew."""
        try:
            if await self._comfy.history(prompt_id) is not None or await self._comfy.in_queue(prompt_id):
                log.info("job %s: found prompt %s in ComfyUI again", ctx.job.id, prompt_id)
                return await self._comfy.wait(prompt_id, ctx.report, self._cfg.job_timeout_s)
        except PlasmaError as exc:
            if exc.code != ErrorCode.COMFYUI_REJECTED:
                raise
            log.info("job %s: the earlier attempt failed in ComfyUI (%s); running it again", ctx.job.id, exc)
        return None

    async def _save(self, job: Job, state: dict[str, Any], graph: dict[str, Any], png: bytes) -> list[str]:
        req = job.request
        sent = graph  # exactly what ComfyUI got
        if "destination" in state:
            # A file named when the job was queued (a reg image): created there, never replaced.
            return [str(await asyncio.to_thread(write_destination, state["destination"], png))]
        if req.get("chapter") is None:
            folder = self._cfg.state_dir / "images"
            image, workflow = folder / f"{job.id}.png", folder / f"{job.id}.workflow.json"

            def write() -> None:
                for path, data in ((image, png), (workflow, json.dumps(sent, indent=2).encode())):
                    if not (create_new(path, data) or same_content(path, data)):
                        raise PlasmaError(ErrorCode.CONFLICT, f"{path} exists with other content")

            await asyncio.to_thread(write)
            return [str(image)]
        pipeline = self._cfg.require_pipeline_dir()
        chapter, page = int(req["chapter"]), int(req["page"])
        reserved: str = state.get("reserved") or ""
        if not reserved:
            reserved = await asyncio.to_thread(pipeline_files.next_free_stem, pipeline, chapter, page)
            state["reserved"] = reserved
            await self._store.update(job.id, result=state)  # a retry reuses this name, never a second one
        entry = {
            "promptFile": req.get("promptFile"),
            "promptHash": pipeline_files.prompt_hash(req["prompt"], req.get("negativePrompt", "")),
            "model": req["checkpoint"],
            "timestamp": now(),
            "approved": False,
            "generationBackend": "comfyui",
            "seed": req["seed"],
            "sampler": req["sampler"],
            "scheduler": req["scheduler"],
            "steps": req["steps"],
            "cfg": req["cfg"],
            "loraId": req.get("loraId"),
            "loraStrength": req.get("loraStrength") if req.get("loraId") else None,
            "controlnetStrength": state.get("controlnetStrength"),
            "workflowTemplate": f"{state['template']}.json",
            "width": state.get("width"),
            "height": state.get("height"),
            **state.get("logExtra", {}),
        }
        saved = await asyncio.to_thread(
            pipeline_files.save_page, pipeline, chapter, page, reserved, png, sent, entry, job.id
        )
        return [str(saved.image)]

    async def stop(self, ctx: RunContext) -> None:
        if ctx.parked:
            return  # leave the prompt running in ComfyUI: the next start finds it by its prompt_id
        if ctx.job.prompt_id:
            try:
                await self._comfy.interrupt(ctx.job.prompt_id)
            except PlasmaError as exc:
                log.warning("could not interrupt prompt %s: %s", ctx.job.prompt_id, exc)

    async def recover(self, job: Job) -> JobStatus:
        return JobStatus.QUEUED  # run() looks for its prompt_id in ComfyUI before posting again
