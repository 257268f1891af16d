"""What a reproduction or a consistency check keeps: one JSON file in its own folder of the state dir.

    <state>/reproductions/<page>/<r_id>/record.json, run-1.png, ..., contact-sheet.png
    <state>/consistency/<c_id>/record.json, run-1.png, ..., contact-sheet.png

Nothing there is read by the pipeline (overlay and assemble read `<pipeline>/output/`): a
reproduction never lands beside the page it reproduces. The record is the API's answer too.
Blocking functions: call them through asyncio.to_thread.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from plasmad.core.config import Config
from plasmad.core.errors import invalid, not_found
from plasmad.core.fsutil import replace_atomic
from plasmad.core.jobs import StateModel

RECORD_NAME = "record.json"
REPRODUCE_PREFIX = "r_"
CONSISTENCY_PREFIX = "c_"


Status = Literal["same", "changed", "missing", "unrecorded"]


class FileCheck(StateModel):
    """One fingerprinted file of a page, as it is now."""

    role: str
    file: str
    path: str | None = None  #: where it is now (None: not found)
    recorded: str | None = None  #: the SHA-256 the page's log entry holds
    now: str | None = None  #: the SHA-256 of the file now
    status: Status


class RunResult(StateModel):
    """One run, compared with the reference (the page; in a consistency check, run 1)."""

    run: int
    job: str
    status: str  #: the job's: succeeded, failed, cancelled
    image: str | None = None
    identical: bool | None = None  #: every pixel the same
    max_diff: int | None = None  #: the largest difference of one channel of one pixel, 0-255
    ssim: float | None = None  #: structural similarity, 1.0 = the same picture
    note: str | None = None  #: why it was not compared (the job failed, the size differs)
    sampler_steps: int | None = None  #: the steps ComfyUI reported: proof the sampler ran


class Record(StateModel):
    id: str
    kind: Literal["reproduce", "consistency"]
    state: Literal["running", "done"] = "running"
    folder: str
    jobs: list[str]
    runs: int
    created_at: str
    # A reproduction
    page: str | None = None  #: chXX_pNNN_vN
    original: str | None = None  #: the page's image
    workflow: str | None = None  #: the page's stored graph, which each run renders as it is
    force: bool = False
    files: list[FileCheck] = Field(default_factory=list)
    # A consistency check
    request: dict[str, Any] | None = None  #: the generation, as validated (seed filled in)
    seed: int | None = None
    crop: dict[str, int] | None = None
    # Once every run has ended
    results: list[RunResult] = Field(default_factory=list)
    matrix: list[list[float | None]] | None = None  #: SSIM of every run against every run
    identical: bool | None = None  #: every run pixel-identical to the reference
    min_ssim: float | None = None
    sheet: str | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(5)}"


def reproduction_folder(cfg: Config, page: str, record_id: str) -> Path:
    return cfg.state_dir / "reproductions" / page / record_id


def consistency_folder(cfg: Config, record_id: str) -> Path:
    return cfg.state_dir / "consistency" / record_id


def save(record: Record) -> None:
    data = (json.dumps(record.dump(), indent=2, ensure_ascii=False) + "\n").encode()
    replace_atomic(Path(record.folder) / RECORD_NAME, data)


def find(cfg: Config, record_id: Any) -> Record:
    """A stored record by id (404 if none); ids are `r_` or `c_` and 10 hex digits."""
    if not isinstance(record_id, str) or not (
        record_id.startswith((REPRODUCE_PREFIX, CONSISTENCY_PREFIX)) and record_id[2:].isalnum()
    ):
        raise invalid("id", "must be a reproduction (r_...) or consistency check (c_...) id")
    if record_id.startswith(CONSISTENCY_PREFIX):
        candidates = [consistency_folder(cfg, record_id) / RECORD_NAME]
    else:
        candidates = sorted((cfg.state_dir / "reproductions").glob(f"*/{record_id}/{RECORD_NAME}"))
    for path in candidates:
        if path.is_file():
            return Record.model_validate(json.loads(path.read_text(encoding="utf-8")))
    raise not_found(f"reproduction or consistency check {record_id}")
