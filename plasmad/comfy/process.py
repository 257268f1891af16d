"""Managed mode: plasmad runs ComfyUI itself as a child (INFRA-01), or attaches to one the artist runs.

The child runs from COMFYUI_DIR with its own Python (COMFYUI_PYTHON), with the precision flags the
requirements want (`--force-fp16 --fp32-vae`) on loopback only, in its own process group so that
stopping it stops everything it started. Its output goes straight to `<state>/logs/comfyui.log`
(the child writes the file itself: no file I/O in our event loop), rotated at each start.

Lifecycle, all in one supervisor task:
- start: spawn, poll `/system_stats` until it answers (or the first child dies, or
  START_TIMEOUT_S). A port something else answers on is refused, unless that is our own child
  left by a plasmad that died (`orphans`): that one is stopped first.
- death: the job that was running learns at once (`guard` raises ComfyAway: it waits for the
  restart and tries again); the child is restarted after a backoff that doubles up to
  MAX_BACKOFF_S and resets once a child has run STABLE_AFTER_S.
- hang: a child that stops answering (the monitor or a job's wait says so) is killed with
  SIGKILL (`kill_hung`; a stopped process ignores SIGTERM) and restarted like a dead one.
- pause: stopped while a kohya training runs (that frees its whole process, not only its
  models), started again after (`resume`).
- stop: SIGTERM to the group, STOP_TIMEOUT_S to exit, then SIGKILL to the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from plasmad.comfy import comfy_log, orphans
from plasmad.comfy.answers import ComfyAway
from plasmad.comfy.client import ComfyClient
from plasmad.core import processes
from plasmad.core.errors import PlasmaError
from plasmad.core.fsutil import replace_atomic

log = logging.getLogger(__name__)

T = TypeVar("T")

BASE_FLAGS = ("--force-fp16", "--fp32-vae", "--listen", "127.0.0.1")
START_TIMEOUT_S = 180.0
BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
STABLE_AFTER_S = 60.0  #: a child that ran this long resets the backoff
STOP_TIMEOUT_S = 10.0  #: SIGTERM -> SIGKILL; the service files' stop timeouts allow for it
READY_POLL_S = 0.5
#: The socket can report a dead ComfyUI a moment before its exit status is collected.
EXIT_SETTLE_S = 2.0


class ManagedStartError(Exception):
    """The managed ComfyUI cannot be started at all (the daemon refuses to start)."""


def command(python: Path, comfyui_url: str, extra: tuple[str, ...]) -> list[str]:
    port = urlparse(comfyui_url).port or 8188
    return [str(python), "main.py", *BASE_FLAGS, "--port", str(port), *extra]


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = ", often a sign of running out of memory" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit {code}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class ManagedComfyUI:
    def __init__(
        self,
        python: Path,
        comfyui_dir: Path,
        comfyui_url: str,
        extra_args: tuple[str, ...],
        log_path: Path,
        client: ComfyClient,
        *,
        pid_path: Path | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        backoff_s: float = BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        stable_after_s: float = STABLE_AFTER_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        self.argv = command(python, comfyui_url, extra_args)
        self.url = comfyui_url
        self.log_path = log_path
        #: The child's pid, for the next plasmad to find an orphan left by this one.
        self.pid_path = pid_path or log_path.with_name("comfyui.pid")
        self._dir = comfyui_dir
        self._client = client
        self._start_timeout = start_timeout_s
        self._backoff = backoff_s
        self._max_backoff = max_backoff_s
        self._stable_after = stable_after_s
        self.stop_timeout_s = stop_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._exited_once = asyncio.Event()
        self._pause = asyncio.Event()  #: set: the child is to stop and stay stopped (a training)
        self._unpaused = asyncio.Event()  #: the reverse of _pause, to wait on
        self._unpaused.set()
        self._exit: asyncio.Future[int] | None = None  #: the current child's exit status
        self._hung: str | None = None  #: why the current child was killed as hung
        self.paused: str | None = None  #: what it is stopped for ("training t_…"), or None
        #: Called when the child starts answering or ends (the monitor asks ComfyUI again then).
        self.on_change: Callable[[], None] | None = None
        self.restarts = 0
        self.state = "stopped"  #: starting / running / restarting / paused / stopping / stopped / failed
        self.last_exit: int | None = None
        self.last_exit_at: str | None = None
        self.last_exit_reason: str | None = None
        self.started_at: str | None = None
        self.error: str | None = None
        self.restart_delay_s: float | None = None  #: the backoff before the latest restart

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def info(self) -> dict[str, object]:
        """What /health shows under comfyuiInfo.process."""
        return {
            "managed": True,
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "restartDelayS": self.restart_delay_s,
            "lastExit": self.last_exit,
            "lastExitReason": self.last_exit_reason,
            "lastExitAt": self.last_exit_at,
            "startedAt": self.started_at,
            "pausedFor": self.paused,
            "error": self.error,
            "argv": self.argv,
            "log": str(self.log_path),
        }

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # --- start and supervise ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the child and its supervisor; return once ComfyUI answers.

        Also returns when the first child dies before answering (the supervisor keeps retrying;
        /health and `plasmactl doctor` show why) or after the start timeout. Raises
        ManagedStartError when something else already answers on the port or the child cannot be
        spawned at all.
        """
        if await self._answers():
            orphan = await orphans.find_orphan(self.pid_path, self.argv)
            if orphan is None:
                raise ManagedStartError(
                    f"something already answers at {self.url} (a ComfyUI you started yourself?): stop it, "
                    "or set COMFYUI_MANAGED=0 to attach to it, or give the managed one another port"
                )
            log.warning(
                "ComfyUI pid %d, left running by an earlier plasmad, holds %s: stopping it", orphan, self.url
            )
            await orphans.stop_orphan(orphan, self._answers, self.stop_timeout_s)
        self._task = asyncio.create_task(self._supervise(), name="comfyui-supervisor")
        ready = asyncio.create_task(self._ready.wait())
        died = asyncio.create_task(self._exited_once.wait())
        try:
            await asyncio.wait(
                {ready, died, self._task}, timeout=self._start_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
            died.cancel()
        if self._task.done() and self.state == "failed":
            raise ManagedStartError(self.error or "cannot start ComfyUI")
        if self._ready.is_set():
            return  # it answered (it may have died since: the supervisor deals with that)
        if self._exited_once.is_set():
            why = f"exited ({describe_exit(self.last_exit)}) before it answered"
        else:
            why = f"did not answer within {self._start_timeout:.0f} s"
        log.error("ComfyUI %s; still trying (see %s)", why, self.log_path)

    async def _answers(self) -> bool:
        try:
            await self._client.system_stats(timeout=2.0)
        except PlasmaError:
            return False
        return True

    async def _spawn(self) -> asyncio.subprocess.Process:
        await asyncio.to_thread(comfy_log.rotate, self.log_path)
        log_file = await asyncio.to_thread(self.log_path.open, "ab")
        try:
            return await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=self._dir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopping it stops all it started
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log_file.close()  # the child has its own copy of the descriptor

    async def _supervise(self) -> None:
        backoff = self._backoff
        while not self._stop.is_set():
            if self.paused:
                self.state = "paused"
                await processes.first_done(self._stop.wait(), self._unpaused.wait())
                continue
            started = time.monotonic()
            code = await self._run_child()
            if code is None:
                return  # it cannot be spawned at all: state "failed"
            if self._stop.is_set():
                log.info("ComfyUI stopped (%s)", describe_exit(code))
                await asyncio.to_thread(self.pid_path.unlink, True)
                break
            if self.paused:
                log.info("ComfyUI stopped for %s (%s)", self.paused, describe_exit(code))
                continue
            if time.monotonic() - started > self._stable_after:
                backoff = self._backoff
            self.restarts += 1
            self.state = "restarting"
            self.restart_delay_s = backoff
            log.error(
                "ComfyUI stopped unexpectedly (%s); restart %d in %.1f s (see %s)",
                self.last_exit_reason, self.restarts, backoff, self.log_path,
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._stop.wait()
            backoff = min(backoff * 2, self._max_backoff)
        self.state = "stopped"

    async def _run_child(self) -> int | None:
        """One child's life: spawn, wait until it answers, then until it ends (or is to end); its
        exit status, or None when it cannot be spawned."""
        self.state = "starting"
        try:
            proc = await self._spawn()
        except OSError as exc:
            self.error = f"cannot start ComfyUI ({self.argv[0]}): {exc}"
            log.error("%s", self.error)
            self.state = "failed"
            return None
        self._proc, self._hung = proc, None
        # Whole or not at all: an empty pid file after a kill -9 would hide the orphan from the next plasmad.
        await asyncio.to_thread(replace_atomic, self.pid_path, f"{proc.pid}\n".encode())
        self._exit = asyncio.get_running_loop().create_future()
        self.started_at, self.error = _now(), None
        log.info("ComfyUI started (pid %d): %s", proc.pid, " ".join(self.argv))
        exited = asyncio.create_task(proc.wait())
        try:
            if await self._until_ready(proc, exited):
                await processes.first_done(exited, self._stop.wait(), self._pause.wait())
            if not exited.done():
                await self._terminate(proc, exited)
            code = await exited
        finally:
            exited.cancel()
        # Leftovers of its group (a worker that outlived the leader) would hold the port.
        processes.signal_group(proc.pid, signal.SIGKILL)
        self._ready.clear()
        self.last_exit, self.last_exit_at = code, _now()
        self.last_exit_reason = self._reason(code)
        self._exit.set_result(code)
        self._exited_once.set()
        self._changed()
        return code

    async def _until_ready(self, proc: asyncio.subprocess.Process, exited: asyncio.Task[int]) -> bool:
        """Poll until the child answers (True), or it ends or is to end first (False)."""
        while not exited.done() and not self._stop.is_set() and not self._pause.is_set():
            if not await self._answers():
                ends = (exited, self._stop.wait(), self._pause.wait())
                await processes.first_done(*ends, timeout=READY_POLL_S)
                continue
            self.state = "running"
            self._client.forget_object_info()  # a new ComfyUI may have other nodes and models
            self._ready.set()
            log.info("ComfyUI answers at %s (pid %d)", self.url, proc.pid)
            self._changed()
            return True
        return False

    async def _terminate(self, proc: asyncio.subprocess.Process, exited: asyncio.Task[int]) -> None:
        self.state = "stopping"
        if await processes.stop_groups([proc.pid], processes.tasks_done([exited]), self.stop_timeout_s):
            log.warning("ComfyUI ignored SIGTERM for %.0f s: killing its process group", self.stop_timeout_s)

    async def stop(self) -> None:
        """TERM the child's process group, wait, then KILL it; the supervisor ends."""
        self._stop.set()
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=self.stop_timeout_s + 10.0)
        if not done:  # only if even SIGKILL did not end it (stuck in a driver)
            log.error("ComfyUI's supervisor did not end; leaving the process behind")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.state = "stopped"

    # --- hangs and trainings ------------------------------------------------------------------------

    async def kill_hung(self, why: str) -> None:
        """The child stopped answering: SIGKILL its group (SIGTERM waits in a stopped process's
        queue); the supervisor restarts it as after any death."""
        pid = self.pid
        if pid is None or self._hung is not None or self.state != "running":
            return  # not running (a child still loading is the start timeout's), or already being killed
        self._hung = why
        log.error("ComfyUI (pid %d) hung: %s; killing it, plasmad starts it again", pid, why)
        processes.signal_group(pid, signal.SIGKILL)
        exit_status = self._exit
        if exit_status is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.stop_timeout_s):
                    await asyncio.shield(exit_status)

    async def pause(self, why: str) -> None:
        """Stop the child and keep it stopped until `resume` (a kohya training needs the memory of
        the whole process, not only of its models)."""
        self.paused = why
        self._unpaused.clear()
        self._pause.set()
        exit_status = self._exit
        if exit_status is not None and self.pid is not None:
            log.info("stopping ComfyUI for %s", why)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.stop_timeout_s + 5.0):
                    await asyncio.shield(exit_status)
        self._changed()

    def resume(self) -> None:
        """Start the child again after `pause`; the monitor sees it answer."""
        if self.paused:
            log.info("starting ComfyUI again after %s", self.paused)
        self.paused = None
        self._pause.clear()
        self._unpaused.set()

    # --- jobs ---------------------------------------------------------------------------------------

    def _reason(self, code: int) -> str:
        return f"killed by plasmad: hung ({self._hung})" if self._hung else describe_exit(code)

    def _died(self, code: int) -> ComfyAway:
        return ComfyAway(
            self.url,
            f"stopped ({self._reason(code)}) while running this job; plasmad restarts it "
            f"(see {self.log_path})",
            details={"comfyuiExit": code},
        )

    async def guard(self, work: Awaitable[T]) -> T:
        """Run one job's ComfyUI work; if the child dies meanwhile, end it at once with ComfyAway
        saying why (the job waits for the restart and tries again)."""
        exit_status = self._exit
        task = asyncio.ensure_future(work)
        if exit_status is None or exit_status.done():
            return await task  # no child running now: the work finds that out by itself
        try:
            either: set[asyncio.Future[Any]] = {task, exit_status}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise self._died(exit_status.result())
        try:
            return task.result()
        except ComfyAway as exc:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(EXIT_SETTLE_S):
                    await asyncio.shield(exit_status)
            if exit_status.done():
                raise self._died(exit_status.result()) from exc
            raise
