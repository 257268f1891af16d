"""`GET /openapi.json`: the OpenAPI 3.1 document, written from the declared routes and methods.

Nothing here is kept by hand: the paths come from `http.routes()`, the JSON-RPC methods from
`rpc.methods()`, and every schema from the pydantic models the daemon parses requests and builds
answers with (`model_json_schema` writes JSON Schema 2020-12, which OpenAPI 3.1 takes as it is).
The JSON-RPC methods are listed under `x-jsonrpc-methods`, with the same schemas; the events of
`GET /events` are the `PlasmaEvent` schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from plasmad import __version__
from plasmad.api.contract import EVENT_STREAM, JSON, Route, RpcMethod
from plasmad.core.errors import ErrorCode
from plasmad.core.wire import ErrorBody, PlasmaEvent

REF = "#/components/schemas/{model}"
Mode = Literal["validation", "serialization"]

_DESCRIPTION = """\
plasmad fronts a local ComfyUI (SD 1.5, one character LoRA, ControlNet OpenPose) and kohya_ss LoRA
training for the Plasma manga pipeline. JSON in, JSON out, on 127.0.0.1 only: requests must carry
a loopback `Host`, no foreign `Origin`, and bodies must be `application/json`.

Every error is `{"error": {"code", "name", "message", "field"?, "details"?}}` with a stable `code`
that the JSON-RPC API (the Unix socket plasmactl uses; `x-jsonrpc-methods`) shares.
Live events: `GET /events` (Server-Sent Events), each event's data a `PlasmaEvent`.
"""

_STATUS_TEXT = {
    200: "OK",
    202: "Accepted: queued",
    400: "Bad input: `error.field` names the field",
    403: "Refused: not from this machine's loopback (Host or Origin)",
    404: "Not found",
    409: "Conflict with the current state",
    413: "The body is too large",
    415: "The body is not application/json",
    500: "Internal error, or a job that ended without its result",
    502: "ComfyUI refused the graph",
    503: "A setting, ComfyUI or the daemon is not available",
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class _Schemas:
    """Every model's schema in one `components.schemas`, each referred to by name."""

    def __init__(self, wanted: list[tuple[type[BaseModel], Mode]]) -> None:
        unique = list(dict.fromkeys(wanted))
        refs, top = models_json_schema(unique, ref_template=REF, by_alias=True)
        self.components: dict[str, Any] = top.get("$defs", {})
        self._refs = refs

    def ref(self, model: type[BaseModel], mode: Mode) -> dict[str, Any]:
        return dict(self._refs[(model, mode)])

    def of(self, model: type[BaseModel], mode: Mode) -> dict[str, Any]:
        name = str(self._refs[(model, mode)]["$ref"]).rsplit("/", 1)[1]
        return dict(self.components[name])

    def example(self, model: type[BaseModel], mode: Mode) -> Any:
        examples = self.of(model, mode).get("examples")
        return examples[0] if examples else None


def _wanted(routes: Sequence[Route], methods: Sequence[RpcMethod]) -> list[tuple[type[BaseModel], Mode]]:
    wanted: list[tuple[type[BaseModel], Mode]] = [
        (ErrorBody, "serialization"),
        (PlasmaEvent, "serialization"),
    ]
    for r in routes:
        wanted += [(m, "validation") for m in (r.body, r.query) if m is not None]
        if r.response is not None:
            wanted.append((r.response, "serialization"))
    for m in methods:
        if m.params is not None:
            wanted.append((m.params, "validation"))
        wanted.append((m.result, "serialization"))
    return wanted


def _error_response(status: int, schemas: _Schemas) -> dict[str, Any]:
    codes = [c for c in ErrorCode if c.http_status == status]
    names = ", ".join(f"`{c.value}` {c.label}" for c in codes)
    text = _STATUS_TEXT.get(status, "Error")
    first = codes[0] if codes else ErrorCode.INVALID_INPUT
    return {
        "description": f"{text} ({names})" if names else text,
        "content": {
            JSON: {
                "schema": schemas.ref(ErrorBody, "serialization"),
                "example": {"error": {"code": int(first), "name": first.label, "message": text}},
            }
        },
    }


