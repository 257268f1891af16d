"""Odd input is a 400 naming the field, never a 500 (issue 10, item 6): hypothesis throws generated
bodies, query strings and ids at every POST route (and the GETs that take parameters) of the real
app, in-process over the FAKE ComfyUI, and at the same operations over JSON-RPC.

The values are what the first fuzzing found to break things, and their neighbours: integers far
out of range (a chapter of 10**300), long names (300-char model names, a 4 KB path), NUL bytes
and lone surrogates in strings and paths, `/` as a dataset, NaN and infinities, wrong types,
unknown fields, nesting. PLASMA_FUZZ_EXAMPLES sets how many bodies a route gets (default 60).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from yarl import URL

from plasmad.api.http import create_app
from plasmad.core import wire
from tests.support.app import rpc
from tests.support.cli import DaemonThread

EXAMPLES = int(os.environ.get("PLASMA_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the repository
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

ODD_TEXT = [
    "", " ", "/", "//", ".", "..", "../../etc/passwd", "\x00", "a\x00b", "\ud800", "x\udfffy", "a" * 300,
    "/" + "d" * 4096, "/tmp", "/root", "~", "C:\\x", "%s%n", "\u202e", "ch01_p001_v1", "sd15.safetensors",
    "spyke_sd15.safetensors", "a.ckpt", "euler", "normal", "-1", "1e400", "null",
]  # fmt: skip
ODD_INTS = [0, -1, 1, 7, 64, 512, 768, 999, 1000, 2**31, 2**53 + 1, 2**63, 2**64, 10**300, -(10**300)]

texts = st.one_of(
    st.sampled_from(ODD_TEXT),
    st.text(alphabet=st.characters(exclude_categories=[]), max_size=12),
)
ints = st.one_of(st.sampled_from(ODD_INTS), st.integers())
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e308, 0.4]))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
anything = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=6,
)
values = st.one_of(scalars, anything, st.fixed_dictionaries({}, optional={"width": ints, "height": ints}))


def body_for(
    model: type[BaseModel] | None, extra: tuple[str, ...] = (), base: dict[str, Any] | None = None
) -> st.SearchStrategy[Any]:
    """Bodies shaped like `model`'s: a valid `base` with one or two fields made odd (so the odd
    value gets past the required fields to the code that uses it), any subset of its fields with
    odd values, and anything at all."""
    if model is None:
        return anything
    names = [f.alias or name for name, f in model.model_fields.items()]
    names += ["batch_size", *extra]
    shaped = st.fixed_dictionaries({}, optional={n: values for n in names})
    odd = st.dictionaries(st.sampled_from(names), values, min_size=1, max_size=2)
    mutated = odd.map(lambda changes: {**(base or {}), **changes})
    return st.one_of(mutated, mutated, mutated, shaped, anything)


#: Valid bodies the odd values are put into (DATASET: a folder the fixture creates).
DATASET = "/tmp/plasma-fuzz-dataset"
BASES: dict[str, dict[str, Any]] = {
    "generate": {"prompt": "spyke", "resolution": {"width": 64, "height": 64}},
    "page": {"chapter": 1, "page": 1, "resolution": {"width": 64, "height": 64}},
    "pose": {"prompt": "spyke", "poseImagePath": "/nonexistent/pose.png"},
    "reg": {"datasetDir": DATASET, "count": 1, "allowSmall": True, "width": 64, "height": 64},
    "train": {"datasetDir": DATASET, "outputName": "fuzz"},
}
#: POST routes: (path, body model, more field names, valid base); {id} and {name} get odd ids.
POSTS: list[tuple[str, type[BaseModel] | None, tuple[str, ...], dict[str, Any]]] = [
    ("/jobs", wire.GenerateRequest, (), BASES["generate"]),
    ("/jobs", wire.GenerateRequest, (), BASES["pose"]),
    ("/pages", wire.GenerateRequest, (), BASES["page"]),
    ("/jobs/{id}/cancel", None, (), {}),
    ("/jobs/{id}/retry", None, (), {}),
    ("/images/{name}/approve", wire.ApproveParams, (), {"approved": True}),
    ("/datasets/reg", wire.DatasetRegRequest, (), BASES["reg"]),
    ("/loras/train", wire.TrainRequest, (), BASES["train"]),
    ("/loras/{id}/cancel", None, (), {}),
    ("/loras/{id}/samples", wire.TrainSamplesRequest, (), {}),
    ("/loras/{id}/promote", wire.PromoteRequest, (), {}),
    ("/bench", wire.BenchRequest, (), {"resolution": {"width": 64, "height": 64}, "steps": 1}),
]
GETS = [
    "/jobs", "/jobs/{id}", "/jobs/{id}/workflow", "/jobs/{id}/log", "/logs", "/bench", "/loras/{id}/status",
]  # fmt: skip
QUERY_NAMES = ["status", "kind", "limit", "wait", "step", "job", "lines", "offset", "id"]
# Path segments, percent-encoded as a client may send them: NUL, a lone surrogate's UTF-8-ish
# bytes, invalid UTF-8, a slash, a very long id.
IDS = ["j_000000000000", "t_000000000000", "%00", "%ED%A0%80", "%FF%FE", "..", "%2F", "a" * 300,
       "ch01_p001_v1", "ch99_p999_v99999999999999999999"]  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonThread, TestClient[Any, Any]]]:
    daemon = DaemonThread(tmp_path_factory.mktemp("fuzz")).start()
    prompts = daemon.pipeline / "prompts" / "ch-01"
    prompts.mkdir(parents=True, exist_ok=True)
    (prompts / "p001.txt").write_text("spyke_plasma_v1, standing\nnegative: blurry\n")
    Path(DATASET).mkdir(exist_ok=True)

    async def start() -> TestClient[Any, Any]:  # on the daemon's loop, where it serves
        server = TestServer(create_app(daemon.stack.service), host="127.0.0.1")
        client: TestClient[Any, Any] = TestClient(server)
        await client.start_server()
        return client

    client = daemon.call(start())
    yield daemon, client
    daemon.call(client.close())
    daemon.stop()
    shutil.rmtree(DATASET, ignore_errors=True)


def check(status: int, text: str, what: str) -> None:
    """No 500, a JSON error body with a code and a message, and a 400 names its field."""
    assert status != 500, f"{what} -> {status}: {text}"
    if status >= 400:
        try:
            error = json.loads(text)["error"]
        except ValueError:
            raise AssertionError(f"{what} -> {status}, not JSON: {text!r:.300}") from None
        assert isinstance(error["code"], int) and error["message"], (what, error)
        if status == 400:
            assert error.get("field"), (what, error)


def request(served: tuple[DaemonThread, TestClient[Any, Any]], method: str, path: str, body: Any) -> None:
    daemon, client = served

    async def send() -> tuple[int, str]:
        kwargs: dict[str, Any] = {"headers": {"Content-Type": "application/json"}}
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()  # \ud800 goes as an escape: valid JSON text
        resp = await client.request(method, URL(path, encoded=True), **kwargs)
        return resp.status, await resp.text()

    status, text = daemon.call(send(), timeout=30)
    check(status, text, f"{method} {path} {body!r:.300}")


@pytest.mark.parametrize(("path", "model", "extra", "base"), POSTS, ids=[p for p, *_ in POSTS])
def test_post_routes_answer_odd_bodies_with_a_400_never_a_500(
    served: tuple[DaemonThread, TestClient[Any, Any]], path: str, model: type[BaseModel] | None,
    extra: tuple[str, ...], base: dict[str, Any],
) -> None:  # fmt: skip
    @FUZZ
    @given(body=body_for(model, extra, base), ident=st.sampled_from(IDS))
    def fuzz(body: Any, ident: str) -> None:
        request(served, "POST", path.replace("{id}", ident).replace("{name}", ident), body)

    fuzz()


@pytest.mark.parametrize("path", GETS)
def test_get_routes_answer_odd_queries_with_a_400_never_a_500(
    served: tuple[DaemonThread, TestClient[Any, Any]], path: str
) -> None:
    from urllib.parse import quote

    @FUZZ
    @given(
        # Under aiohttp's 8 KB request line: past it, its HTTP parser answers (400, plain text).
        query=st.dictionaries(
            st.sampled_from(QUERY_NAMES), st.one_of(texts.filter(lambda t: len(t) < 1000), ints.map(str)),
            max_size=3,
        ),
        ident=st.sampled_from(IDS),
    )
    def fuzz(query: dict[str, str], ident: str) -> None:
        encoded = "&".join(
            f"{k}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in query.items()
        )
        full = path.replace("{id}", ident) + (f"?{encoded}" if encoded else "")
        request(served, "GET", full, None)

    fuzz()


#: JSON-RPC methods and the bodies they take (the HTTP routes' bodies).
METHODS: list[tuple[str, type[BaseModel] | None, tuple[str, ...], dict[str, Any]]] = [
    ("submit", wire.GenerateRequest, (), BASES["generate"]),
    ("generate_page", wire.GenerateRequest, (), BASES["page"]),
    ("status", None, ("id", "wait", "step"), {}),
    ("jobs", wire.ListJobsParams, (), {}),
    ("cancel", None, ("id",), {}),
    ("retry", None, ("id",), {}),
    ("workflow", None, ("id",), {}),
    ("approve", wire.ApproveParams, (), {"image": "ch01_p001_v1"}),
    ("dataset_reg", wire.DatasetRegRequest, (), BASES["reg"]),
    ("train", wire.TrainRequest, (), BASES["train"]),
    ("train_status", None, ("id",), {}),
    ("lora_samples", wire.TrainSamplesRequest, ("id",), {"id": "t_000000000000"}),
    ("lora_promote", wire.PromoteRequest, ("id",), {"id": "t_000000000000"}),
    ("bench", wire.BenchRequest, (), {}),
    ("bench_results", wire.BenchResultsParams, (), {}),
    ("logs", wire.LogsParams, (), {}),
]


@pytest.mark.parametrize(("method", "model", "extra", "base"), METHODS, ids=[m for m, *_ in METHODS])
def test_rpc_methods_answer_odd_params_with_an_invalid_input_error(
    served: tuple[DaemonThread, TestClient[Any, Any]], method: str, model: type[BaseModel] | None,
    extra: tuple[str, ...], base: dict[str, Any],
) -> None:  # fmt: skip
    daemon, _ = served
    shaped = st.fixed_dictionaries({}, optional={n: values for n in extra}) if model is None else None

    @FUZZ
    @given(params=shaped if shaped is not None else body_for(model, extra, base))
    def fuzz(params: Any) -> None:
        if not isinstance(params, dict):
            params = {"value": params}
        answer = daemon.call(rpc(daemon.stack.service, method, params), timeout=30)
        error = answer.get("error")
        if error is not None:
            assert error["code"] != 1099, (method, params, error)  # INTERNAL: a bug
            if error["code"] == 1001:
                assert error["data"].get("field"), (method, params, error)

    fuzz()


def test_the_values_the_first_fuzzing_found_are_refused_by_name(
    served: tuple[DaemonThread, TestClient[Any, Any]], tmp_path: Path
) -> None:
    """The exact requests that got a 500 before, each a 400 naming its field now."""
    daemon, client = served
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/pages", {"chapter": 10**300, "page": 1}, "chapter"),
        ("/pages", {"chapter": 1, "page": 2**64}, "page"),
        ("/jobs", {"prompt": "x", "checkpoint": "m" * 300 + ".safetensors"}, "checkpoint"),
        ("/jobs", {"prompt": "x", "loraId": "l" * 300 + ".safetensors"}, "loraId"),
        ("/jobs", {"prompt": "x\ud800"}, "prompt"),
        ("/jobs", {"prompt": "x", "negativePrompt": "a\x00b"}, "negativePrompt"),
        ("/jobs", {"prompt": "x", "poseImagePath": "/tmp/a\x00.png"}, "poseImagePath"),
        ("/jobs", {"prompt": "x", "poseImagePath": "/tmp/\udc80.png"}, "poseImagePath"),
        ("/datasets/reg", {"datasetDir": "/"}, "datasetDir"),
        ("/datasets/reg", {"datasetDir": "/" + "d" * 4096}, "datasetDir"),
        ("/datasets/reg", {"datasetDir": "/tmp/\x00"}, "datasetDir"),
        ("/loras/train", {"datasetDir": "/", "outputName": "x"}, "datasetDir"),
        ("/loras/train", {"datasetDir": "/" + "d" * 4096, "outputName": "x"}, "datasetDir"),
        ("/loras/train", {"datasetDir": str(tmp_path), "outputName": "x\ud800"}, "outputName"),
    ]
    wrong = []
    for path, body, field in cases:

        async def send(path: str = path, body: dict[str, Any] = body) -> tuple[int, dict[str, Any]]:
            headers = {"Content-Type": "application/json"}
            resp = await client.post(path, data=json.dumps(body), headers=headers)
            return resp.status, await resp.json()

        status, answer = daemon.call(send())
        if status != 400 or answer["error"].get("field") != field:
            wrong.append((path, f"{body!r:.80}", status, answer["error"]))
    assert wrong == [], "\n".join(map(repr, wrong))
