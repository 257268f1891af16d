"""Live events: the bus, and `GET /events` (Server-Sent Events) over the real app and the FAKE ComfyUI."""

from __future__ import annotations

import asyncio
from typing import Any

from plasmad.core.events import EventBus
from tests.support.app import Api, expect_error
from tests.support.sse import sse_events


async def test_a_job_is_followed_from_queued_to_succeeded(api: Api) -> None:
    async with api.client.get("/events") as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        stream = sse_events(resp)
        job_id = await api.submit(seed=5)
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(20):
            async for event in stream:
                if event.get("job") == job_id:
                    seen.append(event)
                    if event["type"] == "job.succeeded":
                        break
    types = [e["type"] for e in seen]
    assert types[0] == "job.queued" and types[1] == "job.started" and types[-1] == "job.succeeded"
    assert "job.progress" in types  # the FAKE reports its sampler steps
    progress = next(e for e in seen if e["type"] == "job.progress")
    assert progress["step"] >= 1 and progress["total"] >= progress["step"] and progress["kind"] == "generate"
    numbers = [int(e["id"].rsplit("-", 1)[1]) for e in seen]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)


async def test_a_reconnecting_client_misses_nothing(api: Api) -> None:
    async with api.client.get("/events") as resp:
        stream = sse_events(resp)
        first = await api.submit(seed=6)
        async with asyncio.timeout(20):
            async for event in stream:
                if event.get("job") == first and event["type"] == "job.queued":
                    last_id = event["id"]
                    break
    # Disconnected now: the rest of that job, and a second job, happen meanwhile.
    await api.wait_job(first)
    second = await api.submit(seed=7)
    await api.wait_job(second)
    async with api.client.get("/events", headers={"Last-Event-ID": last_id}) as resp:
        replayed: list[dict[str, Any]] = []
        async with asyncio.timeout(20):
            async for event in sse_events(resp):
                replayed.append(event)
                if event.get("job") == second and event["type"] == "job.succeeded":
                    break
    firsts = [e["type"] for e in replayed if e.get("job") == first]
    assert firsts[0] == "job.started" and firsts[-1] == "job.succeeded"  # not job.queued again
    assert next(e["type"] for e in replayed if e.get("job") == second) == "job.queued"


async def test_the_stream_has_the_api_guard(api: Api) -> None:
    await expect_error(await api.client.get("/events", headers={"Origin": "https://evil.example"}), 403)
    await expect_error(await api.client.get("/events", headers={"Host": "evil.example:3000"}), 403)


async def test_a_cancelled_queued_job_is_announced(open_api: Any) -> None:
    api = await open_api(start_worker=False)
    job_id = await api.submit()
    async with api.client.get("/events") as resp:
        stream = sse_events(resp)
        await api.post(f"/jobs/{job_id}/cancel")
        async with asyncio.timeout(10):
            async for event in stream:
                if event.get("job") == job_id:
                    assert event["type"] == "job.cancelled" and event["status"] == "cancelled"
                    break


async def test_the_bus_replays_by_id_and_ends_when_closed() -> None:
    bus = EventBus(keep=3)
    for n in range(5):
        bus.publish("tick", n=n)
    assert [e.data["n"] for e in bus.since(f"{bus.boot}-3")] == [3, 4]
    assert [e.data["n"] for e in bus.since("otherboot-9")] == [2, 3, 4]  # another boot: all kept
    assert bus.since(None) == []  # a new follower gets only what comes next

    got: list[int] = []

    async def follow() -> None:
        async for event in bus.follow(f"{bus.boot}-4"):
            got.append(event.data["n"])

    task = asyncio.create_task(follow())
    await asyncio.sleep(0)
    bus.publish("tick", n=5)
    await asyncio.sleep(0.01)
    bus.close()
    await asyncio.wait_for(task, 2)
    assert got == [4, 5]


async def test_the_stream_ends_when_the_daemon_stops(api: Api) -> None:
    async with api.client.get("/events") as resp:
        api.stack.core.stop_accepting()  # what SIGTERM does first
        async with asyncio.timeout(5):
            assert [e async for e in sse_events(resp)] == []
