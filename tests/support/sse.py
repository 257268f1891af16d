"""Reading a Server-Sent Events stream (GET /events) in tests; each event checked against its model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from plasmad.core.wire import PlasmaEvent


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The events of an SSE stream, as the JSON each carries (pings and blank lines skipped)."""
    fields: dict[str, str] = {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if "data" in fields:
                event = json.loads(fields["data"])
                assert event["type"] == fields["event"] and event["id"] == fields["id"]
                PlasmaEvent.model_validate(event)  # as GET /openapi.json describes it
                yield event
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
