"""Per-job log files: the logging that writes them (`plasmad.operations.logs` reads them back).

One logging setup (`logging_setup`) serves both the daemon's log and the jobs' logs: while the
worker runs a job, `job_context` marks the asyncio context with the job's id; a filter on the
queue handler stamps every record logged in that context (the queue's, the generation's, the
ComfyUI client's) with it, and `JobFileHandler`, run by the logging thread, appends those records
to `<state>/logs/jobs/<job id>.log` too. So a job's log is what the daemon's log says about that
job, in one small file, written off the event loop. The number of job logs and the size of each
are bounded.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

current_job: ContextVar[str | None] = ContextVar("plasma_job", default=None)

JOBS_SUBDIR = "jobs"
MAX_JOB_LOGS = 1000  #: older job logs are deleted when a new one starts
MAX_JOB_LOG_BYTES = 512 * 1024  #: a job's log stops growing here (one more line says so)
SAFE_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  #: a job id that is safe as a file name


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
        if not isinstance(job_id, str) or not SAFE_JOB_ID.match(job_id):
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
