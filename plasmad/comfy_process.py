"""Managed mode: plasmad runs ComfyUI itself as a child (INFRA-01), or attaches to one the artist runs.

The child runs from COMFYUI_DIR with its own Python (COMFYUI_PYTHON), with the precision flags the
requirements want (`--force-fp16 --fp32-vae`) on loopback only, in its own process group so that
stopping it stops everything it started. If it dies it is restarted with backoff; the job that was
running then fails with ComfyUI's absence as the reason (the client's next history poll says so)
rather than hanging. Its output goes straight to `<state>/logs/comfyui.log` (the child writes the
file itself: no file I/O in our event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from urllib.parse import urlparse

from plasmad.comfyui import ComfyClient
from plasmad.errors import PlasmaError

log = logging.getLogger(__name__)

BASE_FLAGS = ("--force-fp16", "--fp32-vae", "--listen", "127.0.0.1")
START_TIMEOUT_S = 180.0
MAX_BACKOFF_S = 60.0
STABLE_AFTER_S = 60.0  #: a child that ran this long resets the backoff
STOP_TIMEOUT_S = 10.0


def command(python: Path, comfyui_url: str, extra: tuple[str, ...]) -> list[str]:
    port = urlparse(comfyui_url).port or 8188
    return [str(python), "main.py", *BASE_FLAGS, "--port", str(port), *extra]


class ManagedComfyUI:
    def __init__(
        self,
        python: Path,
        comfyui_dir: Path,
        comfyui_url: str,
        extra_args: tuple[str, ...],
        log_path: Path,
        client: ComfyClient,
    ) -> None:
        self.argv = command(python, comfyui_url, extra_args)
        self._dir = comfyui_dir
        self._log_path = log_path
        self._client = client
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0
        self.state = "stopped"  #: starting / running / restarting / stopped
        self.last_exit: int | None = None
        self._ready = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def info(self) -> dict[str, object]:
        return {
            "managed": True,
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "lastExit": self.last_exit,
            "argv": self.argv,
        }

    async def start(self) -> None:
        """Start the child and the watcher; returns once ComfyUI answers (or the start timed out)."""
        self._task = asyncio.create_task(self._supervise(), name="comfyui-supervisor")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready.wait()), START_TIMEOUT_S)
        except TimeoutError:
            log.error("ComfyUI did not answer within %.0f s; see %s", START_TIMEOUT_S, self._log_path)

    async def _spawn(self) -> asyncio.subprocess.Process:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = await asyncio.to_thread(self._log_path.open, "ab")
        try:
            return await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=self._dir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log_file.close()  # the child has its own copy of the descriptor

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            self.state = "starting"
            try:
                self._proc = await self._spawn()
            except OSError as exc:
                log.error("cannot start ComfyUI (%s): %s", self.argv[0], exc)
                self.state = "stopped"
                return
            log.info("ComfyUI started (pid %d): %s", self._proc.pid, " ".join(self.argv))
            started = time.monotonic()
            waiter = asyncio.create_task(self._proc.wait())
            while not waiter.done() and not self._ready.is_set():
                with contextlib.suppress(PlasmaError):
                    await self._client.system_stats(timeout=2.0)
                    self.state = "running"
                    self._ready.set()
                    self._client.forget_object_info()
                    break
                await asyncio.wait({waiter}, timeout=0.5)
            self.last_exit = await waiter
            self._ready.clear()
            if self._stopping:
                break
            if time.monotonic() - started > STABLE_AFTER_S:
                backoff = 1.0
            self.restarts += 1
            self.state = "restarting"
            log.error(
                "ComfyUI exited with %s; restarting in %.0f s (see %s)",
                self.last_exit,
                backoff,
                self._log_path,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        self.state = "stopped"

    async def stop(self) -> None:
        """TERM the child's process group, wait, then KILL it."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("ComfyUI ignored SIGTERM for %.0f s: killing its process group", STOP_TIMEOUT_S)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.state = "stopped"
