"""Running kohya to its end: its own process group, its output parsed and logged, stopped on request.

The process gets its own session, so that accelerate's launcher and the trainer it starts are
stopped together (`plasmad.core.processes`). Under `accelerate launch` the trainer is the launcher's
child: it can outlive the launcher and hold the output pipes open, so "ended" means the launcher
exited *and* both pipes closed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plasmad.core import processes
from plasmad.core.appender import Appender
from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.training.kohya.output import CheckpointSaved, Event, KohyaOutputParser, Progress, Stream

logger = logging.getLogger(__name__)

OnEvent = Callable[[Event], Awaitable[None] | None]


@dataclass
class RunResult:
    exit_code: int | None  # None when the process was ended by a signal
    signal: int | None  # the signal that ended it (not the launcher's child: see the tail)
    cancelled: bool
    killed: bool  # SIGKILL was needed: the group outlived SIGTERM by term_timeout
    tail: list[str]
    checkpoints: list[Path]  # as announced by kohya, in order
    last_progress: Progress | None


class _Output:
    """Both pipes of one run: raw bytes to the log, parsed events to the caller."""

    def __init__(self, log: Appender, on_event: OnEvent) -> None:
        self._log = log
        self._on_event = on_event
        self.parser = KohyaOutputParser()
        self.checkpoints: list[Path] = []

    def read(self, proc: asyncio.subprocess.Process) -> list[asyncio.Task[None]]:
        assert proc.stdout is not None and proc.stderr is not None
        return [
            asyncio.create_task(self._pump("stdout", proc.stdout)),
            asyncio.create_task(self._pump("stderr", proc.stderr)),
        ]

    async def _pump(self, name: Stream, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(65536):
            self._log.write(chunk)
            await self._emit(self.parser.feed(name, chunk))
        await self._emit(self.parser.flush(name))

    async def _emit(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, CheckpointSaved):
                self.checkpoints.append(event.path)
            try:
                result = self._on_event(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("training event handler failed on %r", event)


async def _exited(proc: asyncio.subprocess.Process) -> int:
    # Not proc.wait(): that also waits for the pipes to close, which an orphaned trainer (the
    # launcher died, its child did not) can hold open forever.
    while proc.returncode is None:  # noqa: ASYNC110 (asyncio offers no exit-only event)
        await asyncio.sleep(0.1)
    return proc.returncode


async def _start(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path, log: Appender
) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        await log.close()
        raise PlasmaError(ErrorCode.NOT_CONFIGURED, f"cannot start the trainer {argv[0]}: {exc}") from exc


async def _exit_or_cancel(exit_task: asyncio.Task[int], cancel_event: asyncio.Event) -> None:
    """Return once the trainer exits or a stop is asked for, whichever comes first."""
    cancel_task = asyncio.create_task(cancel_event.wait())
    try:
        await asyncio.wait({exit_task, cancel_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cancel_task.cancel()
        await asyncio.gather(cancel_task, return_exceptions=True)


async def _watch(
    pgid: int,
    exit_task: asyncio.Task[int],
    readers: list[asyncio.Task[None]],
    cancel_event: asyncio.Event,
    term_timeout: float,
) -> tuple[bool, bool]:
    """Wait for the run to end, stopping its group if asked to: (cancelled, killed)."""
    everything: list[asyncio.Future[Any]] = [exit_task, *readers]
    cancelled = killed = False
    await _exit_or_cancel(exit_task, cancel_event)
    if not exit_task.done():
        cancelled = True
        # Done means exited *and* pipes closed: the pipes stay open while any group member lives.
        killed = await processes.stop_groups([pgid], processes.tasks_done(everything), term_timeout)
    else:
        _, pending = await asyncio.wait(readers, timeout=term_timeout)
        if pending:
            logger.warning("kohya exited but something in its group still holds its output; killing it")
            processes.signal_group(pgid, signal.SIGKILL)
    _, left = await asyncio.wait(everything, timeout=max(term_timeout, 5.0))
    if left:
        logger.error("kohya's output did not close after SIGKILL; a process escaped its group")
    return cancelled, killed


async def run_kohya(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    on_event: OnEvent,
    cancel_event: asyncio.Event,
    term_timeout: float = 10.0,
) -> RunResult:
    """Run kohya to its end and report how it ended.

    `env` is added to os.environ. The process gets its own process group (its session), so that
    accelerate's launcher and the trainer it starts are stopped together: when cancel_event is
    set, SIGTERM goes to the group, then SIGKILL if anything is left after term_timeout. Raw
    output is appended to log_path. on_event gets every parsed event; its errors are logged,
    never allowed to end a training. Cancelling this coroutine kills the group outright; the
    orderly way to stop is cancel_event.
    """
    log = Appender(log_path, "training log")
    proc = await _start(argv, env, cwd, log)
    pgid = proc.pid  # start_new_session: the leader's pid is the group's id
    output = _Output(log, on_event)
    readers = output.read(proc)
    exit_task = asyncio.create_task(_exited(proc))
    try:
        cancelled, killed = await _watch(pgid, exit_task, readers, cancel_event, term_timeout)
    finally:
        if proc.returncode is None or not all(t.done() for t in readers):
            # This coroutine was cancelled: leave nothing behind.
            processes.signal_group(pgid, signal.SIGKILL)
        for task in (exit_task, *readers):
            task.cancel()
        await asyncio.gather(exit_task, *readers, return_exceptions=True)
        await log.close()

    returncode = proc.returncode  # None only if even SIGKILL did not end it (stuck in a driver)
    return RunResult(
        exit_code=returncode if returncode is not None and returncode >= 0 else None,
        signal=-returncode if returncode is not None and returncode < 0 else None,
        cancelled=cancelled,
        killed=killed,
        tail=output.parser.tail,
        checkpoints=output.checkpoints,
        last_progress=output.parser.last_progress,
    )
