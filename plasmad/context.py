"""`Core`: what every feature's operations and workers share, and nothing else.

The settings, the job store, the queue and the GPU lock, the ComfyUI client and its monitor (and
the managed ComfyUI process, if plasmad runs it), the workflow templates, the gate that closes
when the daemon stops, and the one way to queue a generation. Features take a `Core`, never each other:
a training that samples its checkpoints, a regularisation set, a benchmark all queue their
images through `submit_generation`, which the generation feature provides when the daemon is
built (`plasmad.api.service.build_service`). So imports point down only: api -> features ->
this -> comfy, core.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from plasmad.comfy.client import ComfyClient
from plasmad.comfy.monitor import ComfyMonitor
from plasmad.comfy.process import ManagedComfyUI
from plasmad.comfy.templates import TemplateSet
from plasmad.core.config import Config
from plasmad.core.errors import ErrorCode, PlasmaError, not_found
from plasmad.core.events import EventBus
from plasmad.core.filehash import FileHasher
from plasmad.core.gpu_lock import GpuLock
from plasmad.core.job_queue import JobQueue
from plasmad.core.jobs import Destination
from plasmad.core.states import JobKind, JobStatus
from plasmad.core.store import Job, JobStore
from plasmad.core.wire import GenerateRequest, check_id

log = logging.getLogger(__name__)

#: Validates a generation request (a 400 naming the field) and stores it as a queued job.
SubmitGeneration = Callable[[GenerateRequest, Destination | None], Awaitable[Job]]


@dataclass
class Core:
    cfg: Config
    store: JobStore
    queue: JobQueue
    gpu: GpuLock
    comfy: ComfyClient
    templates: TemplateSet
    monitor: ComfyMonitor  #: is ComfyUI answering, and what it offered when it last did
    process: ManagedComfyUI | None = None  #: the ComfyUI plasmad runs itself (COMFYUI_MANAGED=1)
    accepting: bool = True  #: False once the daemon is stopping: no new work
    #: Running jobs waiting for ComfyUI to come back between two attempts: job id -> why.
    comfy_waits: dict[str, str] = field(default_factory=dict)
    _submit_generation: SubmitGeneration | None = field(default=None, repr=False)

    @property
    def events(self) -> EventBus:
        """What happens to jobs, trainings and ComfyUI, for `GET /events` and the board."""
        return self.queue.events

    @cached_property
    def hasher(self) -> FileHasher:
        """SHA-256 of model and image files, cached in the state dir (the fingerprints of issue 12)."""
        return FileHasher(self.cfg.state_dir / "file-hashes.sqlite3")

    def check_accepting(self) -> None:
        if not self.accepting:
            raise PlasmaError(ErrorCode.SHUTTING_DOWN, "plasmad is shutting down and takes no new work")

    def stop_accepting(self) -> None:
        """The daemon is stopping: refuse new work, and end the long polls now rather than later."""
        self.accepting = False
        self.queue.wake_waiters()
        self.events.close()

    def provide_generations(self, submit: SubmitGeneration) -> None:
        """Called once by the generation feature when the daemon is built."""
        self._submit_generation = submit

    async def submit_generation(self, req: GenerateRequest, destination: Destination | None = None) -> Job:
        """Validate and queue one generation; the job is stored before this returns."""
        self.check_accepting()
        if self._submit_generation is None:
            raise RuntimeError("no generation feature was provided to Core")
        return await self._submit_generation(req, destination)

    async def submit_generations(
        self, items: Sequence[tuple[GenerateRequest, Destination | None]]
    ) -> list[Job]:
        """Queue several generations, all or nothing: if one is refused, those already queued are
        cancelled again, so no half set is left in the queue."""
        queued: list[Job] = []
        try:
            for req, destination in items:
                queued.append(await self.submit_generation(req, destination))
        except BaseException:
            for job in queued:
                fresh = await self.store.get(job.id)
                if fresh is not None and fresh.status == JobStatus.QUEUED:
                    await self.queue.cancel(fresh)
            raise
        return queued

    async def job(self, job_id: object, kind: JobKind | None = None) -> Job:
        """A stored job by id (404 if there is none of that kind). The running job is the queue's
        live object, whose progress and state are newer than its row."""
        job_id = check_id(job_id)
        current = self.queue.current
        job = current if current is not None and current.id == job_id else await self.store.get(job_id)
        if job is None or (kind is not None and job.kind != kind):
            raise not_found(f"{'training' if kind == JobKind.TRAIN else 'job'} {job_id}")
        return job

    async def waiting_for(self, job: Job, ahead: int | None = None) -> str | None:
        """Why a queued job has not started (ComfyUI away, what holds the GPU, how many jobs are
        ahead: one indexed query, unless the caller, listing many, knows it already), or what a
        running job waits for between two attempts."""
        if job.status == JobStatus.RUNNING:
            return self.comfy_waits.get(job.id)
        if ahead is None:
            ahead = await self.store.queued_ahead(job.seq)
        holder = self.gpu.holder
        blocked = self.queue.gate.blocks(job) if self.queue.gate is not None else None
        parts = [blocked or (f"the GPU, held by {holder}" if holder else "the worker")]
        if ahead:
            parts.append(f"{ahead} job{'s' if ahead > 1 else ''} ahead")
        return "; ".join(parts)


class ComfyGate:
    """The queue's readiness gate (`plasmad.core.job_queue.ReadinessGate`): a job that needs ComfyUI
    starts only while ComfyUI answers; meanwhile it stays queued and says why."""

    def __init__(self, monitor: ComfyMonitor, needs_comfyui: Callable[[Job], bool]) -> None:
        self._monitor = monitor
        self._needs = needs_comfyui

    def blocks(self, job: Job) -> str | None:
        return self._monitor.blocks() if self._needs(job) else None

    async def wait(self, job: Job) -> None:
        await self._monitor.wait_up()
