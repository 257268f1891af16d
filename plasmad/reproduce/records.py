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
from typing import Any

from plasmad.core.config import Config
from plasmad.core.errors import invalid, not_found
from plasmad.core.fsutil import replace_atomic
from plasmad.core.wire import Record

RECORD_NAME = "record.json"
REPRODUCE_PREFIX = "r_"
CONSISTENCY_PREFIX = "c_"


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
