"""Live events: what happened to jobs, trainings and ComfyUI, for whoever follows (`GET /events`).

Publishers (the queue, the trainers, the ComfyUI monitor) call `publish`, which never blocks and
never fails: it appends to a bounded ring and wakes the followers. Each event has an id
`<boot>-<n>`; a follower that reconnects with the last id it saw gets every newer event still in
the ring, so a dropped connection misses nothing recent. An id from an earlier boot (plasmad was
restarted meanwhile) replays the whole ring. Events are a convenience: the stored job stays the
truth, so a follower that fell further behind than the ring reads the jobs again.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

KEEP = 2000  #: events kept for reconnecting followers (a chapter's worth of progress and ends)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    id: str  #: `<boot>-<n>`, n counting from 1 in this boot
    type: str  #: e.g. job.queued, job.progress, job.succeeded, training.checkpoint, comfyui.down
    data: dict[str, Any]
    at: str = field(default_factory=_now)

    @property
    def seq(self) -> int:
        return int(self.id.rsplit("-", 1)[1])


class EventBus:
    def __init__(self, keep: int = KEEP) -> None:
        self.boot = secrets.token_hex(3)
        self._ring: deque[Event] = deque(maxlen=keep)
        self._numbers = itertools.count(1)
        self._changed = asyncio.Event()  #: replaced by a fresh one after each publish
        self.closed = False

    def close(self) -> None:
        """The daemon is stopping: every `follow` ends (its followers reconnect to the next one)."""
        self.closed = True
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def publish(self, type: str, **data: Any) -> Event:
        event = Event(f"{self.boot}-{next(self._numbers)}", type, data)
        self._ring.append(event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return event

    def _after(self, last_id: str | None) -> int:
        """The number after which a follower that last saw `last_id` is owed events."""
        if not last_id:
            return self._ring[-1].seq if self._ring else 0  # a new follower: only what comes next
        boot, _, number = last_id.rpartition("-")
        if boot != self.boot or not number.isdigit():
            return 0  # seen in an earlier boot: everything kept is news
        return int(number)

    def since(self, last_id: str | None) -> list[Event]:
        """The events after `last_id` still kept (none for a new follower)."""
        after = self._after(last_id)
        return [e for e in self._ring if e.seq > after]

    def follow(self, last_id: str | None = None) -> AsyncIterator[Event]:
        """Every event after `last_id` still kept, then each new one as it is published.

        Where a new follower starts is fixed now, when this is called, not at its first read: a
        client that opens the stream and then submits a job gets that job's `job.queued`."""
        return self._follow(self._after(last_id))

    async def _follow(self, after: int) -> AsyncIterator[Event]:
        while not self.closed:
            changed = self._changed  # taken before reading the ring: no publish can slip between
            pending = [e for e in self._ring if e.seq > after]
            for event in pending:
                yield event
                after = event.seq
            if not pending:
                await changed.wait()
