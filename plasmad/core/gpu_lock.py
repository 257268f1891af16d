"""The one GPU lock. Generation and training never run at once: on 16 GB of unified memory that
ends in an out-of-memory kill that can take hours of training with it. Every user of the GPU (the
job worker, the benchmark, the trainer) holds this lock while it works, and says who it is, so
`/health` and a waiting job's status can tell the artist what the GPU is busy with.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class GpuLock:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._holder: str | None = None

    @property
    def holder(self) -> str | None:
        """Who holds the GPU now ("generation job j_..." / "training t_..."), or None."""
        return self._holder

    def locked(self) -> bool:
        return self._lock.locked()

    @asynccontextmanager
    async def hold(self, holder: str) -> AsyncIterator[None]:
        async with self._lock:
            self._holder = holder
            try:
                yield
            finally:
                self._holder = None
