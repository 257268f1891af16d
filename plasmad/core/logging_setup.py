"""One logging setup for the daemon, built in one place.

Records go through a queue to a listener thread that does the writing, so a slow disk never stalls
the event loop. The daemon's log is `<state>/logs/plasmad.log`, rotated; it also goes to stderr,
which launchd / systemd keep. Records logged while a job runs also go to that job's own log
(`plasmad.core.job_logs`), by the same listener thread.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
from pathlib import Path

from aiohttp.http_exceptions import HttpProcessingError

from plasmad.core.job_logs import JobFileHandler, JobTagFilter

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5


def setup_logging(logs_dir: Path, level: str = "INFO") -> logging.handlers.QueueListener:
    logs_dir.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter(FORMAT)
    file_handler = logging.handlers.RotatingFileHandler(
        logs_dir / "plasmad.log", maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"
    )
    stream_handler = logging.StreamHandler(sys.stderr)
    job_handler = JobFileHandler(logs_dir)
    for handler in (file_handler, stream_handler, job_handler):
        handler.setFormatter(formatter)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    queue_handler = logging.handlers.QueueHandler(records)
    # The job is read from the caller's context, so the filter must run there, not in the thread.
    queue_handler.addFilter(JobTagFilter())
    root.addHandler(queue_handler)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(UnparsableRequests())
    listener = logging.handlers.QueueListener(
        records, file_handler, stream_handler, job_handler, respect_handler_level=True
    )
    listener.start()
    return listener


class UnparsableRequests(logging.Filter):
    """aiohttp answers a request it cannot parse (a URL over 8 KB, a broken header line) with a 400
    before any of our code sees it, and logs that at ERROR with a traceback: a client's bad input,
    not a fault of ours. One line at INFO says it instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            said = exc.message if len(exc.message) <= 160 else exc.message[:160] + "..."
            record.msg, record.args = f"{record.getMessage()}: refused with {exc.code}: %s", (said,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True
