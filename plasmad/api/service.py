"""`Service`: the one set of operations both APIs expose, as a thin facade over the features' ops.

`http` and `rpc` are adapters over this class, so the HTTP API and the socket API take the same
inputs and give the same answers and errors. Each method here is one operation; where a feature
returns a stored job, this is where it becomes its wire view.

`build_service` wires a daemon's objects (as `plasmad.daemon` does, and the tests with it).
"""

from __future__ import annotations

from typing import Any

from plasmad.comfy.client import ComfyClient
from plasmad.comfy.monitor import ComfyMonitor
from plasmad.comfy.process import ManagedComfyUI
from plasmad.comfy.templates import TemplateSet
from plasmad.context import ComfyGate, Core
from plasmad.core.config import Config
from plasmad.core.gpu_lock import GpuLock
from plasmad.core.job_queue import JobQueue
from plasmad.core.states import JobKind
from plasmad.core.store import Job, JobStore
from plasmad.core.wire import BenchRecord, DoctorView, checked
from plasmad.dataset.ops import DatasetOps
from plasmad.generation.handler import GenerationHandler
from plasmad.generation.ops import GenerationOps
from plasmad.jobs.ops import JobOps
from plasmad.operations.bench import Bench
from plasmad.operations.doctor import run_doctor
from plasmad.operations.health import health
from plasmad.operations.logs import read_logs
from plasmad.operations.models import list_models
from plasmad.pages.ops import PagesOps
from plasmad.reproduce.ops import ReproduceOps
from plasmad.training.handler import TrainingHandler
from plasmad.training.ops import TrainingOps


class Service:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.jobs = JobOps(core)
        self.generation = GenerationOps(core)  # provides Core.submit_generation
        self.datasets = DatasetOps(core)
        self.training = TrainingOps(core)
        self.benchmarks = Bench(core)  #: INFRA-04
        self.pages = PagesOps(core)  #: the review board's pages, versions and images
        self.reproductions = ReproduceOps(core)  #: issue 12: reproduce a page, consistency checks

    # --- jobs -------------------------------------------------------------------------------------

    async def submit(self, body: Any) -> dict[str, Any]:
        return await self.jobs.view(await self.generation.submit(body))

    async def submit_page(self, body: Any) -> dict[str, Any]:
        return await self.jobs.view(await self.generation.submit_page(body))

    async def get_job(self, job_id: Any, wait: Any = None, step: Any = None) -> dict[str, Any]:
        return await self.jobs.get(job_id, wait, step)

    async def list_jobs(self, body: Any) -> list[dict[str, Any]]:
        return await self.jobs.list(body)

    async def cancel_job(self, job_id: Any) -> dict[str, Any]:
        return await self.jobs.cancel(job_id)

    async def retry_job(self, job_id: Any) -> dict[str, Any]:
        """A failed or cancelled generation, queued again as the same job (issue 10)."""
        return await self.jobs.retry(job_id)

    async def job_workflow(self, job_id: Any) -> dict[str, Any]:
        return await self.jobs.workflow(job_id)

    async def approve(self, body: Any) -> dict[str, Any]:
        return await self.generation.approve(body)

    # --- the review board (issue 14): new versions of a page ---------------------------------------

    async def reroll(self, image: Any, body: Any = None) -> dict[str, Any]:
        return await self.jobs.view(await self.pages.reroll(image, body))

    async def vary(self, image: Any, body: Any = None) -> dict[str, Any]:
        return await self.jobs.view(await self.pages.vary(image, body))

    # --- reproductions and consistency checks (issue 12) ------------------------------------------

    async def reproduce(self, body: Any) -> dict[str, Any]:
        return await self.reproductions.reproduce(body)

    async def consistency(self, body: Any) -> dict[str, Any]:
        return await self.reproductions.consistency(body)

    async def reproduction(self, record_id: Any) -> dict[str, Any]:
        return await self.reproductions.status(record_id)

    # --- operating it -----------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        return await health(self.core, self.benchmarks.last)

    async def doctor(self) -> dict[str, Any]:
        """Every INFRA requirement checked here, each ok / warn / fail with its fix."""
        return dict(checked(DoctorView, await run_doctor(self.core.cfg, self.core.comfy, self.core.process)))

    async def start_bench(self, body: Any) -> dict[str, Any]:
        record, job = await self.benchmarks.start(body)
        return dict(checked(BenchRecord, {**record, "status": "queued", "job": await self.jobs.view(job)}))

    async def logs(self, body: Any) -> dict[str, Any]:
        """The daemon's log, a managed ComfyUI's, or one job's or training's."""
        return await read_logs(self.core.cfg, self.core.store, body)

    # --- model listing (issue 11) -----------------------------------------------------------------

    async def models(self) -> dict[str, Any]:
        """Every checkpoint, LoRA and ControlNet ComfyUI lists: where, how big, SD 1.5 or why not."""
        return await list_models(self.core.cfg, self.core.comfy)


def build_service(
    cfg: Config,
    store: JobStore,
    comfy: ComfyClient,
    templates: TemplateSet,
    process: ManagedComfyUI | None = None,
) -> Service:
    """The daemon's objects, wired: a queue with a handler per job kind, the Core every feature
    shares, and the operations over it. Nothing runs yet (the caller starts the ComfyUI monitor,
    then the queue)."""
    queue = JobQueue(store, GpuLock())
    monitor = ComfyMonitor(
        comfy,
        queue.events,
        state_file=cfg.state_dir / "comfyui.json",
        templates_dir=cfg.templates_dir,
        process=process,
    )
    core = Core(cfg, store, queue, queue.gpu, comfy, templates, monitor, process)
    queue.handle(JobKind.GENERATE, GenerationHandler(core))
    queue.handle(JobKind.TRAIN, TrainingHandler(core))
    queue.gate = ComfyGate(monitor, _needs_comfyui)
    return Service(core)


def _needs_comfyui(job: Job) -> bool:
    """Whether a job can only start while ComfyUI answers (all but a kohya training)."""
    return job.kind != JobKind.TRAIN or TrainingHandler.needs_comfyui(job)
