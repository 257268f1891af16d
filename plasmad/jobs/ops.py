"""Operations on any job, whatever its kind: look at it (now, or once it ends), list, cancel,
retry a failed generation."""

from __future__ import annotations

import asyncio
import bisect
from typing import Any

from plasmad.context import Core
from plasmad.core.errors import ErrorCode, PlasmaError, not_found
from plasmad.core.states import FINISHED_STATES, JobKind, JobStatus
from plasmad.core.store import Job
from plasmad.core.wire import (
    JobView,
    JobWaitParams,
    ListJobsParams,
    Progress,
    Workflow,
    check_id,
    checked,
    dump,
    parse,
)

# Bookkeeping kept in a job's stored state that the wire view leaves out (the graph is big; it is
# written beside the image and served by `workflow`).
_PRIVATE_RESULT_KEYS = ("graph", "logExtra")
#: Views built in one go before a long list yields to the event loop: ~0.2 ms of work. Measured
#: (scripts/bench_queue.py): slices of 50 let a GET wait ~14 ms at p99 behind lists of 500, of 10 ~4.
VIEWS_PER_TURN = 10


class JobOps:
    def __init__(self, core: Core) -> None:
        self._core = core

    async def get(self, job_id: Any, wait: Any = None, step: Any = None) -> dict[str, Any]:
        """A job; with `wait` (seconds, at most MAX_WAIT_S) once it has ended or the time is up.

        With `step` too (the progress step the caller last saw; -1 for a job it saw queued), also
        as soon as the job has moved on from it: a new step, started, or (queued) a new place in
        the queue. A client follows a progress bar that way without polling on a timer."""
        queue = self._core.queue
        moves = queue.moves  # read before the job: a start or an end after it is seen below
        job = await self._seen(job_id)
        given = {name: value for name, value in (("wait", wait), ("step", step)) if value is not None}
        params = parse(JobWaitParams, given)
        seen = params.step
        if params.wait is None:
            return await self.view(job)
        seconds = params.wait
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        if seen is None:
            while job.status not in FINISHED_STATES and self._core.accepting:
                left = deadline - loop.time()
                if left <= 0:
                    break
                await self._core.queue.job_ended(left)
                job = await self._seen(job_id)
            return await self.view(job)
        place = await self._core.waiting_for(job) if job.status == JobStatus.QUEUED else None
        while True:
            if queue.moves != moves:  # a job started or ended since `job` was read: read it again
                moves = queue.moves
                job = await self._seen(job_id)
                if job.status == JobStatus.QUEUED and await self._core.waiting_for(job) != place:
                    break  # its place in the queue changed
                continue
            # The running job's progress is read live by _step: no store read per step.
            if job.status in FINISHED_STATES or not self._core.accepting or self._step(job) != seen:
                break
            left = deadline - loop.time()
            if left <= 0:
                break
            await queue.job_changed(left)
        return await self.view(job)

    def _step(self, job: Job) -> int:
        """The step `get` compares with the caller's: -1 while queued, else the live progress."""
        if job.status == JobStatus.QUEUED:
            return -1
        live = self._core.queue.live_progress(job.id)
        return live[0] if live else (job.step or 0)

    async def _stored(self, job_id: Any) -> Job:
        job = await self._core.job(job_id)
        # The store's row, not the worker's live object: the view takes live progress separately.
        return await self._core.store.get(job.id) or job

    async def _seen(self, job_id: Any) -> Job:
        """The stored row as a view shows it (no graph: see JobStore.get_for_view); 404 if none.
        What a client polls, so no thread hop and no graph decoded."""
        job = await self._core.store.get_for_view(check_id(job_id))
        if job is None:
            raise not_found(f"job {job_id}")
        return job

    async def list(self, body: Any) -> list[dict[str, Any]]:
        params = parse(ListJobsParams, body or {})
        jobs, queued = await self._core.store.recent_for_view(params.status, params.kind, params.limit)
        views = []
        for i, job in enumerate(jobs):
            # A queued job's place is its rank among the queued seqs: no query per job.
            ahead = bisect.bisect_left(queued, job.seq) if job.status == JobStatus.QUEUED else None
            views.append(await self.view(job, ahead))
            if i % VIEWS_PER_TURN == VIEWS_PER_TURN - 1:
                await asyncio.sleep(0)  # a long list lets the requests polling one job through
        return views

    async def cancel(self, job_id: Any) -> dict[str, Any]:
        job = await self._stored(job_id)
        return await self.view(await self._core.queue.cancel(job))

    async def retry(self, job_id: Any) -> dict[str, Any]:
        """Run a failed or cancelled generation again as the same job (see JobQueue.retry)."""
        self._core.check_accepting()
        job = await self._stored(job_id)
        if job.kind != JobKind.GENERATE:
            raise PlasmaError(
                ErrorCode.CONFLICT,
                f"{job.id} is a {job.kind.value} job: a training is not retried but started again "
                "(plasmactl train)",
            )
        return await self.view(await self._core.queue.retry(job))

    async def workflow(self, job_id: Any) -> dict[str, Any]:
        job = await self._stored(job_id)
        return dict(checked(Workflow, (job.result or {}).get("graph", {})))

    async def view(self, job: Job, ahead: int | None = None) -> dict[str, Any]:
        """The job's wire view; `ahead`: queued jobs before it, when the caller knows."""
        result = {k: v for k, v in (job.result or {}).items() if k not in _PRIVATE_RESULT_KEYS}
        live = self._core.queue.live_progress(job.id)
        step, total = live if live else (job.step or 0, job.total)
        progress = Progress(step=step, total=total) if total else None
        if job.status == JobStatus.QUEUED:
            waiting_for = await self._core.waiting_for(job, ahead)
        elif job.status == JobStatus.RUNNING:  # between two attempts: what it waits for
            waiting_for = await self._core.waiting_for(job)
        else:
            waiting_for = None
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
