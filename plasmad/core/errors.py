"""The one error root of plasmad, with stable numeric codes shared by the HTTP and JSON-RPC APIs.

Every failure a user can see is a PlasmaError. `http_api` turns it into an HTTP status and a JSON
body, `rpc` into a JSON-RPC error object, and plasmactl into a message and an exit code; all three
read the same code, so the two APIs can never disagree.
"""

from __future__ import annotations

import errno
import os
from enum import IntEnum
from typing import Any


class ErrorCode(IntEnum):
    """Stable codes: never renumber, only add. The HTTP status is `http_status`."""

    INVALID_INPUT = 1001  #: a field of the request is wrong; `field` names it
    FORBIDDEN = 1003  #: a request from outside this machine's loopback (DNS rebinding, a foreign page)
    NOT_FOUND = 1004  #: no job, training or file of that name
    UNSUPPORTED_MEDIA = 1015  #: a request body that is not application/json
    CONFLICT = 1009  #: the state forbids it now (a second training, approving twice...)
    NOT_CONFIGURED = 1020  #: a setting this operation needs is missing (COMFYUI_DIR, KOHYA_*)
    COMFYUI_UNAVAILABLE = 1030  #: ComfyUI did not answer
    COMFYUI_REJECTED = 1031  #: ComfyUI refused the graph (node_errors) or failed running it
    TRAINING_FAILED = 1040  #: the trainer ended without a LoRA
    OUT_OF_MEMORY = 1041  #: the trainer or ComfyUI ran out of memory
    SHUTTING_DOWN = 1050  #: the daemon is stopping and takes no new work
    INTERNAL = 1099  #: a bug; the daemon's log has the traceback
    # --- unattended runs (issue 10): what a night's queue meets -------------------------------
    PAYLOAD_TOO_LARGE = 1013  #: a request body (HTTP) or line (JSON-RPC) over MAX_BODY_BYTES
    BAD_IMAGE = 1032  #: ComfyUI "succeeded" but the image is unusable (all one colour: NaN); kept aside
    STORAGE = 1060  #: a file could not be written: disk full, read-only, no permission; `field`-less

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self]

    @property
    def label(self) -> str:
        return self.name.lower()


_HTTP_STATUS = {
    ErrorCode.INVALID_INPUT: 400,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNSUPPORTED_MEDIA: 415,
    ErrorCode.CONFLICT: 409,
    ErrorCode.NOT_CONFIGURED: 503,
    ErrorCode.COMFYUI_UNAVAILABLE: 503,
    ErrorCode.COMFYUI_REJECTED: 502,
    ErrorCode.TRAINING_FAILED: 500,
    ErrorCode.OUT_OF_MEMORY: 500,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.INTERNAL: 500,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.BAD_IMAGE: 502,
    ErrorCode.STORAGE: 507,
}


class PlasmaError(Exception):
    """A failure with a stable code, a message for people, and the request field at fault."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        field: str | None = None,
        details: Any = None,
    ) -> None:
        # Every failure says something, even one raised with an empty text (a bug, then).
        message = message.strip() or f"{code.label.replace('_', ' ')} (no reason was given)"
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The error as both APIs carry it (HTTP body `error`, JSON-RPC `error.data`)."""
        body: dict[str, Any] = {"code": int(self.code), "name": self.code.label, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.details is not None:
            body["details"] = self.details
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> PlasmaError:
        try:
            code = ErrorCode(int(body.get("code", ErrorCode.INTERNAL)))
        except ValueError:
            code = ErrorCode.INTERNAL
        return cls(code, str(body.get("message", "")), field=body.get("field"), details=body.get("details"))


def invalid(field: str, message: str, details: Any = None) -> PlasmaError:
    """The usual 400: `field` is a dotted path into the request (`resolution.width`)."""
    return PlasmaError(ErrorCode.INVALID_INPUT, f"{field}: {message}", field=field, details=details)


def not_found(what: str) -> PlasmaError:
    return PlasmaError(ErrorCode.NOT_FOUND, f"{what} not found")


def not_configured(setting: str, why: str) -> PlasmaError:
    return PlasmaError(ErrorCode.NOT_CONFIGURED, f"{setting} is not set: {why}", field=setting)


# --- storage: the OS's errors a person can act on, said so (issue 10) --------------------------------

#: errno -> (what happened, what to do). Anything else stays an OSError: a bug or a stranger fault.
_STORAGE_ERRNOS = {
    errno.ENOSPC: ("the disk is full", "free some space there"),
    errno.EDQUOT: ("the disk quota is used up", "free some space there or raise the quota"),
    errno.EROFS: ("it is on a read-only filesystem", "remount it read-write or choose another folder"),
    errno.EACCES: ("plasmad may not write there", "fix the folder's permissions"),
    errno.EPERM: ("plasmad may not write there", "fix the folder's permissions"),
}


def storage_error(exc: OSError, folder: os.PathLike[str] | str, then: str = "") -> PlasmaError | None:
    """A STORAGE error naming the folder and what to do, if `exc` is one a person can fix; else None.

    `folder` is where the write went (the failing file's own folder is used when the error names
    one); `then` is how to carry on once it is fixed (`plasmactl retry j_...`)."""
    known = _STORAGE_ERRNOS.get(exc.errno or 0)
    if known is None:
        return None
    where = os.fspath(folder)
    if exc.filename:
        where = os.path.dirname(os.fspath(exc.filename)) or where
    what, todo = known
    message = f"cannot write to {where}: {what} ({errno.errorcode[exc.errno or 0]}); {todo}"
    return PlasmaError(
        ErrorCode.STORAGE,
        message + (f", then {then}" if then else ""),
        details={"folder": where, "errno": errno.errorcode[exc.errno or 0]},
    )
