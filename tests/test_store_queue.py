"""The SQLite job store and the serial job queue, with a FAKE handler that records what it is asked.

The handler's behaviour is chosen per job through its request (`{"mode": "block"}`...), so each test
reads as a list of jobs and what happened to them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.core.gpu_lock import GpuLock
from plasmad.core.job_queue import Handler, JobQueue, RunContext
from plasmad.core.states import ACTIVE_STATES, JobKind, JobStatus
from plasmad.core.store import Job, JobStore

_ids = itertools.count(1)


def new_job(status: JobStatus = JobStatus.QUEUED, kind: JobKind = JobKind.GENERATE, **request: Any) -> Job:
    return Job(id=f"j_{next(_ids):04d}", kind=kind, status=status, request=request)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    s = JobStore(tmp_path / "state" / "plasmad.sqlite3")
    await s.open()
    yield s
    await s.close()


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 5.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await check()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
    return value


# --- the store ------------------------------------------------------------------------------------------


async def test_round_trip_keeps_every_field(store: JobStore) -> None:
    job = new_job(prompt="ハロー", seed=2**63, nested={"a": [1, None]})
    job.result = {"outputs": ["/x.png"]}
    job.error = {"code": 1031, "message": "boom"}
    job.prompt_id, job.step, job.total, job.attempts = "p-1", 3, 20, 2
    await store.add(job)
    assert job.seq > 0
    loaded = await store.get(job.id)
    assert loaded == job
    assert isinstance(loaded.kind, JobKind) and isinstance(loaded.status, JobStatus)
    assert await store.get("j_missing") is None


async def test_fifo_order_and_recent_newest_first(store: JobStore) -> None:
    jobs = [await store.add(new_job(n=i)) for i in range(4)]
    first = await store.next_queued()
    assert first is not None and first.id == jobs[0].id
    await store.update(jobs[0].id, status=JobStatus.RUNNING)
    nxt = await store.next_queued()
    assert nxt is not None and nxt.id == jobs[1].id
    assert [j.id for j in await store.recent()] == [j.id for j in reversed(jobs)]
    assert [j.id for j in await store.recent(limit=2)] == [jobs[3].id, jobs[2].id]
    assert [j.id for j in await store.recent(status=JobStatus.RUNNING)] == [jobs[0].id]
    assert await store.recent(kind=JobKind.TRAIN) == []
    assert await store.count(JobStatus.QUEUED) == 3
    active = await store.in_states(JobKind.GENERATE, ACTIVE_STATES)
    assert [j.id for j in active] == [j.id for j in jobs]  # oldest first


async def test_update_refuses_unknown_columns(store: JobStore) -> None:
    job = await store.add(new_job())
    with pytest.raises(ValueError, match="unknown job columns"):
        await store.update(job.id, status=JobStatus.RUNNING, colour="red")
    assert (await store.get(job.id) or job).status == JobStatus.QUEUED


async def test_set_status_if_lets_exactly_one_racer_win(store: JobStore) -> None:
    jobs = [await store.add(new_job()) for _ in range(20)]
    for job in jobs:
        # The worker taking the job and a cancel, at once: each runs in its own thread.
        take, cancel = await asyncio.gather(
            store.set_status_if(job.id, JobStatus.QUEUED, status=JobStatus.RUNNING),
            store.set_status_if(job.id, JobStatus.QUEUED, status=JobStatus.CANCELLED),
        )
        assert take != cancel
        final = await store.get(job.id)
        assert final is not None and final.status == (JobStatus.RUNNING if take else JobStatus.CANCELLED)
    assert not await store.set_status_if(jobs[0].id, JobStatus.QUEUED, status=JobStatus.FAILED)


async def test_jobs_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "plasmad.sqlite3"
    first = JobStore(path)
    await first.open()
    job = await first.add(new_job(prompt="kept"))
    await first.update(job.id, status=JobStatus.RUNNING, prompt_id="p-9")
    await first.close()
    with pytest.raises(RuntimeError, match="closed"):
        await first.get(job.id)

    second = JobStore(path)
    await second.open()
    try:
        again = await second.get(job.id)
        assert again is not None and again.status == JobStatus.RUNNING and again.prompt_id == "p-9"
        later = await second.add(new_job())
        assert later.seq > job.seq  # FIFO order continues across restarts
    finally:
        await second.close()


# --- the queue ------------------------------------------------------------------------------------------


class FakeHandler:
    """A FAKE job handler. The request's `mode` says what `run` does:

    quick (default)  succeeds at once;  fail  raises a PlasmaError;  crash  raises a bug
    block            waits until released, or fails as cancelled when stopped
    stubborn         ignores stop() entirely (only a park's task cancel ends it)
    slow             takes `seconds`, then succeeds
    """

    def __init__(self, gpu: GpuLock) -> None:
        self.gpu = gpu
        self.calls: list[str] = []
        self.holders: list[str | None] = []
        self.stops: list[tuple[str, bool, bool]] = []  #: (job id, cancelled, parked)
        self.recovered: list[str] = []
        self.recover_to = JobStatus.QUEUED
        self.running = 0
        self.most_at_once = 0
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def run(self, ctx: RunContext) -> dict[str, object]:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        self.calls.append(ctx.job.id)
        self.holders.append(self.gpu.holder)
        self.started.set()
        try:
            mode = ctx.job.request.get("mode", "quick")
            await ctx.report(1, 2)
            await asyncio.sleep(0.002)  # a real await, so that a second worker could slip in
            if mode == "fail":
                raise PlasmaError(ErrorCode.COMFYUI_REJECTED, "the fake refused")
            if mode == "crash":
                raise KeyError("a bug")
            if mode == "block":
                stopped = asyncio.create_task(ctx.cancelled.wait())
                released = asyncio.create_task(self.release.wait())
                await asyncio.wait({stopped, released}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                released.cancel()
                if ctx.cancelled.is_set():
                    raise PlasmaError(ErrorCode.CONFLICT, "stopped on request")
            if mode == "stubborn":
                await asyncio.Event().wait()
            if mode == "slow":
                await asyncio.sleep(float(ctx.job.request["seconds"]))
            await ctx.report(2, 2)
            return {"done": ctx.job.id}
        finally:
            self.running -= 1

    async def stop(self, ctx: RunContext) -> None:
        self.stops.append((ctx.job.id, ctx.cancelled.is_set(), ctx.parked))

    async def recover(self, job: Job) -> JobStatus:
        self.recovered.append(job.id)
        return self.recover_to


class Rig:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.gpu = GpuLock()
        self.handler = FakeHandler(self.gpu)
        handlers: dict[JobKind, Handler] = {JobKind.GENERATE: self.handler}
        self.queue = JobQueue(store, self.gpu, handlers)

    async def add(self, **request: Any) -> Job:
        return await self.queue.add(new_job(**request))

    async def status(self, job: Job) -> JobStatus:
        loaded = await self.store.get(job.id)
        assert loaded is not None
        return loaded.status

    async def wait(self, job: Job, *states: JobStatus) -> Job:
        wanted = states or (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

        async def reached() -> Job | None:
            loaded = await self.store.get(job.id)
            return loaded if loaded is not None and loaded.status in wanted else None

        done: Job = await eventually(reached, f"{job.id} to reach {wanted}")
        return done


@pytest.fixture
async def rig(store: JobStore) -> AsyncIterator[Rig]:
    r = Rig(store)
    yield r
    r.handler.release.set()
    await r.queue.stop(0.5)


async def test_fifo_one_at_a_time_under_the_gpu_lock(rig: Rig) -> None:
    early = [await rig.add(n=i) for i in range(4)]
    rig.queue.start()
    late = [await rig.add(n=i) for i in range(4, 7)]  # added while the worker runs
    for job in early + late:
        done = await rig.wait(job)
        assert done.status == JobStatus.SUCCEEDED and done.result == {"done": job.id}
        assert (done.step, done.total) == (2, 2) and done.attempts == 1
        assert done.started_at and done.finished_at
    assert rig.handler.calls == [j.id for j in early + late]
    assert rig.handler.most_at_once == 1
    assert rig.handler.holders == [f"generate job {j.id}" for j in early + late]
    assert rig.gpu.holder is None and rig.queue.current is None


async def test_holder_and_current_are_visible_while_running(rig: Rig) -> None:
    rig.queue.start()
    job = await rig.add(mode="block")
    await rig.handler.started.wait()
    assert rig.gpu.holder == f"generate job {job.id}" and rig.gpu.locked()
    assert rig.queue.current is not None and rig.queue.current.id == job.id
    assert await rig.status(job) == JobStatus.RUNNING
    rig.handler.release.set()
    assert (await rig.wait(job)).status == JobStatus.SUCCEEDED
    await eventually(lambda: _free(rig), "the GPU to be free")


async def _free(rig: Rig) -> bool:
    return rig.gpu.holder is None and not rig.gpu.locked()


async def test_someone_else_holding_the_gpu_keeps_jobs_queued(rig: Rig) -> None:
    async with rig.gpu.hold("training t_1"):
        rig.queue.start()
        job = await rig.add()
        await asyncio.sleep(0.02)  # the worker had its chance
        assert await rig.status(job) == JobStatus.QUEUED and rig.handler.calls == []
    assert (await rig.wait(job)).status == JobStatus.SUCCEEDED


async def test_cancel_queued_job_is_never_run(rig: Rig) -> None:
    rig.queue.start()
    blocker = await rig.add(mode="block")
    await rig.handler.started.wait()
    queued = await rig.add()
    cancelled = await rig.queue.cancel(queued)
    assert cancelled.status == JobStatus.CANCELLED and cancelled.finished_at
    rig.handler.release.set()
    await rig.wait(blocker)
    after = await rig.add()
    await rig.wait(after)
    assert rig.handler.calls == [blocker.id, after.id]
    assert rig.handler.stops == []  # a queued job needs no stop


async def test_cancel_running_job_stops_it(rig: Rig) -> None:
    rig.queue.start()
    job = await rig.add(mode="block")
    await rig.handler.started.wait()
    await rig.queue.cancel(await rig.wait(job, JobStatus.RUNNING))
    done = await rig.wait(job)
    assert done.status == JobStatus.CANCELLED and done.error is not None
    assert done.error["message"] == "stopped on request"
    assert rig.handler.stops == [(job.id, True, False)]


async def test_cancel_finished_job_is_a_conflict(rig: Rig) -> None:
    rig.queue.start()
    job = await rig.wait(await rig.add())
    with pytest.raises(PlasmaError) as err:
        await rig.queue.cancel(job)
    assert err.value.code == ErrorCode.CONFLICT


async def test_failures_are_recorded_and_the_worker_goes_on(rig: Rig) -> None:
    rig.queue.start()
    failed = await rig.add(mode="fail")
    crashed = await rig.add(mode="crash")
    fine = await rig.add()
    done = await rig.wait(failed)
    assert done.status == JobStatus.FAILED and done.error is not None
    assert done.error["code"] == ErrorCode.COMFYUI_REJECTED and done.error["message"] == "the fake refused"
    done = await rig.wait(crashed)
    assert done.status == JobStatus.FAILED and done.error is not None
    assert done.error["code"] == ErrorCode.INTERNAL and "KeyError" in done.error["message"]
    assert (await rig.wait(fine)).status == JobStatus.SUCCEEDED


async def test_recover_requeues_a_job_left_running(rig: Rig) -> None:
    left = new_job(JobStatus.RUNNING)
    left.attempts, left.started_at = 1, "2026-01-01T00:00:00.000Z"
    await rig.store.add(left)
    await rig.queue.recover()
    assert rig.handler.recovered == [left.id]
    assert await rig.status(left) == JobStatus.QUEUED
    rig.queue.start()
    done = await rig.wait(left)
    assert done.status == JobStatus.SUCCEEDED
    assert done.attempts == 2 and done.started_at == "2026-01-01T00:00:00.000Z"  # the first start is kept


async def test_recover_can_finalise_a_job_left_running(rig: Rig) -> None:
    rig.handler.recover_to = JobStatus.INTERRUPTED
    left = await rig.store.add(new_job(JobStatus.RUNNING))
    queued = await rig.store.add(new_job())
    await rig.queue.recover()
    done = await rig.store.get(left.id)
    assert done is not None and done.status == JobStatus.INTERRUPTED and done.finished_at
    assert rig.handler.recovered == [left.id]  # a queued job is no business of recover()
    assert await rig.status(queued) == JobStatus.QUEUED


async def test_stop_parks_a_job_that_does_not_finish(rig: Rig) -> None:
    rig.queue.start()
    stubborn = await rig.add(mode="stubborn")
    behind = await rig.add()
    await rig.handler.started.wait()
    await rig.queue.stop(0.05)
    # Left `running` with its attempt counted: the next start's recover() picks it up.
    assert await rig.status(stubborn) == JobStatus.RUNNING
    assert rig.handler.stops == [(stubborn.id, False, True)]
    assert await rig.status(behind) == JobStatus.QUEUED and rig.handler.calls == [stubborn.id]
    assert rig.queue.current is None and rig.gpu.holder is None


async def test_stop_lets_a_fast_job_finish(rig: Rig) -> None:
    rig.queue.start()
    slow = await rig.add(mode="slow", seconds=0.05)
    behind = await rig.add()
    await rig.handler.started.wait()
    await rig.queue.stop(5.0)
    assert await rig.status(slow) == JobStatus.SUCCEEDED
    assert rig.handler.stops == []
    assert await rig.status(behind) == JobStatus.QUEUED  # not started once stopping


async def test_stop_when_idle_or_never_started(store: JobStore) -> None:
    idle = Rig(store)
    await idle.queue.stop(0.1)  # never started: nothing to wait for
    running = Rig(store)
    running.queue.start()
    await asyncio.sleep(0)
    await running.queue.stop(0.1)
    assert running.handler.calls == []


class GatedStore(JobStore):
    """A store whose next_queued() stops after its query until `gate` opens: the worker's window."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.asked = asyncio.Event()
        self.gate = asyncio.Event()

    async def next_queued(self) -> Job | None:
        job = await super().next_queued()
        self.asked.set()
        await self.gate.wait()
        return job


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[Rig]:
    store = GatedStore(tmp_path / "gated.sqlite3")
    await store.open()
    r = Rig(store)
    yield r
    store.gate.set()
    await asyncio.wait_for(r.queue.stop(0.5), 5)
    await store.close()


async def test_a_job_added_while_the_worker_looks_is_not_lost(gated: Rig) -> None:
    store = gated.store
    assert isinstance(store, GatedStore)
    gated.queue.start()
    await store.asked.wait()  # the worker found the queue empty and has not gone to sleep yet
    job = await gated.add()
    store.gate.set()
    assert (await gated.wait(job)).status == JobStatus.SUCCEEDED


async def test_stop_while_the_worker_looks_does_not_hang(gated: Rig) -> None:
    store = gated.store
    assert isinstance(store, GatedStore)
    gated.queue.start()
    await store.asked.wait()
    stopping = asyncio.create_task(gated.queue.stop(0.5))
    await asyncio.sleep(0)  # stop() has set its flags
    store.gate.set()
    await asyncio.wait_for(stopping, 5)  # a lost wake-up here would hang plasmad's SIGTERM forever
