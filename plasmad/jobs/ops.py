"""Operations on any job, whatever its kind: look at it (now, or once it ends), list, cancel."""

from __future__ import annotations

import asyncio
from typing import Any

from plasmad.context import Core
from plasmad.core.errors import invalid
from plasmad.core.states import FINISHED_STATES, JobStatus
from plasmad.core.store import Job
from plasmad.core.wire import JobView, ListJobsParams, Progress, dump, parse

# Bookkeeping kept in a job's stored state that the wire view leaves out (the graph is big; it is
# written beside the image and served by `workflow`).
_PRIVATE_RESULT_KEYS = ("graph", "logExtra")
MAX_WAIT_S = 60.0  #: longest long poll (GET /jobs/:id?wait=): below common HTTP client timeouts


def _step_param(value: Any) -> int | None:
    """`step` as a query string or JSON gives it: a whole number, -1 or more."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < -1:
        raise invalid("step", "must be the step last seen, a whole number (-1: the job was queued)")
    return value


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
        job = await self._stored(job_id)
        seen = _step_param(step)
        if wait is None:
            return await self.view(job)
        try:
            seconds = float(wait)
        except (TypeError, ValueError):
            raise invalid("wait", "must be a number of seconds") from None
        if not 0 <= seconds <= MAX_WAIT_S:
            raise invalid("wait", f"must lie in 0-{MAX_WAIT_S:.0f} s")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        if seen is None:
            while job.status not in FINISHED_STATES and self._core.accepting:
                left = deadline - loop.time()
                if left <= 0:
                    break
                await self._core.queue.job_ended(left)
                job = await self._stored(job_id)
            return await self.view(job)
        place = await self._core.waiting_for(job) if job.status == JobStatus.QUEUED else None
        while True:
            if queue.moves != moves:  # a job started or ended since `job` was read: read it again
                moves = queue.moves
                job = await self._stored(job_id)
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

    async def list(self, body: Any) -> list[dict[str, Any]]:
        params = parse(ListJobsParams, body or {})
        jobs = await self._core.store.recent(status=params.status, kind=params.kind, limit=params.limit)
        return [await self.view(j) for j in jobs]

    async def cancel(self, job_id: Any) -> dict[str, Any]:
        job = await self._stored(job_id)
        return await self.view(await self._core.queue.cancel(job))

    async def workflow(self, job_id: Any) -> dict[str, Any]:
        job = await self._stored(job_id)
        return dict((job.result or {}).get("graph", {}))

    async def view(self, job: Job) -> dict[str, Any]:
        result = {k: v for k, v in (job.result or {}).items() if k not in _PRIVATE_RESULT_KEYS}
        live = self._core.queue.live_progress(job.id)
        step, total = live if live else (job.step or 0, job.total)
        progress = Progress(step=step, total=total) if total else None
        active = job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
        waiting_for = await self._core.waiting_for(job) if active else None
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
