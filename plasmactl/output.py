"""How plasmactl talks to people and machines: results to stdout, diagnostics to stderr,
`--json` for scripts, one clear line and a distinct exit code for every failure.

Every failure is a `Failure` (raised by `fail` and `fail_error`; click's own usage errors are
wrapped into one by the group, plasmactl.cli). Shown, it is one `plasmactl: ...` line on stderr
(and the valid choices when the daemon listed them) and, under `--json`, a JSON error object on
stdout, unless the command has already printed its JSON result (a failed job's view, a failed
check's report): a command prints at most one JSON document.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Any, NoReturn

import click

from plasmad.core.errors import ErrorCode, PlasmaError

#: Keys of click's `Context.meta` (shared by a command's contexts): --json was given; a JSON
#: document was printed on stdout.
JSON_KEY = "plasmactl.json"
EMITTED_KEY = "plasmactl.emitted"


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
    ErrorCode.PAYLOAD_TOO_LARGE: Exit.USAGE,
    ErrorCode.BAD_IMAGE: Exit.JOB_FAILED,
    ErrorCode.STORAGE: Exit.UNAVAILABLE,
}

#: How a list in an error's `details` is introduced; other lists go under their own key.
_LIST_LABELS = {"choices": "valid", "valid": "valid", "nearest": "nearest", "suggestions": "nearest"}


def _meta() -> dict[str, Any]:
    ctx = click.get_current_context(silent=True)
    return ctx.meta if ctx is not None else {}


class Failure(click.ClickException):
    """A failure with its exit code and, for --json, its error object."""

    def __init__(self, message: str, code: Exit, error: dict[str, Any] | None = None,
                 notes: list[str] | None = None, json_mode: bool | None = None) -> None:
        super().__init__(message)
        self.code = code
        setattr(self, "exit_code", int(code))  # noqa: B010  (click declares it a ClassVar; it is per failure here)
        self.error = {**(error or {"name": code.name.lower(), "message": message}), "exit": int(code)}
        self.notes = notes or []
        # Read now, while the command's context is current: click shows the error after leaving it.
        meta = _meta()
        self.json = bool(meta.get(JSON_KEY)) if json_mode is None else json_mode
        self.emitted = bool(meta.get(EMITTED_KEY))

    def show(self, file: Any = None) -> None:
        click.echo(f"plasmactl: {self.message}", err=True)
        for note in self.notes:
            click.echo(f"  {note}", err=True)
        if self.json and not self.emitted:
            click.echo(json.dumps({"error": self.error}, indent=2, ensure_ascii=False))


def fail(message: str, code: Exit) -> NoReturn:
    raise Failure(message, code)


def error_notes(details: Any) -> list[str]:
    """The lists a refusal carries in `details` (valid samplers, nearest model names...), one line each."""
    if not isinstance(details, dict):
        return []
    notes = []
    for key, value in details.items():
        if isinstance(value, list) and value and all(isinstance(v, str | int | float) for v in value):
            notes.append(f"{_LIST_LABELS.get(key, key)}: {', '.join(str(v) for v in value)}")
    return notes


def fail_error(err: PlasmaError) -> NoReturn:
    notes = [note for note in error_notes(err.details) if note not in err.message]  # not said twice
    raise Failure(err.message, _BY_CODE.get(err.code, Exit.INTERNAL), err.to_dict(), notes)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[EMITTED_KEY] = True


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=False)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows]
    return "\n".join(lines)


def bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else 0
    return "[" + "#" * filled + "-" * (width - filled) + f"] {done}/{total}"
