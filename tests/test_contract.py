"""The contract: `GET /openapi.json` is valid OpenAPI 3.1, written from the models the daemon uses,
and lists exactly what is served (HTTP routes and JSON-RPC methods); its examples are valid, and
the daemon's answers match it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate
from pydantic import BaseModel
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from plasmad.api import http, openapi
from plasmad.api.contract import EVENT_STREAM
from plasmad.api.methods import methods
from plasmad.core.wire import ErrorBody, GenerateRequest, HealthView, JobView, PlasmaEvent
from plasmad.daemon import Daemon
from tests.support.app import Api, make_config, rpc

METHODS = ("get", "post", "put", "patch", "delete")


def spec() -> dict[str, Any]:
    return openapi.build(http.routes(), methods())


def served(app: Any) -> set[tuple[str, str]]:
    """(METHOD, path) of every route aiohttp serves (HEAD comes with each GET)."""
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def listed(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in METHODS}


def check(doc: dict[str, Any], schema: dict[str, Any], value: Any) -> None:
    def rebase(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (f"urn:spec{v}" if k == "$ref" else rebase(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [rebase(v) for v in node]
        return node

    registry: Registry[Any] = Registry().with_resource("urn:spec", Resource(rebase(doc), DRAFT202012))
    jsonschema.Draft202012Validator(rebase(schema), registry=registry).validate(value)


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = spec()
    validate(doc)
    assert doc["openapi"] == "3.1.0"


def test_every_served_route_is_in_the_spec_and_nothing_else(tmp_path: Path) -> None:
    """The daemon's own app (its routes as it serves them) against the document, both ways: a route
    added without a declaration (models and all) fails here, and so does a declared one not served."""
    app = Daemon(make_config(tmp_path)).create_app()
    doc = spec()
    assert served(app) == listed(doc), (
        f"served, not in the spec: {sorted(served(app) - listed(doc))}; "
        f"in the spec, not served: {sorted(listed(doc) - served(app))}"
    )


def test_every_operation_has_its_schemas() -> None:
    doc = spec()
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            codes = [int(c) for c in op["responses"]]
            ok = [c for c in codes if c < 400]
            assert ok, f"{where}: no success answer"
            for code in ok:
                (media, content), *_ = op["responses"][str(code)]["content"].items()
                schema = content.get("x-event-data") if media == EVENT_STREAM else content["schema"]
                if media != "application/json" and media != EVENT_STREAM:  # a file: an image, the board
                    assert schema == {"type": "string", "contentMediaType": media}, where
                    continue
                assert "$ref" in schema, f"{where}: its answer has no model"
            assert {403, 500} <= set(codes), f"{where}: the guard's and a bug's errors are not listed"
            for code in (c for c in codes if c >= 400):
                name = op["responses"][str(code)]["$ref"].rsplit("/", 1)[1]
                answer = doc["components"]["responses"][name]
                assert answer["content"]["application/json"]["schema"] == error_ref
            if method == "post" and "requestBody" in op:
                assert "$ref" in op["requestBody"]["content"]["application/json"]["schema"]
                assert {400, 413, 415} <= set(codes)


def test_the_json_rpc_methods_are_listed_with_the_same_schemas() -> None:
    doc = spec()
    listed_methods = doc["x-jsonrpc-methods"]
    from tests.support.app import build_methods  # the dispatch table, as the socket serves it

    dispatched = set(build_methods({"shutdown": lambda s, p: None}))  # type: ignore[arg-type, return-value]
    assert set(listed_methods) == dispatched
    submit = listed_methods["submit"]
    assert submit["params"] == {"$ref": "#/components/schemas/GenerateRequest"}
    assert submit["http"] == "POST /jobs"
    assert doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"] == (
        submit["params"]
    )
    for name, entry in listed_methods.items():
        assert "$ref" in entry["result"], name


def test_every_example_is_valid_against_its_schema() -> None:
    doc = spec()
    schemas = doc["components"]["schemas"]
    seen = 0
    for name, schema in schemas.items():
        for example in schema.get("examples", []):
            check(doc, {"$ref": f"#/components/schemas/{name}"}, example)
            seen += 1
    assert seen >= 6
    # And through the models themselves, as the daemon parses and answers.
    GenerateRequest.model_validate(schemas["GenerateRequest"]["examples"][0])
    JobView.model_validate(schemas["JobView"]["examples"][0])
    HealthView.model_validate(schemas["HealthView"]["examples"][0])
    ErrorBody.model_validate(schemas["ErrorBody"]["examples"][0])


def test_the_error_body_lists_every_stable_code() -> None:
    from plasmad.core.errors import ErrorCode

    detail = spec()["components"]["schemas"]["ErrorDetail"]["properties"]
    codes = spec()["components"]["schemas"]["ErrorCode"]["enum"]
    assert sorted(codes) == sorted(int(c) for c in ErrorCode)
    assert sorted(detail["name"]["enum"]) == sorted(c.label for c in ErrorCode)


async def test_the_spec_is_served_and_answers_match_it(api: Api) -> None:
    resp = await api.client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc == spec()

    def answer_schema(method: str, path: str, status: int) -> dict[str, Any]:
        answer = doc["paths"][path][method]["responses"][str(status)]
        if "$ref" in answer:
            answer = doc["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
        return dict(answer["content"]["application/json"]["schema"])

    job_id = await api.submit(seed=3)
    job = await api.wait_job(job_id)
    check(doc, answer_schema("get", "/jobs/{id}", 200), job)
    for path in ("/health", "/jobs", "/doctor", "/bench", "/logs", "/loras"):
        resp = await api.client.get(path)
        assert resp.status == 200, (path, await resp.text())
        check(doc, answer_schema("get", path, 200), await resp.json())
    resp = await api.client.get(f"/jobs/{job_id}/workflow")
    check(doc, answer_schema("get", "/jobs/{id}/workflow", 200), await resp.json())
    resp = await api.post("/jobs", {"prompt": "x", "resolution": {"width": 1024, "height": 768}})
    assert resp.status == 400
    check(doc, answer_schema("post", "/jobs", 400), await resp.json())
    # The socket API answers with the same models.
    answer = await rpc(api.stack.service, "status", {"id": job_id})
    check(doc, doc["x-jsonrpc-methods"]["status"]["result"], answer["result"])


@pytest.mark.parametrize("event", [
    {"id": "ab12cd-1", "type": "job.queued", "at": "2026-01-01T00:00:00.000Z", "job": "j_1",
     "kind": "generate"},
    {"id": "ab12cd-2", "type": "training.checkpoint", "at": "2026-01-01T00:00:00.000Z", "training": "t_1",
     "step": 200, "file": "x-step00000200.safetensors", "path": "/x/x-step00000200.safetensors"},
])  # fmt: skip
def test_event_models_take_the_events_as_sent(event: dict[str, Any]) -> None:
    parsed = PlasmaEvent.model_validate(event)
    assert parsed.model_dump(mode="json", by_alias=True, exclude_unset=True) == event


def test_models_of_the_contract_are_pydantic_models() -> None:
    for route in http.routes():
        for model in (route.response, route.body, route.query):
            assert model is None or issubclass(model, BaseModel), route.path
