"""A managed ComfyUI that an earlier plasmad left running (it died with kill -9, say): found by the
pid file it wrote and the command line only our child has, and stopped, so that a crashed daemon's
restart is not locked out of its own port."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from plasmad.core import processes

PS_TIMEOUT_S = 10.0


def alive(pid: int) -> bool:
    """Whether `pid` (an orphan: launchd / init reaps it once it exits) still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def find_orphan(pid_path: Path, argv: list[str]) -> int | None:
    """The pid of our own earlier child if it still runs, judged by pid file and command line."""
    try:
        text = await asyncio.to_thread(pid_path.read_text)
        pid = int(text.strip())
    except (OSError, ValueError):
        return None
    try:
        ps = await asyncio.create_subprocess_exec(
            "ps",
            "-ww",  # the whole command line, whatever COLUMNS says
            "-o",
            "command=",
            "-p",
            str(pid),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(ps.communicate(), PS_TIMEOUT_S)
    except (OSError, TimeoutError):
        return None
    command = out.decode("utf-8", "replace")
    port = argv[argv.index("--port") + 1]
    # A recycled pid is someone else's process: only ours has this script and this port.
    return pid if "main.py" in command and f"--port {port}" in command else None


async def stop_orphan(pid: int, answers: Callable[[], Awaitable[bool]], stop_timeout_s: float) -> None:
    """TERM, wait, KILL its group; then until its port is free, KILL again each stop_timeout_s."""

    async def gone() -> bool:
        return not await answers() and not alive(pid)

    ended = processes.polled(gone, 0.2)
    killed = await processes.stop_groups([pid], ended, stop_timeout_s)
    while killed and not await ended(stop_timeout_s):
        processes.signal_group(pid, signal.SIGKILL)
