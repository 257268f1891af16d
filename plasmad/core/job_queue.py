"""The one serial job queue: a single worker takes jobs in FIFO order, each under the GPU lock.

The store is the queue (a job is queued when its row says so), so nothing is lost in a restart;
the worker is only woken by an event when a job is added. Each kind of job has a handler that
knows how to run it, stop it, and pick it up again after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.core.events import EventBus
from plasmad.core.gpu_lock import GpuLock
from plasmad.core.job_logs import job_context
from plasmad.core.states import JobKind, JobStatus
from plasmad.core.store import Job, JobStore, now

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What a handler gets for one run: a way to report progress, and the cancel flag."""

    job: Job
    report: Callable[[int, int], Awaitable[None]]
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    parked: bool = False  #: the daemon is stopping; leave the work where a restart finds it


class Handler(Protocol):
    async def run(self, ctx: RunContext) -> dict[str, object]:
        """Do the job; return its result. Raise PlasmaError to fail it."""

    async def stop(self, ctx: RunContext) -> None:
        """Make a running `run` end soon (ctx.cancelled or ctx.parked says why)."""

    async def recover(self, job: Job) -> JobStatus:
        """A job found `running` at startup: QUEUED to run it again, or a final state."""


class ReadinessGate(Protocol):
    """What a job needs besides the GPU before it may start: for most jobs, ComfyUI answering.

    The worker asks before it takes the next job, so a job that would only fail now stays queued
    (and says why: `blocks` is its waitingFor) instead of running into a ComfyUI that is away."""

    def blocks(self, job: Job) -> str | None:
        """Why `job` cannot start now, for people; None when it can."""

    async def wait(self, job: Job) -> None:
        """Return once what blocked `job` may have cleared."""


