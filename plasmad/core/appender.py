"""A file that grows off the event loop: the training's logs (kohya's raw output, the ComfyUI
trainer's own lines, the loss values for the board's curve).

`Appender` hands what it is given to a thread of its own, which writes it in order to one open
file: a slow disk never stalls the event loop, and a disk that fails costs that log, not the run
(the checkpoints matter more); the failure is logged once and what follows is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class Appender:
    """Appends to `path` (made with its folder if missing); `close` once done: what is pending
    is written first. `what` names the file in the one warning a failed write gives."""

    def __init__(self, path: Path, what: str) -> None:
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, args=(path, what), name=f"append-{path.name}", daemon=True
        )
        self._thread.start()

    def write(self, data: bytes | str) -> None:
        self._queue.put(data.encode() if isinstance(data, str) else data)

    async def close(self) -> None:
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    def _run(self, path: Path, what: str) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as f:
                while (data := self._queue.get()) is not None:
                    f.write(data)
                    if self._queue.empty():  # flush once per burst, not per write
                        f.flush()
        except OSError as exc:
            log.warning("cannot write the %s %s: %s; the run goes on without it", what, path, exc)
            while self._queue.get() is not None:  # keep draining so the queue cannot grow
                pass