def _error_name(status: int) -> str:
    return f"Error{status}"


def _parameters(route: Route, schemas: _Schemas) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in route.path_params
    ]
    if route.query is not None:
        schema = schemas.of(route.query, "validation")
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            param = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if "description" in prop:
                param["description"] = prop["description"]
            params.append(param)
    params += [
        {"name": h.name, "in": "header", "description": h.description, "schema": {"type": "string"}}
        for h in route.headers
    ]
    return params


def _success(route: Route, schemas: _Schemas) -> dict[str, Any]:
    if route.response is None:  # a file (an image, the board's page): its bytes as they are
        content: dict[str, Any] = {"schema": {"type": "string", "contentMediaType": route.media_type}}
    elif route.media_type == EVENT_STREAM:
        content = {
            "schema": {"type": "string", "description": "Server-Sent Events: `event: <type>`, `id`, `data`"},
            "x-event-data": schemas.ref(route.response, "serialization"),
        }
    else:
        content = {"schema": schemas.ref(route.response, "serialization")}
        if (example := schemas.example(route.response, "serialization")) is not None:
            content["example"] = example
    answer = {"description": _STATUS_TEXT.get(route.status, "OK"), "content": {route.media_type: content}}
    return {str(s): answer for s in (route.status, *route.also)}


def _operation(route: Route, schemas: _Schemas) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": _camel(route.handler.__name__),
        "summary": route.summary,
        "tags": [route.tag],
    }
    if route.description:
        op["description"] = route.description
    if params := _parameters(route, schemas):
        op["parameters"] = params
    if route.body is not None:
        body: dict[str, Any] = {"schema": schemas.ref(route.body, "validation")}
        if (example := schemas.example(route.body, "validation")) is not None:
            body["example"] = example
        needed = bool(schemas.of(route.body, "validation").get("required"))
        op["requestBody"] = {"required": needed, "content": {JSON: body}}
    op["responses"] = {
        **_success(route, schemas),
        **{str(s): {"$ref": f"#/components/responses/{_error_name(s)}"} for s in route.error_statuses()},
    }
    if route.rpc:
        op["x-jsonrpc-method"] = route.rpc
    return op


def _rpc_methods(
    routes: Sequence[Route], methods: Sequence[RpcMethod], schemas: _Schemas
) -> dict[str, Any]:
    http = {r.rpc: f"{r.method} {r.path}" for r in routes if r.rpc}
    listed: dict[str, Any] = {}
    for m in methods:
        entry: dict[str, Any] = {
            "summary": m.summary,
            "params": schemas.ref(m.params, "validation") if m.params else {"type": "object"},
            "result": schemas.ref(m.result, "serialization"),
            "errors": {"code": "error.code is ErrorBody's error.code", "data": "ErrorBody's error"},
        }
        if m.name in http:
            entry["http"] = http[m.name]
        listed[m.name] = entry
    return listed


def build(routes: Sequence[Route], methods: Sequence[RpcMethod]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of these routes and JSON-RPC methods."""
    schemas = _Schemas(_wanted(routes, methods))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schemas)
    statuses = sorted({s for route in routes for s in route.error_statuses()})
    return {
        "openapi": "3.1.0",
        "info": {"title": "plasmad", "version": __version__, "description": _DESCRIPTION},
        "servers": [{"url": "http://127.0.0.1:3000"}],
        "tags": [{"name": t} for t in dict.fromkeys(r.tag for r in routes)],
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "responses": {_error_name(s): _error_response(s, schemas) for s in statuses},
        },
        "x-jsonrpc-methods": _rpc_methods(routes, methods, schemas),
        "x-jsonrpc": {
            "transport": "a Unix socket (PLASMA_SOCKET), one JSON-RPC 2.0 request per line",
            "errors": "error.code is the stable code of ErrorBody; error.data the whole error object",
        },
    }
