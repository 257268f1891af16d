"""Managed mode: plasmad runs ComfyUI itself as a child (INFRA-01), or attaches to one the artist runs.

The child runs from COMFYUI_DIR with its own Python (COMFYUI_PYTHON), with the precision flags the
requirements want (`--force-fp16 --fp32-vae`) on loopback only, in its own process group so that
stopping it stops everything it started. Its output goes straight to `<state>/logs/comfyui.log`
(the child writes the file itself: no file I/O in our event loop), rotated at each start.

Lifecycle, all in one supervisor task:
- start: spawn, poll `/system_stats` until it answers; `start()` returns then (or when the first
  child dies, or after START_TIMEOUT_S). A port something else already answers on is refused,
  unless that is our own child left running by a plasmad that died (its pid file says so and its
  command line matches): that orphan is stopped first, so a crashed daemon's restart is not locked out.
- death: the job that was running fails at once with the reason (`guard`), never hangs; the child
  is restarted after a backoff that doubles up to MAX_BACKOFF_S and resets once a child has run
  STABLE_AFTER_S. A job that starts while ComfyUI is restarting waits for it.
- stop: SIGTERM to the group, STOP_TIMEOUT_S to exit, then SIGKILL to the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from plasmad.comfy.client import ComfyClient
from plasmad.core import processes
from plasmad.core.errors import ErrorCode, PlasmaError

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
LOG_ROTATE_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3


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


def _alive(pid: int) -> bool:
    """Whether `pid` (an orphan: launchd / init reaps it once it exits) still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rotate(path: Path) -> None:
    """Keep comfyui.log bounded: the child appends to it, so it is rotated before each start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.stat().st_size < LOG_ROTATE_BYTES:
            return
    except FileNotFoundError:
        return
    for n in range(LOG_BACKUPS - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))


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
        self._exit: asyncio.Future[int] | None = None  #: the current child's exit status
        self.restarts = 0
        self.state = "stopped"  #: starting / running / restarting / stopping / stopped / failed
        self.last_exit: int | None = None
        self.last_exit_at: str | None = None
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
            "lastExitReason": describe_exit(self.last_exit) if self.last_exit is not None else None,
            "lastExitAt": self.last_exit_at,
            "startedAt": self.started_at,
            "error": self.error,
            "argv": self.argv,
            "log": str(self.log_path),
        }

    # --- start and supervise ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the child and its supervisor; return once ComfyUI answers.

        Also returns when the first child dies before answering (the supervisor keeps retrying;
        /health and `plasmactl doctor` show why) or after the start timeout. Raises
        ManagedStartError when something else already answers on the port or the child cannot be
        spawned at all.
        """
        if await self._answers():
            orphan = await self._orphan()
            if orphan is None:
                raise ManagedStartError(
                    f"something already answers at {self.url} (a ComfyUI you started yourself?): stop it, "
                    "or set COMFYUI_MANAGED=0 to attach to it, or give the managed one another port"
                )
            log.warning(
                "ComfyUI pid %d, left running by an earlier plasmad, holds %s: stopping it", orphan, self.url
            )
            await self._stop_orphan(orphan)
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
        if self._ready.is_set() or (ready.done() and not ready.cancelled()):
            return  # it answered (it may have died since: the supervisor deals with that)
        if self._exited_once.is_set():
            log.error(
                "ComfyUI exited (%s) before it answered; retrying with backoff (see %s)",
                describe_exit(self.last_exit),
                self.log_path,
            )
        else:
            log.error(
                "ComfyUI did not answer within %.0f s; still waiting (see %s)",
                self._start_timeout,
                self.log_path,
            )

    async def _answers(self) -> bool:
        try:
            await self._client.system_stats(timeout=2.0)
        except PlasmaError:
            return False
        return True

    async def _orphan(self) -> int | None:
        """The pid of our own earlier child if it still runs, judged by pid file and command line."""
        try:
            text = await asyncio.to_thread(self.pid_path.read_text)
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
            out, _ = await asyncio.wait_for(ps.communicate(), 10.0)
        except (OSError, TimeoutError):
            return None
        command = out.decode("utf-8", "replace")
        port = self.argv[self.argv.index("--port") + 1]
        # A recycled pid is someone else's process: only ours has this script and this port.
        return pid if "main.py" in command and f"--port {port}" in command else None

    async def _stop_orphan(self, pid: int) -> None:
        async def gone() -> bool:
            return not await self._answers() and not _alive(pid)

        ended = processes.polled(gone, 0.2)
        killed = await processes.stop_groups([pid], ended, self.stop_timeout_s)
        # Then the port must come free: SIGKILL again each stop_timeout_s until it is.
        while killed and not await ended(self.stop_timeout_s):
            processes.signal_group(pid, signal.SIGKILL)

    async def _spawn(self) -> asyncio.subprocess.Process:
        await asyncio.to_thread(_rotate, self.log_path)
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
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            self.state = "starting"
            try:
                proc = await self._spawn()
            except OSError as exc:
                self.error = f"cannot start ComfyUI ({self.argv[0]}): {exc}"
                log.error("%s", self.error)
                self.state = "failed"
                return
            self._proc = proc
            await asyncio.to_thread(self.pid_path.write_text, f"{proc.pid}\n")
            self._exit = loop.create_future()
            self.started_at = _now()
            self.error = None
            log.info("ComfyUI started (pid %d): %s", proc.pid, " ".join(self.argv))
            started = time.monotonic()
            exited = asyncio.create_task(proc.wait())
            stopping = asyncio.create_task(self._stop.wait())
            try:
                while not exited.done() and not self._stop.is_set():
                    try:
                        await self._client.system_stats(timeout=2.0)
                    except PlasmaError:
                        await asyncio.wait({exited, stopping}, timeout=READY_POLL_S)
                        continue
                    self.state = "running"
                    self._client.forget_object_info()  # a new ComfyUI may have other nodes and models
                    self._ready.set()
                    log.info("ComfyUI answers at %s (pid %d)", self.url, proc.pid)
                    break
                await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not exited.done():
                    await self._terminate(proc, exited)
                code = await exited
            finally:
                stopping.cancel()
            # Leftovers of its group (a worker that outlived the leader) would hold the port.
            processes.signal_group(proc.pid, signal.SIGKILL)
            self._ready.clear()
            self.last_exit, self.last_exit_at = code, _now()
            self._exit.set_result(code)
            self._exited_once.set()
            if self._stop.is_set():
                log.info("ComfyUI stopped (%s)", describe_exit(code))
                await asyncio.to_thread(self.pid_path.unlink, True)
                break
            if time.monotonic() - started > self._stable_after:
                backoff = self._backoff
            self.restarts += 1
            self.state = "restarting"
            self.restart_delay_s = backoff
            log.error(
                "ComfyUI stopped unexpectedly (%s); restart %d in %.1f s (see %s)",
                describe_exit(code),
                self.restarts,
                backoff,
                self.log_path,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(backoff * 2, self._max_backoff)
        self.state = "stopped"

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

    # --- jobs ---------------------------------------------------------------------------------------

    def _died(self, code: int) -> PlasmaError:
        return PlasmaError(
            ErrorCode.COMFYUI_UNAVAILABLE,
            f"ComfyUI stopped ({describe_exit(code)}) while running this job; plasmad is restarting it "
            f"(see {self.log_path}). Submit the job again once `plasmactl health` shows ComfyUI up.",
            details={"comfyuiExit": code},
        )

    async def guard(self, work: Awaitable[T]) -> T:
        """Run one job's ComfyUI work; if the child dies meanwhile, fail it at once with the reason.

        A job that starts while ComfyUI is (re)starting first waits for it to answer.
        """
        if not self._ready.is_set() and self.state in ("starting", "restarting"):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), self._start_timeout + self._max_backoff)
        exit_status = self._exit
        task = asyncio.ensure_future(work)
        if exit_status is None:
            return await task
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
        except PlasmaError as exc:
            if exc.code != ErrorCode.COMFYUI_UNAVAILABLE:
                raise
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(exit_status), EXIT_SETTLE_S)
            if exit_status.done():
                raise self._died(exit_status.result()) from exc
            raise