class JobQueue:
    def __init__(
        self,
        store: JobStore,
        gpu: GpuLock,
        handlers: dict[JobKind, Handler] | None = None,
        events: EventBus | None = None,
    ) -> None:
        self._store = store
        self.gpu = gpu
        self.events = (
            events or EventBus()
        )  #: job.queued / started / progress / succeeded / failed / cancelled
        self._handlers = dict(handlers or {})
        self._wake = asyncio.Event()
        self._ended = asyncio.Event()  #: replaced by a fresh one each time a job ends
        #: Replaced by a fresh one each time a job starts, reports progress or ends.
        self._changed = asyncio.Event()
        #: Jobs started and ended so far: a queued job's place in the queue changes only then.
        self.moves = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._current: RunContext | None = None
        self._run_task: asyncio.Task[dict[str, object]] | None = None
        self.gate: ReadinessGate | None = None  #: set by whoever wires the daemon
        self._blocked_by: str | None = None  #: what the worker last waited for (logged once)

    def handle(self, kind: JobKind, handler: Handler) -> None:
        """Jobs of `kind` are run by `handler` (each feature brings the handler of its jobs)."""
        self._handlers[kind] = handler

    @property
    def current(self) -> Job | None:
        return self._current.job if self._current else None

    def live_progress(self, job_id: str) -> tuple[int, int] | None:
        """(step, total) of the running job, if it is `job_id` and has reported any."""
        job = self.current
        if job is None or job.id != job_id or job.total is None:
            return None
        return job.step or 0, job.total

    async def recover(self) -> None:
        """Before the worker starts: settle the jobs that were running when the daemon stopped."""
        for job in await self._store.recent(status=JobStatus.RUNNING, limit=1000):
            status = await self._handlers[job.kind].recover(job)
            log.info("job %s was running at the last stop: now %s", job.id, status.value)
            changes: dict[str, object] = {"status": status}
            if status != JobStatus.QUEUED:
                changes["finished_at"] = now()
            await self._store.update(job.id, **changes)

    def start(self) -> None:
        self._task = asyncio.create_task(self._worker(), name="job-worker")

    async def add(self, job: Job) -> Job:
        """Store a new queued job and wake the worker."""
        await self._store.add(job)
        self.events.publish("job.queued", job=job.id, kind=job.kind.value)
        self._wake.set()
        return job

    def _ended_event(self, job: Job, status: JobStatus, error: dict[str, Any] | None = None) -> None:
        self.events.publish(
            f"job.{status.value}", job=job.id, kind=job.kind.value, status=status.value, error=error
        )

    def _announce_change(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _announce_end(self) -> None:
        self.moves += 1
        ended, self._ended = self._ended, asyncio.Event()
        ended.set()
        self._announce_change()

    def wake_waiters(self) -> None:
        """End every `job_ended` and `job_changed` wait now (the daemon is stopping)."""
        self._announce_end()

    async def job_ended(self, timeout: float) -> None:
        """Return when any job ends (succeeds, fails, is cancelled) or after `timeout` seconds.

        For long polls (GET /jobs/:id?wait=): a client learns of the end at once instead of
        polling, which on a 2-core machine takes CPU from ComfyUI itself.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended.wait(), timeout)

    async def job_changed(self, timeout: float) -> None:
        """Return when a job starts, the running job reports progress, or a job ends; or after
        `timeout` seconds. For the long polls that follow a job's progress (`status` with `step`)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def cancel(self, job: Job) -> Job:
        if job.status == JobStatus.QUEUED:
            if await self._store.set_status_if(
                job.id, JobStatus.QUEUED, status=JobStatus.CANCELLED, finished_at=now()
            ):
                self._ended_event(job, JobStatus.CANCELLED)
                self._announce_end()
                self._wake.set()  # the worker may be waiting at the gate for this very job
                return await self._reload(job.id)
            job = await self._reload(job.id)  # the worker took it meanwhile
        if job.status == JobStatus.RUNNING and self._current and self._current.job.id == job.id:
            self._current.cancelled.set()
            await self._handlers[job.kind].stop(self._current)
            return await self._reload(job.id)
        raise PlasmaError(ErrorCode.CONFLICT, f"job {job.id} is {job.status.value}; nothing to cancel")

    # --- retry (issue 10): a failed job run again as the same job ---------------------------------------

    RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})

    async def retry(self, job: Job) -> Job:
        """Queue a failed or cancelled job again, as itself: same id, same place in the queue (its
        seq: it runs next), same stored state (a page keeps its reserved name, a prompt its id, so
        one ComfyUI still has is collected, not run again). Its attempts start from 0 again."""
        if not await self._store.requeue(job.id, self.RETRYABLE):
            fresh = await self._reload(job.id)
            raise PlasmaError(
                ErrorCode.CONFLICT,
                f"job {job.id}: {fresh.status.value}; only a failed or cancelled job can be retried",
            )
        log.info(
            "job %s queued again by request (it had %s: %s)",
            job.id,
            job.status.value,
            (job.error or {}).get("message", "no reason recorded"),
            extra={"job_id": job.id},
        )
        self.events.publish("job.queued", job=job.id, kind=job.kind.value, retry=True)
        self.moves += 1  # the jobs behind it have one more ahead now
        self._announce_change()
        self._wake.set()
        return await self._reload(job.id)

    async def _reload(self, job_id: str) -> Job:
        job = await self._store.get(job_id)
        assert job is not None
        return job

    async def stop(self, grace: float) -> None:
        """Stop taking work; give the running job `grace` seconds, then park it for the next start."""
        self._stopping = True
        self._wake.set()
        if self._run_task is not None and self._current is not None:
            done, _ = await asyncio.wait({self._run_task}, timeout=grace)
            if not done:
                log.warning("job %s still running after %.0f s: parking it", self._current.job.id, grace)
                self._current.parked = True
                await self._handlers[self._current.job.kind].stop(self._current)
                self._run_task.cancel()
        if self._task is not None:
            # The worker ends by itself once it sees _stopping, unless it is queued for a GPU lock
            # someone else holds: then there is nothing of ours to finish, so cancel the wait.
            worker_done, _ = await asyncio.wait({self._task}, timeout=5.0)
            if not worker_done:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _worker(self) -> None:
        while not self._stopping:
            # Cleared before the store is asked, not after: an add() or stop() that lands while
            # next_queued() runs in its thread must still wake the wait below.
            self._wake.clear()
            job = await self._store.next_queued()
            if job is None:
                await self._wake.wait()
                continue
            if await self._held_at_gate(job):
                continue  # read the queue again: the first job may have changed meanwhile
            async with self.gpu.hold(f"{job.kind.value} job {job.id}"):
                if self._stopping:
                    break
                with job_context(job.id):  # what is logged while it runs also goes to its own log
                    await self._run_one(job)

    async def _held_at_gate(self, job: Job) -> bool:
        """Whether `job` had to wait at the readiness gate (until it cleared, a job was added or
        cancelled, or the queue stops)."""
        why = self.gate.blocks(job) if self.gate is not None else None
        if why is None or self.gate is None:
            self._blocked_by = None
            return False
        if why != self._blocked_by:
            log.info("job %s waits for %s", job.id, why)
            self._blocked_by = why
        cleared = asyncio.create_task(self.gate.wait(job))
        woken = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait({cleared, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (cleared, woken):
                task.cancel()
            await asyncio.gather(cleared, woken, return_exceptions=True)
        return True

    async def _run_one(self, job: Job) -> None:
        started = now()
        if not await self._store.set_status_if(
            job.id,
            JobStatus.QUEUED,
            status=JobStatus.RUNNING,
            started_at=job.started_at or started,
            attempts=job.attempts + 1,
        ):
            return  # cancelled between the read and now
        job = await self._reload(job.id)
        log.info("job %s started (%s, attempt %d, queued %s)", job.id, job.kind, job.attempts, job.created_at)
        self.events.publish("job.started", job=job.id, kind=job.kind.value, attempt=job.attempts)

        async def report(step: int, total: int) -> None:
            # Progress lives in memory while the job runs (a write per sampler step would cost more
            # than the step on a small image); the last figure is stored when the job ends. The
            # long polls that follow it are woken instead.
            if (job.step, job.total) != (step, total):
                job.step, job.total = step, total
                self._announce_change()
                self.events.publish("job.progress", job=job.id, kind=job.kind.value, step=step, total=total)

        ctx = RunContext(job=job, report=report)
        self._current = ctx
        self.moves += 1
        self._announce_change()
        self._run_task = asyncio.create_task(self._handlers[job.kind].run(ctx), name=f"job-{job.id}")
        try:
            result = await self._run_task
            await self._store.update(
                job.id,
                status=JobStatus.SUCCEEDED,
                result=result,
                finished_at=now(),
                step=job.step,
                total=job.total,
            )
            log.info("job %s succeeded", job.id)
            self._ended_event(job, JobStatus.SUCCEEDED)
        except asyncio.CancelledError:
            if not ctx.parked:
                raise
            log.info("job %s parked; it is picked up again at the next start", job.id)
        except PlasmaError as exc:
            status = JobStatus.CANCELLED if ctx.cancelled.is_set() else JobStatus.FAILED
            await self._store.update(
                job.id, status=status, error=exc.to_dict(), finished_at=now(), step=job.step, total=job.total
            )
            log.info("job %s %s: %s", job.id, status.value, exc.message)
            self._ended_event(job, status, exc.to_dict())
        except Exception as exc:
            log.exception("job %s crashed", job.id)
            err = PlasmaError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
            await self._store.update(job.id, status=JobStatus.FAILED, error=err.to_dict(), finished_at=now())
            self._ended_event(job, JobStatus.FAILED, err.to_dict())
        finally:
            self._current = None
            self._run_task = None
            self._announce_end()
