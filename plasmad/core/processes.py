"""Stopping a process group: the one TERM -> wait -> KILL that every child plasmad runs goes through.

Every long-lived child (a managed ComfyUI, kohya under `accelerate launch`) is started in its own
session (`start_new_session=True`), so its group holds everything it started; stopping the group
stops them all. What "ended" means differs by caller (the exit status collected, the output pipes
closed, a port free, `ps` no longer listing it), so the caller says how to wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

#: Waits up to the given number of seconds for the group to end; True if it did.
WaitEnded = Callable[[float], Awaitable[bool]]

PS_TIMEOUT_S = 10.0


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send `sig` to a process group; a group already gone is not an error."""
    # ProcessLookupError: nothing is left. PermissionError: macOS answers EPERM when only zombies
    # are left in the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def stop_groups(pgids: Iterable[int], ended: WaitEnded, timeout: float) -> bool:
    """SIGTERM every group, give them `timeout` seconds to end (`ended` says whether they did), then
    SIGKILL them. True when SIGKILL was needed."""
    groups = list(pgids)
    for pgid in groups:
        signal_group(pgid, signal.SIGTERM)
    if await ended(timeout):
        return False
    for pgid in groups:
        signal_group(pgid, signal.SIGKILL)
    return True


def tasks_done(tasks: Iterable[asyncio.Future[Any]]) -> WaitEnded:
    """`ended` for a group whose end is seen as tasks finishing (the exit status, the pipes closed)."""
    watched = set(tasks)

    async def wait(timeout: float) -> bool:
        _, pending = await asyncio.wait(watched, timeout=timeout)
        return not pending

    return wait


def polled(check: Callable[[], Awaitable[bool]], interval: float) -> WaitEnded:
    """`ended` for a group whose end can only be asked for (`check` is true once it is gone): asked
    at once, then every `interval` seconds until the deadline."""

    async def wait(timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not await check():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(interval)
        return True

    return wait


async def groups_naming(text: str) -> list[int]:
    """Process groups (other than ours) with a process whose command line contains `text`.

    How a restarted daemon finds what its dead predecessor started: a trainer left running holds
    the GPU, and its command line names a path no other program has."""
    try:
        proc = await asyncio.create_subprocess_exec(
            # -ww: never cut the command line at the terminal's width (COLUMNS), where the path is.
            "ps", "-ww", "-A", "-o", "pgid=,command=",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), PS_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        log.warning("cannot list processes to find a leftover trainer: %s", exc)
        return []
    own = os.getpgrp()
    groups: set[int] = set()
    for line in out.decode("utf-8", "replace").splitlines():
        pgid_text, _, command = line.strip().partition(" ")
        if text in command and pgid_text.isdigit() and int(pgid_text) not in (own, 0, 1):
            groups.add(int(pgid_text))
    return sorted(groups)


async def first_done(*waits: Awaitable[Any], timeout: float | None = None) -> None:
    """Wait until the first of `waits` is done (or `timeout`): a child's exit, a stop asked for.
    Coroutines are wrapped in tasks that end with this call; futures passed in are left running."""
    own = [asyncio.ensure_future(w) for w in waits if not isinstance(w, asyncio.Future)]
    watched = [*(w for w in waits if isinstance(w, asyncio.Future)), *own]
    try:
        await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in own:
            task.cancel()
