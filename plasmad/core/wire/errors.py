"""The error body: every refusal and failure of the HTTP API (`error.data` of a JSON-RPC error)."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from plasmad.core.errors import ErrorCode
from plasmad.core.wire.base import ViewModel


class ErrorDetail(ViewModel):
    code: ErrorCode = Field(description="stable code, shared by the HTTP and the JSON-RPC API")
    name: str = Field(json_schema_extra={"enum": [c.label for c in ErrorCode]})
    message: str
    field: str | None = None  #: the request field at fault (`resolution.width`)
    details: Any = None  #: more, e.g. the valid choices: `{"choices": [...]}`


class ErrorBody(ViewModel):
    """Every refusal and failure of the HTTP API (`error.data` of a JSON-RPC error)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": 1001,
                        "name": "invalid_input",
                        "field": "resolution.width",
                        "message": "resolution.width: 1024 is over the hardware limit of 512 "
                        "(max 512x768 on an M1 Pro 16 GB)",
                    }
                }
            ]
        }
    )

    error: ErrorDetail
