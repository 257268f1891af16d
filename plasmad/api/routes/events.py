"""`GET /events`: the live events, as Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from plasmad.api.contract import EVENT_STREAM, Header, Route
from plasmad.api.request import service
from plasmad.core.events import Event
from plasmad.core.wire import PlasmaEvent


async def events(request: web.Request) -> web.StreamResponse:
    """`GET /events`: Server-Sent Events, each `event: <type>`, `id: <boot>-<n>`, JSON data.

    A client that reconnects with `Last-Event-ID` (browsers do it by themselves) first gets every
    newer event still kept. The stream ends when the client goes or the daemon stops."""
    # The starting point is taken before the headers go out: once a client has them, every later
    # event reaches it (it may submit a job right away and follow it).
    following = service(request).core.events.follow(request.headers.get("Last-Event-ID"))
    async with sse_response(request) as resp:
        pump = asyncio.create_task(_pump(resp, following))
        gone = asyncio.create_task(resp.wait())  # its pings fail once the client has gone
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, gone):
                task.cancel()
            await asyncio.gather(pump, gone, return_exceptions=True)
    return resp


async def _pump(resp: EventSourceResponse, events: AsyncIterator[Event]) -> None:
    async for event in events:
        body = {"id": event.id, "type": event.type, "at": event.at, **event.data}
        await resp.send(json.dumps(body), id=event.id, event=event.type)


def routes() -> list[Route]:
    return [
        Route("GET", "/events", events, PlasmaEvent, "Live events (Server-Sent Events)",
              media_type=EVENT_STREAM,
              headers=(Header("Last-Event-ID", "the last event id seen: replay what came after it"),),
              tag="events", description=events.__doc__),
    ]  # fmt: skip
