"""Fuzzing the API from its own contract, seeded and bounded (CI runs it; about a minute here).

HTTP: schemathesis generates requests for every operation of `GET /openapi.json` (valid and
invalid ones), sends them to a live daemon (the real app, store and queue over the FAKE ComfyUI,
its worker not started: the API is what is fuzzed, and nothing generated is ever run), and checks
each answer: no server error, a status, content type and body the spec lists for it.
JSON-RPC: the same schemas generate each method's params, sent over the real Unix socket; no
answer may be an internal error, and every result must match the method's result schema.
"""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from plasmad.api import http, openapi
from plasmad.api.methods import methods
from plasmad.core.errors import ErrorCode
from tests.support.cli import DaemonThread
from tests.test_contract import check

DOC = openapi.build(http.routes(), methods())
EXAMPLES = 12  #: per operation; with both modes about 500 HTTP requests in all
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
DOC_OPERATIONS = [(m, p) for p, item in DOC["paths"].items() for m in item]
SEEDED = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same cases every run: a failure here is reproducible
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failing case is reported as found
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonThread]:
    daemon = DaemonThread(tmp_path_factory.mktemp("fuzz"), http=True, start_worker=False).start()
    yield daemon
    daemon.stop()


@functools.cache
def load(document: str) -> Any:
    """A schemathesis schema, loaded when a test needs it (seconds: not at every collection)."""
    return schemathesis.openapi.from_dict(json.loads(document))


CALLS: list[str] = []


def fuzzed() -> list[tuple[str, str, schemathesis.GenerationMode]]:
    """Every operation but the stream with valid input, and with invalid input those that take
    any (a body or a query: a path id of any text is valid)."""
    cases = []
    for method, path in DOC_OPERATIONS:
        if path == "/events":
            continue
        cases.append((method, path, schemathesis.GenerationMode.POSITIVE))
        op = DOC["paths"][path][method]
        if "requestBody" in op or any(p["in"] == "query" for p in op.get("parameters", [])):
            cases.append((method, path, schemathesis.GenerationMode.NEGATIVE))
    return cases


@pytest.mark.parametrize(("method", "path", "mode"), fuzzed(), ids=lambda v: getattr(v, "value", v))
def test_http_operation(
    method: str, path: str, mode: schemathesis.GenerationMode, live: DaemonThread
) -> None:
    operation = load(json.dumps(DOC))[path][method.upper()]

    @given(case=operation.as_strategy(mode))
    @SEEDED
    def answers(case: schemathesis.Case) -> None:
        CALLS.append(f"{case.method} {case.path}")
        response = case.call(base_url=live.url, timeout=30)
        case.validate_response(response, checks=CHECKS)

    answers()


def test_the_http_run_was_a_few_hundred_cases() -> None:
    """Bounded and not empty: the run above is what CI relies on."""
    if not CALLS:
        pytest.skip("test_http_operation was not selected")
    assert len(set(CALLS)) == len(DOC_OPERATIONS) - 1  # every operation but /events
    assert 200 <= len(CALLS) <= 1500, len(CALLS)


def test_the_event_stream_takes_any_last_event_id(live: DaemonThread) -> None:
    """`GET /events` never ends by itself, so it is fuzzed apart: any Last-Event-ID (the spec's
    header parameter) opens the stream; the connection is closed once its headers are in."""
    operation = load(json.dumps(DOC))["/events"]["GET"]

    @given(case=operation.as_strategy())
    @SEEDED
    def opens(case: schemathesis.Case) -> None:
        headers = {k: v for k, v in (case.headers or {}).items() if isinstance(v, str)}
        with requests.get(f"{live.url}/events", headers=headers, stream=True, timeout=10) as resp:
            assert resp.status_code == 200, resp.text
            assert resp.headers["Content-Type"].startswith("text/event-stream")

    opens()


# --- JSON-RPC ------------------------------------------------------------------------------------------


def rpc_document() -> dict[str, Any]:
    """Each JSON-RPC method as a POST operation whose body is its params schema (the same
    component), so that schemathesis generates params exactly as it generates HTTP bodies."""
    paths = {}
    for name, method in DOC["x-jsonrpc-methods"].items():
        if name == "shutdown":
            continue  # it would stop the daemon under test; its params are none
        body = {"required": True, "content": {"application/json": {"schema": method["params"]}}}
        paths[f"/{name}"] = {"post": {"requestBody": body, "responses": {"200": {"description": "ok"}}}}
    return {**DOC, "paths": paths}




def call(sock_path: Path, method: str, params: Any) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(sock_path))
        request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, "the daemon closed the socket without answering"
            data += chunk
    return dict(json.loads(data))


@pytest.mark.parametrize("name", sorted(path[1:] for path in rpc_document()["paths"]))
def test_json_rpc_method(name: str, live: DaemonThread) -> None:
    result_schema = DOC["x-jsonrpc-methods"][name]["result"]
    operation = load(json.dumps(rpc_document()))[f"/{name}"]["POST"]
    strategy = st.one_of(
        operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
        operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )

    @given(case=strategy)
    @SEEDED
    def answers(case: schemathesis.Case) -> None:
        params = case.body if isinstance(case.body, dict) else {}
        answer = call(live.socket, name, params)
        if "error" in answer:
            error = answer["error"]
            assert error["code"] not in (int(ErrorCode.INTERNAL), -32603), (name, params, error)
            if error["code"] >= 1000:  # ours: the same error object as the HTTP body
                check(DOC, {"$ref": "#/components/schemas/ErrorDetail"}, error["data"])
        else:
            check(DOC, result_schema, answer["result"])

    answers()
