"""Generation's operations: queue an image (a page, or any prompt), approve a page.

`queue` is the one way a generation becomes a job: validated (`generation.validation`), its
template filled, its ControlNet images staged in ComfyUI's input/, stored as queued. Other
features reach it through `Core.submit_generation`, which this feature provides.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path
from typing import Any

from plasmad.context import Core
from plasmad.core.errors import not_found
from plasmad.core.jobs import Destination, GenerationState
from plasmad.core.states import JobKind, JobStatus
from plasmad.core.store import Job
from plasmad.core.wire import ApproveParams, GenerateRequest, LogEntry, PageRequest, checked, parse
from plasmad.generation import controlnet, fingerprints, pipeline_files
from plasmad.generation.validation import GenerationPlan, validate_generate

log = logging.getLogger(__name__)


def new_job_id(kind: JobKind) -> str:
    return f"{'j' if kind == JobKind.GENERATE else 't'}_{secrets.token_hex(6)}"


class GenerationOps:
    def __init__(self, core: Core) -> None:
        self._core = core
        core.provide_generations(self.queue)

    async def submit(self, body: Any) -> Job:
        """POST /jobs: validate a generation request and queue it."""
        self._core.check_accepting()
        return await self.queue(parse(GenerateRequest, body), None)

    async def submit_page(self, body: Any) -> Job:
        """`plasmactl generate -c 1 --page 1`: the page's prompt file, plus any overrides, as a job."""
        self._core.check_accepting()
        page = parse(PageRequest, body)
        pipeline = self._core.cfg.require_pipeline_dir()
        path = pipeline_files.prompt_file(pipeline, page.chapter, page.page)
        if not await asyncio.to_thread(path.is_file):
            raise not_found(f"prompt file {path} (see README: page prompt files)")
        text = await asyncio.to_thread(pipeline_files.read_page_prompt, path)
        request = {
            "prompt": text.prompt,
            "negativePrompt": text.negative_prompt,
            "promptFile": str(path.relative_to(pipeline)),
            **body,  # the overrides, as sent (PageRequest has checked them)
        }
        return await self.submit(request)

    async def queue(self, req: GenerateRequest, destination: Destination | None) -> Job:
        """Validate `req` and store it as a queued job (`Core.submit_generation`)."""
        return await self._store(
            req, await validate_generate(req, self._core.cfg, self._core.monitor), destination
        )

    async def _store(
        self, req: GenerateRequest, plan: GenerationPlan, destination: Destination | None
    ) -> Job:
        core = self._core
        template = core.templates.get(plan.template)
        job_id = new_job_id(JobKind.GENERATE)
        slots = dict(plan.slots)
        if "filename_prefix" in template.slots:
            # Each job saves under its own prefix in ComfyUI's output/: no two jobs share a file.
            slots["filename_prefix"] = f"plasma/{job_id}"
        graph = template.fill(slots)
        fields: dict[str, Any] = {
            "width": req.resolution.width if "width" in plan.slots else None,
            "height": req.resolution.height if "height" in plan.slots else None,
        }
        if plan.controlnet is not None:
            # CTRL-01: the images go into ComfyUI's input/ now, so the stored graph is the one sent.
            await asyncio.to_thread(controlnet.stage_images, plan.controlnet, core.cfg.require_comfyui_dir())
            fields.update(controlnet.job_state(plan.controlnet, template, graph))
        # Fingerprints (issue 12): the files the graph names, hashed from now on in the background;
        # the worker awaits the hashes only when it publishes the image.
        fields["files"] = await asyncio.to_thread(fingerprints.files_of, template, graph, core.cfg)
        core.hasher.prefetch(Path(f.path) for f in fields["files"])
        dtype = plan.unet_dtype
        state = GenerationState(
            template=plan.template,
            graph=graph,
            destination=destination,
            unet_dtype=dtype.value,
            unet_dtype_why=dtype.why,
            unet_dtype_pending=not dtype.known,
            **fields,
        )
        job = Job(
            id=job_id,
            kind=JobKind.GENERATE,
            status=JobStatus.QUEUED,
            request=plan.request,
            result=state.dump(),
        )
        await core.queue.add(job)
        # `job_id`: this line opens the job's own log too (plasmad.core.job_logs).
        log.info(
            "job %s queued (%s, seed %d, UNet %s: %s)",
            job.id, plan.template, plan.seed, dtype.value, dtype.why, extra={"job_id": job.id},
        )  # fmt: skip
        return job

    async def approve(self, body: Any) -> dict[str, Any]:
        params = parse(ApproveParams, body)
        pipeline = self._core.cfg.require_pipeline_dir()
        entry = await asyncio.to_thread(pipeline_files.approve, pipeline, params.image, params.approved)
        return dict(checked(LogEntry, entry))
