"""How plasmactl talks to people and machines: results to stdout, diagnostics to stderr,
`--json` for scripts, one clear line and a distinct exit code for every failure."""

from __future__ import annotations

import json
import sys
from enum import IntEnum
from typing import Any, NoReturn

import click

from plasmad.core.errors import ErrorCode, PlasmaError


class Exit(IntEnum):
    OK = 0
    JOB_FAILED = 1  #: the job (or training) ended failed
    USAGE = 2  #: bad arguments, or the daemon refused the input (400)
    NO_DAEMON = 3  #: plasmad is not running
    NOT_FOUND = 4
    CONFLICT = 5  #: e.g. a training already runs (409)
    UNAVAILABLE = 6  #: ComfyUI down, a setting missing, the daemon stopping
    CANCELLED = 7  #: the job was cancelled
    INTERNAL = 8
    CHECK_FAILED = 9  #: `plasmactl dataset check` found problems: the dataset may not be trained on


_BY_CODE = {
    ErrorCode.INVALID_INPUT: Exit.USAGE,
    ErrorCode.NOT_FOUND: Exit.NOT_FOUND,
    ErrorCode.CONFLICT: Exit.CONFLICT,
    ErrorCode.NOT_CONFIGURED: Exit.UNAVAILABLE,
    ErrorCode.COMFYUI_UNAVAILABLE: Exit.UNAVAILABLE,
    ErrorCode.SHUTTING_DOWN: Exit.UNAVAILABLE,
    ErrorCode.COMFYUI_REJECTED: Exit.JOB_FAILED,
    ErrorCode.TRAINING_FAILED: Exit.JOB_FAILED,
    ErrorCode.OUT_OF_MEMORY: Exit.JOB_FAILED,
}


def fail(message: str, code: Exit) -> NoReturn:
    click.echo(f"plasmactl: {message}", err=True)
    sys.exit(int(code))


def fail_error(err: PlasmaError) -> NoReturn:
    fail(err.message, _BY_CODE.get(err.code, Exit.INTERNAL))


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=False)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows]
    return "\n".join(lines)


def bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else 0
    return "[" + "#" * filled + "-" * (width - filled) + f"] {done}/{total}"
