"""What every wire model is built on: the request and answer bases, the bounds on what a request may
carry, the checks both APIs run on every request (`check_text`, `check_id`), and `parse`, `dump`
and `checked`, which turn bodies into models and models (or answers) into JSON.

Requests are parsed strictly (types, unknown fields refused); answers are built in Python by field
name and sent in camelCase. The operations build most answers as dicts and pass them through
`checked`, which validates them against their model and gives back exactly the keys they had: a key
the model does not know is a bug (ValidationError, a 500 the tests see), and a key that is sometimes
absent stays absent (the model gives it a default, so the spec does not call it required). Answers
that carry records other programs or older versions wrote (a generation-log entry, a benchmark
record) allow more keys (`OpenView`).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from plasmad.core.errors import PlasmaError, invalid

# --- bounds on what a request may carry (issue 10): found by fuzzing, each a 400 naming its field ----

MAX_BODY_BYTES = 1024 * 1024  #: a request body (HTTP) or line (JSON-RPC); past it: 413 / PAYLOAD_TOO_LARGE
MAX_NAME = 255  #: a file name in a models folder, a sampler: NAME_MAX
MAX_PATH = 1024  #: an absolute path: PATH_MAX on macOS, the artist's system
MAX_ID = 100  #: a job, training or benchmark id (ours are 14 characters)
MAX_CHAPTER = 999
MAX_PAGE = 999

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
PathText = Annotated[str, Field(min_length=1, max_length=MAX_PATH)]
PromptText = Annotated[str, Field(max_length=8000)]


def check_text(value: Any, field: str = "body") -> None:
    """Refuse a NUL byte or a lone surrogate anywhere in a request, keys included (a 400 naming the
    field). Either breaks what the text meets later: file names, SQLite, ComfyUI's JSON. Both APIs
    run this on everything they are sent, before any operation sees it."""
    stack: list[tuple[str, Any]] = [(field, value)]
    while stack:  # iterative: a body may nest as deep as the JSON decoder allows
        where, item = stack.pop()
        if isinstance(item, str):
            _check_string(item, where)
        elif isinstance(item, dict):
            for key, inner in item.items():
                label = str(key) or '""'  # an empty key still names a field
                name = label if where == "body" else f"{where}.{label}"
                _check_string(str(key), name)
                stack.append((name, inner))
        elif isinstance(item, list):
            stack.extend((f"{where}.{i}", inner) for i, inner in enumerate(item))


def _check_string(text: str, field: str) -> None:
    if "\x00" in text:
        raise invalid(field, "contains a NUL byte")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(field, "is not valid Unicode (it holds a lone surrogate)") from None


def check_id(value: Any, field: str = "id") -> str:
    """A job, training or benchmark id as sent (path, query or params): a short printable text."""
    if not isinstance(value, str) or not value:
        raise invalid(field, "must be an id")
    if len(value) > MAX_ID or not (value.isascii() and value.isprintable()):
        raise invalid(field, f"{value[:40]!r} is not an id")
    return value


def not_the_root(value: str | None) -> str | None:
    if value is not None and PurePosixPath(value) == PurePosixPath(value).parent:
        raise ValueError("must be a folder of its own, not the filesystem root")
    return value


# --- the bases ------------------------------------------------------------------------------------


class WireModel(BaseModel):
    """Request bodies: strict JSON types (`"steps": true` or `"5"` is refused, not coerced)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=False, extra="forbid", frozen=True, strict=True
    )


class QueryParams(WireModel):
    """Parameters that may come from a URL query string, where every value is text."""

    model_config = ConfigDict(strict=False)


class ViewModel(BaseModel):
    """Responses: built in Python by field name, sent in camelCase."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class FullView(ViewModel):
    """A response always sent whole (`dump`): every key is there, null or not, so the spec marks
    each one required (generated clients need not test for absent keys)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class OpenView(ViewModel):
    """A record that may carry keys written by another program or an older plasmad."""

    model_config = ConfigDict(extra="allow")


# --- from the wire, to the wire ---------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: Any) -> M:
    """Parse a request body; the first problem becomes a 400 naming the field."""
    if not isinstance(data, dict):
        raise invalid("body", "must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _to_plasma_error(exc) from None


def _to_plasma_error(exc: ValidationError) -> PlasmaError:
    problems = exc.errors(include_url=False, include_input=False)
    first = problems[0]
    loc = ".".join(str(p) for p in first["loc"]) or "body"
    message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
    message = message.removeprefix("Value error, ")  # our own validators' words, as they are
    details = [{"field": ".".join(str(p) for p in p["loc"]), "message": p["msg"]} for p in problems]
    return invalid(loc, message, details if len(details) > 1 else None)


def dump(model: BaseModel) -> dict[str, Any]:
    """A model as the wire carries it (camelCase, JSON types)."""
    return model.model_dump(mode="json", by_alias=True)


V = TypeVar("V", bound=BaseModel)


def checked(model: type[V], data: Any) -> Any:
    """`data` (an answer, camelCase) validated against `model`, as JSON with the keys it had."""
    return model.model_validate(data).model_dump(mode="json", by_alias=True, exclude_unset=True)
