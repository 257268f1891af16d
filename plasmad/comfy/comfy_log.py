"""A managed ComfyUI's own output, `<state>/logs/comfyui.log`: kept bounded, and read for what
ComfyUI says only there.

ComfyUI loads a LoRA whose keys do not fit the checkpoint partly and reports success: the page
is drawn without the character. Only its output says so ("lora key not loaded: …" for a module
the checkpoint lacks, "ERROR lora … shape '[…]' is invalid for input of size …" or "SHAPE
MISMATCH" for one of another size). The child writes the file itself; a job notes its size
when it sends its prompt and reads what was appended when the prompt ends (blocking: in a thread).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

LOG_ROTATE_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
#: The most of the appended output read for one job (a job's own lines are a few KB).
READ_AT_MOST = 8 * 1024 * 1024

LORA_PROBLEMS = {
    "lora key not loaded": re.compile(r"lora key not loaded"),
    "shape is invalid": re.compile(r"shape '\[[^\]]*\]' is invalid|SHAPE MISMATCH"),
}


def rotate(path: Path) -> None:
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


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def lora_problems(path: Path, offset: int) -> dict[str, int]:
    """How many lines of each LoRA problem ComfyUI wrote after `offset` ({} when none).

    A file shorter than `offset` was rotated meanwhile (ComfyUI restarted): read it from the start."""
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            start = offset if offset <= end else 0
            f.seek(max(start, end - READ_AT_MOST))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return {}
    counts = {name: len(pattern.findall(text)) for name, pattern in LORA_PROBLEMS.items()}
    return {name: n for name, n in counts.items() if n}
