"""Per-job log files, and reading any of plasmad's logs back (`plasmactl logs`).

One logging setup (`logging_setup`) serves both the daemon's log and the jobs' logs: while the
worker runs a job, `job_context` marks the asyncio context with the job's id; a filter on the
queue handler stamps every record logged in that context (the queue's, the generation's, the
ComfyUI client's) with it, and `JobFileHandler`, run by the logging thread, appends those records
to `<state>/logs/jobs/<job id>.log` too. So a job's log is what the daemon's log says about that
job, in one small file, written off the event loop. The number of job logs and the size of each
are bounded.

A training's log is the trainer's own output, `<state>/trainings/<id>/train.log`
(`plasmad.training.ops`, which records the path in the job's result as `logFile`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from plasmad.core.config import Config
from plasmad.core.errors import ErrorCode, PlasmaError, invalid, not_found
from plasmad.core.states import JobKind
from plasmad.core.store import Job, JobStore
from plasmad.core.wire import LogsParams, parse

current_job: ContextVar[str | None] = ContextVar("plasma_job", default=None)

JOBS_SUBDIR = "jobs"
MAX_JOB_LOGS = 1000  #: older job logs are deleted when a new one starts
MAX_JOB_LOG_BYTES = 512 * 1024  #: a job's log stops growing here (one more line says so)
MAX_READ_BYTES = 1024 * 1024  #: one `logs` answer carries at most this much
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Records logged inside (and in tasks started inside) belong to job `job_id`."""
    token = current_job.set(job_id)
    try:
        yield
    finally:
        current_job.reset(token)


class JobTagFilter(logging.Filter):
    """Stamps a record with the job of the context that logs it. Runs in the logging caller."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = current_job.get()
        return True


def job_log_path(logs_dir: Path, job_id: str) -> Path:
    return logs_dir / JOBS_SUBDIR / f"{job_id}.log"


class JobFileHandler(logging.Handler):
    """Appends records that carry a job id to that job's file. Runs in the logging thread."""

    def __init__(
        self, logs_dir: Path, max_files: int = MAX_JOB_LOGS, max_bytes: int = MAX_JOB_LOG_BYTES
    ) -> None:
        super().__init__()
        self._dir = logs_dir / JOBS_SUBDIR
        self._max_files = max_files
        self._max_bytes = max_bytes

    def emit(self, record: logging.LogRecord) -> None:
        job_id = getattr(record, "job_id", None)
        if not isinstance(job_id, str) or not _SAFE_ID.match(job_id):
            return
        try:
            path = self._dir / f"{job_id}.log"
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                size = -1
            if size >= self._max_bytes:
                return
            line = self.format(record) + "\n"
            if size < 0:
                self._dir.mkdir(parents=True, exist_ok=True)
                self._prune()
            elif size + len(line) > self._max_bytes:
                line = f"... log cut at {self._max_bytes} bytes; the daemon's log has the rest\n"
            with path.open("a", encoding="utf-8") as f:
                f.write(line)
        except Exception:
            self.handleError(record)

    def _prune(self) -> None:
        """Keep the newest `max_files - 1` job logs, so the new one makes `max_files`."""
        files = [p for p in self._dir.glob("*.log") if p.is_file()]
        if len(files) < self._max_files:
            return
        files.sort(key=lambda p: p.stat().st_mtime)
        for old in files[: len(files) - self._max_files + 1]:
            old.unlink(missing_ok=True)


# --- reading logs back ----------------------------------------------------------------------------


def read_log(path: Path, lines: int, offset: int | None) -> dict[str, Any]:
    """The last `lines` lines of `path`, or (following) what was appended after byte `offset`.

    Blocking: run it in a thread. A file that shrank since `offset` was rotated or replaced: it is
    read from its start again and `rotated` says so.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return {"path": str(path), "exists": False, "lines": [], "offset": 0, "rotated": False}
    rotated = False
    with path.open("rb") as f:
        if offset is not None:
            if offset > size:
                offset, rotated = 0, True
            start = offset
            # A burst larger than one answer is skipped to its newest part.
            start = max(start, size - MAX_READ_BYTES)
            f.seek(start)
            data = f.read(size - start)
            # Only whole lines: a line still being written comes with the next call.
            cut = data.rfind(b"\n") + 1
            data, end = data[:cut], start + cut
            text = data.decode("utf-8", "replace")
            out = text.splitlines()
        else:
            start = max(0, size - MAX_READ_BYTES)
            f.seek(start)
            data = f.read(size - start)
            text = data.decode("utf-8", "replace")
            out = text.splitlines()
            if start > 0 and out:
                out = out[1:]  # the first line was cut by the seek
            out = out[-lines:] if lines else []
            end = size
    return {"path": str(path), "exists": True, "lines": out, "offset": end, "rotated": rotated}


def _training_log(trainings_dir: Path, job: Job) -> Path | None:
    """The trainer's output of a training: the file its result names, else the newest *.log in its folder."""
    recorded = (job.result or {}).get("logFile")
    if isinstance(recorded, str) and Path(recorded).is_file():
        return Path(recorded)
    folder = trainings_dir / job.id
    if not folder.is_dir():
        return None
    logs = sorted((p for p in folder.glob("*.log") if p.is_file()), key=lambda p: p.stat().st_mtime)
    return logs[-1] if logs else None


async def read_logs(cfg: Config, store: JobStore, body: Any) -> dict[str, Any]:
    """The `logs` operation: the daemon's log, a managed ComfyUI's, or one job's or training's."""
    params = parse(LogsParams, body or {})
    source, job_id = "daemon", None
    path = cfg.logs_dir / "plasmad.log"
    if params.job == "comfyui":
        source, path = "comfyui", cfg.logs_dir / "comfyui.log"
    elif params.job:
        if not _SAFE_ID.match(params.job):
            raise invalid("job", f"{params.job!r} is not a job id")
        job = await store.get(params.job)
        if job is None:
            raise not_found(f"job {params.job}")
        job_id, source, path = job.id, "job", job_log_path(cfg.logs_dir, job.id)
        if job.kind == JobKind.TRAIN:
            trainer_log = await asyncio.to_thread(_training_log, cfg.trainings_dir, job)
            if trainer_log is not None:
                source, path = "training", trainer_log
    try:
        answer = await asyncio.to_thread(read_log, path, params.lines, params.offset)
    except OSError as exc:
        raise PlasmaError(ErrorCode.INTERNAL, f"cannot read {path}: {exc}") from exc
    if not answer["exists"] and source == "job":
        answer["note"] = "no log yet: a job's log starts when the worker takes the job"
    elif not answer["exists"] and source == "comfyui":
        answer["note"] = "plasmad keeps ComfyUI's output only when it runs ComfyUI itself (COMFYUI_MANAGED=1)"
    return {"source": source, "job": job_id, **answer}
