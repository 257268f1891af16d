"""The operations of plasmad, implemented once. `http_api` and `rpc` are thin adapters over this
class, so the HTTP API and the socket API take the same inputs and give the same answers and
errors.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from plasmad.comfy.client import ComfyClient
from plasmad.comfy.process import ManagedComfyUI
from plasmad.comfy.templates import TemplateSet
from plasmad.core.config import Config
from plasmad.core.errors import ErrorCode, PlasmaError, not_found
from plasmad.core.gpu_lock import GpuLock
from plasmad.core.job_logs import read_logs
from plasmad.core.job_queue import JobQueue
from plasmad.core.states import FINISHED_STATES, JobKind, JobStatus
from plasmad.core.store import Job, JobStore
from plasmad.core.wire import ApproveParams, GenerateRequest, JobView, ListJobsParams, Progress, dump, parse
from plasmad.dataset.ops import DatasetService
from plasmad.generation import controlnet, pipeline_files
from plasmad.generation.validation import GenerationPlan, validate_generate
from plasmad.operations.bench import Bench
from plasmad.operations.doctor import run_doctor
from plasmad.training.service import TrainingService

log = logging.getLogger(__name__)

# Internal bookkeeping kept in job.result that the wire view leaves out (the graph is big; it is
# written beside the image and served by `job_workflow`).
_PRIVATE_RESULT_KEYS = ("graph", "logExtra")
MAX_WAIT_S = 60.0  #: longest long poll (GET /jobs/:id?wait=): below common HTTP client timeouts


def new_job_id(kind: JobKind) -> str:
    return f"{'j' if kind == JobKind.GENERATE else 't'}_{secrets.token_hex(6)}"


class Service:
    def __init__(
        self,
        cfg: Config,
        store: JobStore,
        queue: JobQueue,
        gpu: GpuLock,
        comfy: ComfyClient,
        templates: TemplateSet,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.queue = queue
        self.gpu = gpu
        self.comfy = comfy
        self.templates = templates
        self.accepting = True
        self.comfy_process: ManagedComfyUI | None = None
        self.datasets = DatasetService(self)
        self.training = TrainingService(self)
        self.benchmarks = Bench(self)  #: INFRA-04 (plasmad.operations.bench)

    def _check_accepting(self) -> None:
        if not self.accepting:
            raise PlasmaError(ErrorCode.SHUTTING_DOWN, "plasmad is shutting down and takes no new work")

    # --- jobs -------------------------------------------------------------------------------------

    async def submit(self, body: Any) -> dict[str, Any]:
        """Validate a generation request and queue it; the job is stored before this returns."""
        self._check_accepting()
        req = parse(GenerateRequest, body)
        plan = await validate_generate(req, self.cfg, self.comfy)
        return await self.view(await self.queue_generation(req, plan))

    async def queue_generation(
        self, req: GenerateRequest, plan: GenerationPlan, extra: dict[str, Any] | None = None
    ) -> Job:
        """Store a validated generation as a queued job. `extra` joins its result: a `destination`
        there sends the image to that file instead (plasmad.dataset.ops, reg images)."""
        template = self.templates.get(plan.template)
        job_id = new_job_id(JobKind.GENERATE)
        slots = dict(plan.slots)
        if "filename_prefix" in template.slots:
            # Each job saves under its own prefix in ComfyUI's output/: no two jobs share a file.
            slots["filename_prefix"] = f"plasma/{job_id}"
        state: dict[str, Any] = {
            "template": plan.template,
            "graph": template.fill(slots),
            "width": req.resolution.width if "width" in plan.slots else None,
            "height": req.resolution.height if "height" in plan.slots else None,
            **(extra or {}),
        }
        if plan.controlnet is not None:
            # CTRL-01: the images go into ComfyUI's input/ now, so the stored graph is the one sent.
            await asyncio.to_thread(controlnet.stage_images, plan.controlnet, self.cfg.require_comfyui_dir())
            state.update(controlnet.job_state(plan.controlnet, template, state["graph"]))
        job = Job(
            id=job_id, kind=JobKind.GENERATE, status=JobStatus.QUEUED, request=plan.request, result=state
        )
        await self.store.add(job)
        self.queue.notify()
        # `job_id`: this line opens the job's own log too (plasmad.core.job_logs).
        log.info("job %s queued (%s, seed %d)", job.id, plan.template, plan.seed, extra={"job_id": job.id})
        return job

    async def submit_page(self, body: Any) -> dict[str, Any]:
        """`plasmactl generate -c 1 --page 1`: the page's prompt file, plus any overrides, as a job."""
        if not isinstance(body, dict):
            raise PlasmaError(ErrorCode.INVALID_INPUT, "body: must be a JSON object", field="body")
        for name in ("chapter", "page"):
            if not isinstance(body.get(name), int) or isinstance(body.get(name), bool) or body[name] < 1:
                raise PlasmaError(
                    ErrorCode.INVALID_INPUT, f"{name}: a positive number is required", field=name
                )
        pipeline = self.cfg.require_pipeline_dir()
        path = pipeline_files.prompt_file(pipeline, body["chapter"], body["page"])
        if not await asyncio.to_thread(path.is_file):
            raise not_found(f"prompt file {path} (see README: page prompt files)")
        page = await asyncio.to_thread(pipeline_files.read_page_prompt, path)
        request = {
            "prompt": page.prompt,
            "negativePrompt": page.negative_prompt,
            "promptFile": str(path.relative_to(pipeline)),
            **body,
        }
        return await self.submit(request)

    async def get_job(self, job_id: Any, wait: Any = None) -> dict[str, Any]:
        """A job; with `wait` (seconds, at most MAX_WAIT_S) once it has ended or the time is up."""
        job = await self._job(job_id)
        if wait is None:
            return await self.view(job)
        try:
            seconds = float(wait)
        except (TypeError, ValueError):
            raise PlasmaError(
                ErrorCode.INVALID_INPUT, "wait: must be a number of seconds", field="wait"
            ) from None
        if not 0 <= seconds <= MAX_WAIT_S:
            raise PlasmaError(
                ErrorCode.INVALID_INPUT, f"wait: must lie in 0-{MAX_WAIT_S:.0f} s", field="wait"
            )
        deadline = asyncio.get_running_loop().time() + seconds
        while job.status not in FINISHED_STATES:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await self.queue.job_ended(left)
            job = await self._job(job_id)
        return await self.view(job)

    async def _job(self, job_id: Any) -> Job:
        if not isinstance(job_id, str) or not job_id:
            raise PlasmaError(ErrorCode.INVALID_INPUT, "id: must be a job id", field="id")
        job = await self.store.get(job_id)
        if job is None:
            raise not_found(f"job {job_id}")
        return job

    async def list_jobs(self, body: Any) -> list[dict[str, Any]]:
        params = parse(ListJobsParams, body or {})
        jobs = await self.store.recent(status=params.status, kind=params.kind, limit=params.limit)
        return [await self.view(j) for j in jobs]

    async def cancel_job(self, job_id: Any) -> dict[str, Any]:
        job = await self._job(job_id)
        return await self.view(await self.queue.cancel(job))

    async def job_workflow(self, job_id: Any) -> dict[str, Any]:
        job = await self._job(job_id)
        return dict((job.result or {}).get("graph", {}))

    async def view(self, job: Job) -> dict[str, Any]:
        result = {k: v for k, v in (job.result or {}).items() if k not in _PRIVATE_RESULT_KEYS}
        live = self.queue.live_progress(job.id)
        step, total = live if live else (job.step or 0, job.total)
        progress = Progress(step=step, total=total) if total else None
        waiting_for = None
        if job.status == JobStatus.QUEUED:
            waiting_for = await self._waiting_for(job)
        return dump(
            JobView(
                id=job.id,
                kind=job.kind,
                status=job.status,
                progress=progress,
                created_at=job.created_at,
                started_at=job.started_at,
                finished_at=job.finished_at,
                waiting_for=waiting_for,
                error=job.error,
                outputs=list(result.get("outputs", [])),
                seed=job.request.get("seed"),
                request=job.request,
                result=result or None,
            )
        )

    async def _waiting_for(self, job: Job) -> str:
        ahead = sum(
            1 for j in await self.store.recent(status=JobStatus.QUEUED, limit=1000) if j.seq < job.seq
        )
        holder = self.gpu.holder
        parts = [f"the GPU, held by {holder}" if holder else "the worker"]
        if ahead:
            parts.append(f"{ahead} job{'s' if ahead > 1 else ''} ahead")
        return "; ".join(parts)

    # --- pipeline files ---------------------------------------------------------------------------

    async def approve(self, body: Any) -> dict[str, Any]:
        params = parse(ApproveParams, body)
        pipeline = self.cfg.require_pipeline_dir()
        return await asyncio.to_thread(pipeline_files.approve, pipeline, params.image, params.approved)

    # --- health -----------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        comfy: dict[str, Any] = {"url": self.comfy.base_url}
        ok, mps = False, False
        try:
            stats = await self.comfy.system_stats()
            ok = True
            system = stats.get("system", {})
            devices = stats.get("devices", [])
            argv = [str(a) for a in system.get("argv", [])]
            mps = any(d.get("type") == "mps" for d in devices)
            comfy.update(
                version=system.get("comfyui_version"),
                pytorch=system.get("pytorch_version"),
                devices=[{"name": d.get("name"), "type": d.get("type")} for d in devices],
                argv=argv,
                fp32Vae="--fp32-vae" in argv,  # GEN-05: the VAE's precision is a launch flag
                forceFp16="--force-fp16" in argv,
            )
        except PlasmaError as exc:
            comfy["error"] = exc.message
        warnings = []
        if ok and not comfy.get("fp32Vae"):
            warnings.append("ComfyUI was started without --fp32-vae: the VAE may wash out colours (GEN-05)")
        if ok and not mps:
            warnings.append("ComfyUI reports no mps device: generation runs without Apple GPU acceleration")
        comfy["process"] = self.comfy_process.info() if self.comfy_process else {"managed": False}
        current = self.queue.current
        return {
            "status": "ok",
            "comfyui": ok,
            "mps": mps,
            "comfyuiInfo": comfy,
            "gpu": {"heldBy": self.gpu.holder},
            "queue": {
                "queued": await self.store.count(JobStatus.QUEUED),
                "running": current.id if current else None,
            },
            "accepting": self.accepting,
            "warnings": warnings,
            "bench": self.benchmarks.last,
        }

    # --- operating it: doctor, logs (the benchmark is `benchmarks`) -------------------------------

    async def doctor(self) -> dict[str, Any]:
        """Every INFRA requirement checked here, each ok / warn / fail with its fix (operations.doctor)."""
        return await run_doctor(self.cfg, self.comfy, self.comfy_process)

    async def logs(self, body: Any) -> dict[str, Any]:
        """The daemon's log, a managed ComfyUI's, or one job's or training's (plasmad.core.job_logs)."""
        return await read_logs(self.cfg, self.store, body)
