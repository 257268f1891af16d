"""`plasmactl logs`: reading any of plasmad's logs back, whole or followed.

The daemon's log and a managed ComfyUI's (`<state>/logs/`), or one job's: a generation's log is
the one `plasmad.core.job_logs` writes while the worker runs it; a training's log is the trainer's
own output, `<state>/trainings/<id>/train.log` (`plasmad.training.service`, which records the path
in the job's result as `logFile`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from plasmad.core.config import Config
from plasmad.core.errors import ErrorCode, PlasmaError, invalid, not_found
from plasmad.core.job_logs import SAFE_JOB_ID, job_log_path
from plasmad.core.states import JobKind
from plasmad.core.store import Job, JobStore
from plasmad.core.wire import LogsParams, LogsView, checked, parse

MAX_READ_BYTES = 1024 * 1024  #: one `logs` answer carries at most this much


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
        if not SAFE_JOB_ID.match(params.job):
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
    return dict(checked(LogsView, {"source": source, "job": job_id, **answer}))
