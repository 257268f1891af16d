"""The HTTP API (and its JSON-RPC twin) in-process, end to end, against a FAKE ComfyUI.

The app is the real one (`create_app`) over a real Service, SQLite store, queue, GPU lock,
generation handler and the repository's templates (tests/support/app.py); only ComfyUI is the
scripted FakeComfyUI and the models are FAKE safetensors headers (tests/support/modelfiles.py).
Every bad input must come back as a 4xx with a JSON body naming the field, never a 500, and both
APIs must say the same thing. The `open_api` and `api` fixtures are tests/conftest.py's.
"""

from __future__ import annotations

import io
import json
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import pytest

from plasmad.core.errors import ErrorCode
from plasmad.generation import fingerprints, pipeline_files
from tests.fakes.fake_comfyui import PNG
from tests.support.app import Api, OpenApi, eventually, expect_error, rpc
from tests.support.modelfiles import (
    CHECKPOINT_CKPT,
    CHECKPOINT_JUNK,
    CHECKPOINT_SD2,
    CHECKPOINT_SD15,
    CHECKPOINT_SDXL,
    LORA_SD15,
    LORA_SDXL,
)
from tests.support.processes import free_port

with warnings.catch_warnings():
    # jsonrpcserver 5 reads its schema through importlib.resources' deprecated open_text when
    # imported, and warnings are errors here (the pyproject filter names the wrong module).
    warnings.simplefilter("ignore", DeprecationWarning)
    from jsonrpcserver import async_dispatch

    from plasmad.api.rpc import build_methods

#: What the generation log entry of a page must hold (PIPE-04), beside the image and workflow names.
PIPE04_FIELDS = {
    "promptFile", "promptHash", "model", "timestamp", "approved", "generationBackend", "seed", "sampler",
    "scheduler", "steps", "cfg", "loraId", "loraStrength", "controlnetStrength", "workflowTemplate",
    "width", "height", "imageFile", "workflowFile", "version", "jobId",
}


# --- jobs: the happy path -----------------------------------------------------------------------------


async def test_submit_then_poll_until_succeeded(api: Api) -> None:
    job_id = await api.submit(seed=7)
    job = await api.wait_job(job_id)
    assert job["status"] == "succeeded", job
    image = api.cfg.state_dir / "images" / f"{job_id}.png"
    # ComfyUI's bytes, plus the fingerprints' text chunk (issue 12; tests/test_reproduce.py).
    assert job["outputs"] == [str(image)]
    assert image.read_bytes() == fingerprints.add_to_png(PNG, job["result"]["fingerprints"])
    assert job["seed"] == 7 and job["request"]["checkpoint"] == CHECKPOINT_SD15
    assert job["startedAt"] and job["finishedAt"] and job["progress"] == {"step": 2, "total": 2}
    # The graph ComfyUI got is the one stored, and the one written beside the image.
    sent = api.fake.prompts[0]["prompt"]
    resp = await api.client.get(f"/jobs/{job_id}/workflow")
    assert await resp.json() == sent
    assert json.loads((image.parent / f"{job_id}.workflow.json").read_text()) == sent
    assert "graph" not in (job["result"] or {})  # the big graph stays out of the job view


async def test_long_poll_answers_when_the_job_ends(api: Api) -> None:
    api.fake.scenario = "silent"  # history fills after a delay: the job is still running when asked
    job_id = await api.submit()
    resp = await api.client.get(f"/jobs/{job_id}", params={"wait": "30"})
    assert resp.status == 200
    assert (await resp.json())["status"] == "succeeded"  # not a timeout: woken by the end
    # A finished job answers at once; the same through JSON-RPC.
    answer = await rpc(api.stack.service, "status", {"id": job_id, "wait": 30})
    assert answer["result"]["status"] == "succeeded"
    for bad in ("61", "-1", "soon"):
        await expect_error(await api.client.get(f"/jobs/{job_id}", params={"wait": bad}), 400, "wait")


async def test_job_is_stored_before_the_202(open_api: OpenApi) -> None:
    api = await open_api(start_worker=False)
    resp = await api.post("/jobs", {"prompt": "stored first"})
    assert resp.status == 202
    job_id = (await resp.json())["id"]
    # Another connection, as a restarted daemon would open: the row is committed already.
    with sqlite3.connect(api.cfg.db_path) as db:
        row = db.execute("SELECT status, request FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert row is not None and row[0] == "queued"
    assert json.loads(row[1])["prompt"] == "stored first"


async def test_page_job_writes_the_pipeline_files_and_log(api: Api) -> None:
    first = await api.submit(chapter=1, page=1, seed=42, loraId=LORA_SD15, loraStrength=0.8,
                             negativePrompt="blurry")
    job = await api.wait_job(first)
    assert job["status"] == "succeeded", job
    raw = pipeline_files.raw_dir(api.cfg.pipeline_dir or Path(), 1)
    assert job["outputs"] == [str(raw / "ch01_p001_v1.png")]
    stamped = fingerprints.add_to_png(PNG, job["result"]["fingerprints"])
    assert (raw / "ch01_p001_v1.png").read_bytes() == stamped
    workflow = json.loads((raw / "ch01_p001_v1.workflow.json").read_text())
    assert workflow == api.fake.prompts[0]["prompt"]

    log_path = raw.parent / pipeline_files.LOG_NAME
    [entry] = json.loads(log_path.read_text())
    assert PIPE04_FIELDS <= set(entry), PIPE04_FIELDS - set(entry)
    assert entry["jobId"] == first and entry["version"] == 1 and entry["approved"] is False
    assert entry["imageFile"] == "ch01_p001_v1.png" and entry["workflowFile"] == "ch01_p001_v1.workflow.json"
    assert entry["seed"] == 42 and entry["model"] == CHECKPOINT_SD15
    assert entry["loraId"] == LORA_SD15 and entry["loraStrength"] == 0.8
    assert entry["workflowTemplate"] == "txt2img-lora.json" and entry["generationBackend"] == "comfyui"
    assert (entry["width"], entry["height"]) == (512, 768)
    assert (entry["sampler"], entry["scheduler"], entry["steps"], entry["cfg"]) == (
        "euler_ancestral", "normal", 20, 7.0)
    assert entry["promptHash"] == pipeline_files.prompt_hash("a girl with a plasma sword", "blurry")

    second = await api.submit(chapter=1, page=1)
    job = await api.wait_job(second)
    assert job["outputs"] == [str(raw / "ch01_p001_v2.png")]
    entries = json.loads(log_path.read_text())
    assert [e["version"] for e in entries] == [1, 2] and entries[0] == entry  # v1 untouched
    assert entries[1]["loraId"] is None and entries[1]["workflowTemplate"] == "txt2img-base.json"


async def test_pages_route_reads_the_prompt_file(api: Api) -> None:
    prompt_file = pipeline_files.prompt_file(api.cfg.pipeline_dir or Path(), 2, 3)
    prompt_file.parent.mkdir(parents=True)
    prompt_file.write_text("# page 3\nSpyke leaps\nover the wall\nnegative: text, watermark\n")
    resp = await api.post("/pages", {"chapter": 2, "page": 3, "seed": 5})
    assert resp.status == 202, await resp.text()
    job = await api.wait_job((await resp.json())["id"])
    assert job["status"] == "succeeded"
    assert job["request"]["prompt"] == "Spyke leaps over the wall"
    assert job["request"]["negativePrompt"] == "text, watermark"
    assert job["request"]["promptFile"] == "prompts/ch-02/p003.txt"
    await expect_error(await api.post("/pages", {"chapter": 2, "page": 4}), 404)
    prompt_file.write_bytes("Spyke s\u2019\u00e9lance".encode("cp1252"))  # an editor saving in Windows-1252
    await expect_error(await api.post("/pages", {"chapter": 2, "page": 3}), 400, "promptFile")
    await expect_error(await api.post("/pages", {"chapter": 2, "page": 3, "steps": 5}), 400, "promptFile")
    # The request is checked (PageRequest) before the disk is read.
    await expect_error(await api.post("/pages", {"chapter": 2, "page": 3, "steps": 0}), 400, "steps")
    await expect_error(await api.post("/pages", {"chapter": "2", "page": 3}), 400, "chapter")


async def test_list_jobs_newest_first_and_by_status(open_api: OpenApi) -> None:
    api = await open_api(start_worker=False)
    ids = [await api.submit(seed=i) for i in range(3)]
    await api.post(f"/jobs/{ids[1]}/cancel")
    listed = await (await api.client.get("/jobs")).json()
    assert [j["id"] for j in listed] == ids[::-1]
    queued = await (await api.client.get("/jobs", params={"status": "queued"})).json()
    assert [j["id"] for j in queued] == [ids[2], ids[0]]
    # The later job says what it waits for: the worker, and the one job ahead of it.
    assert queued[0]["waitingFor"] == "the worker; 1 job ahead"
    cancelled = await (await api.client.get("/jobs", params={"status": "cancelled", "limit": "5"})).json()
    assert [j["id"] for j in cancelled] == [ids[1]]
    limited = await (await api.client.get("/jobs", params={"limit": "1"})).json()
    assert [j["id"] for j in limited] == [ids[2]]
    for params, field in (({"status": "bogus"}, "status"), ({"limit": "0"}, "limit"),
                          ({"limit": "x"}, "limit"), ({"colour": "red"}, "colour")):
        await expect_error(await api.client.get("/jobs", params=params), 400, field)


# --- cancel --------------------------------------------------------------------------------------------


async def test_cancel_queued_job_never_reaches_comfyui(open_api: OpenApi) -> None:
    api = await open_api()
    api.fake.scenario = "hang"  # the first job holds the GPU, so the second stays queued
    running = await api.submit()
    await executing_in_comfyui(api)
    queued = await api.submit()
    waiting = await api.job(queued)
    assert waiting["status"] == "queued"
    assert waiting["waitingFor"] == f"the GPU, held by generate job {running}"
    health = await (await api.client.get("/health")).json()
    assert health["gpu"]["heldBy"] == f"generate job {running}" and health["queue"]["running"] == running

    resp = await api.post(f"/jobs/{queued}/cancel")
    assert resp.status == 200
    assert (await resp.json())["status"] == "cancelled"
    await api.post(f"/jobs/{running}/cancel")
    assert (await api.wait_job(running))["status"] == "cancelled"
    # The worker moved on past the cancelled job: exactly one prompt ever reached ComfyUI.
    await eventually(lambda: _idle(api), "the worker to go idle")
    assert len(api.fake.prompts) == 1
    stored = await api.stack.store.get(queued)
    assert stored is not None and stored.prompt_id is None and stored.attempts == 0


async def executing_in_comfyui(api: Api) -> str:
    """The prompt id of the first prompt, once ComfyUI's queue says it is executing.

    Waiting for the job's own `running` is not enough: a cancel that reaches ComfyUI before the
    prompt leaves its queue drops it unrun, and (see the report) nothing then ends the wait.
    """

    async def running() -> str | None:
        if not api.fake.prompts:
            return None
        prompt_id = str(api.fake.prompts[0]["prompt_id"])
        return prompt_id if await api.stack.comfy.in_queue(prompt_id) else None

    return str(await eventually(running, "ComfyUI to execute the prompt"))


async def _idle(api: Api) -> bool:
    return api.stack.queue.current is None and not api.stack.gpu.locked()


async def test_cancel_running_job_interrupts_only_its_prompt(api: Api) -> None:
    api.fake.scenario = "hang"
    job_id = await api.submit()
    prompt_id = await executing_in_comfyui(api)
    stored = await api.stack.store.get(job_id)
    assert stored is not None and stored.prompt_id == prompt_id  # recorded before the POST

    resp = await api.post(f"/jobs/{job_id}/cancel")
    assert resp.status == 200, await resp.text()
    job = await api.wait_job(job_id)
    assert job["status"] == "cancelled" and "interrupted" in job["error"]["message"]
    # Only this prompt: POST /interrupt carried its id (a bare interrupt would stop anyone's prompt).
    assert api.fake.interrupted == [prompt_id] and api.fake.deleted == [prompt_id]


async def test_cancel_finished_is_409_and_unknown_is_404(api: Api) -> None:
    job_id = await api.submit()
    await api.wait_job(job_id)
    err = await expect_error(await api.post(f"/jobs/{job_id}/cancel"), 409)
    assert err["code"] == ErrorCode.CONFLICT and "succeeded" in err["message"]
    for resp in (
        await api.post("/jobs/j_000000000000/cancel"),
        await api.client.get("/jobs/j_000000000000"),
        await api.client.get("/jobs/j_000000000000/workflow"),
        await api.client.get("/no/such/route"),
    ):
        await expect_error(resp, 404)
    err = await expect_error(await api.client.delete("/jobs"), 405)
    assert err["code"] == ErrorCode.NOT_FOUND


async def test_failed_job_keeps_comfyuis_message(api: Api) -> None:
    api.fake.scenario = "error"
    job = await api.wait_job(await api.submit())
    assert job["status"] == "failed"
    assert job["error"]["code"] == ErrorCode.COMFYUI_REJECTED and "boom" in job["error"]["message"]


# --- validation: every refusal is a 400 naming the field ----------------------------------------------

BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"resolution": {"width": 1024}}, "resolution.width"),
    ({"resolution": {"height": 1024}}, "resolution.height"),
    ({"resolution": {"width": 100}}, "resolution.width"),
    ({"resolution": {"width": 32}}, "resolution.width"),
    ({"resolution": {"width": 512, "depth": 3}}, "resolution.depth"),
    ({"batch_size": 2}, "batch_size"),
    ({"batchSize": 2}, "batch_size"),
    ({"bogus": 1}, "bogus"),
    ({"prompt": None}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x" * 8001}, "prompt"),
    ({"steps": "many"}, "steps"),
    ({"steps": 0}, "steps"),
    ({"steps": 151}, "steps"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"cfg": 31}, "cfg"),
    ({"resolution": "512x768"}, "resolution"),
    ({"resolution": {"width": "wide"}}, "resolution.width"),
    ({"loraStrength": 3}, "loraStrength"),
    ({"sampler": "not_a_sampler"}, "sampler"),
    ({"scheduler": "exponential"}, "scheduler"),
    ({"checkpoint": "missing.safetensors"}, "checkpoint"),
    ({"checkpoint": CHECKPOINT_SDXL}, "checkpoint"),
    ({"checkpoint": CHECKPOINT_SD2}, "checkpoint"),
    ({"checkpoint": CHECKPOINT_CKPT}, "checkpoint"),
    ({"checkpoint": CHECKPOINT_JUNK}, "checkpoint"),
    ({"checkpoint": "../x.safetensors"}, "checkpoint"),
    ({"checkpoint": "/etc/passwd"}, "checkpoint"),
    ({"checkpoint": LORA_SD15}, "checkpoint"),
    ({"loraId": LORA_SDXL}, "loraId"),
    ({"loraId": "../checkpoints/" + CHECKPOINT_SD15}, "loraId"),
    ({"loraId": "missing.safetensors"}, "loraId"),
    ({"chapter": 1}, "page"),
    ({"page": 1}, "chapter"),
    ({"chapter": 0, "page": 1}, "chapter"),
    ({"controlnetStrength": 0.5}, "controlnetStrength"),
    ({"denoise": 0.5}, "denoise"),
    ({"initImagePath": "/tmp/x.png"}, "initImagePath"),
]


def _with_prompt(body: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": "a girl with a plasma sword", **body}


@pytest.mark.parametrize(("body", "field"), BAD_REQUESTS, ids=[f for _, f in BAD_REQUESTS])
async def test_bad_request_is_400_naming_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    await expect_error(await api.post("/jobs", _with_prompt(body)), 400, field)
    assert api.fake.prompts == []
    assert await api.stack.store.recent() == []  # nothing was queued


async def test_missing_prompt_and_an_absolute_checkpoint_path(api: Api) -> None:
    await expect_error(await api.post("/jobs", {"steps": 20}), 400, "prompt")
    absolute = str((api.cfg.comfyui_dir or Path()) / "models" / "checkpoints" / CHECKPOINT_SD15)
    resp = await api.post("/jobs", _with_prompt({"checkpoint": absolute}))
    err = await expect_error(resp, 400, "checkpoint")
    assert "inside" in err["message"]


async def test_refusals_say_why(api: Api) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"resolution": {"width": 1024}}, "hardware limit"),
        ({"resolution": {"width": 100}}, "multiple of 8"),
        ({"batchSize": 2}, "batch size 1"),
        ({"checkpoint": CHECKPOINT_SDXL}, "SDXL"),
        ({"checkpoint": CHECKPOINT_CKPT}, "pickle"),
        ({"bogus": 1}, "unknown field"),
    ]
    for body, words in cases:
        err = await expect_error(await api.post("/jobs", _with_prompt(body)), 400)
        assert words in err["message"], err
    err = await expect_error(await api.post("/jobs", _with_prompt({"sampler": "nope"})), 400, "sampler")
    assert err["details"]["choices"] == ["euler", "euler_ancestral", "dpmpp_2m"]


# --- robustness: nothing a client sends gives a 500 ----------------------------------------------------

NASTY_BODIES: list[bytes] = [
    b"",
    b"\xff\xfe\x00garbage",
    b"{not json",
    b"[]",
    b"[1, 2, 3]",
    b"null",
    b'"a string"',
    b"42",
    b"true",
    b"{}",
    b'{"prompt": "x", "seed": 1' + b"9" * 5000 + b"}",  # past Python's int-from-string digit limit
    b'{"prompt": "x", "steps": 1e999}',
    b'{"prompt": "x", "cfg": NaN}',
    b'{"prompt": "x", "cfg": -Infinity}',
    b'{"prompt": "x", "seed": 1e30}',
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON decoder's recursion limit
    b'{"prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"prompt": {"a": [[[[{"b": null}]]]]}, "resolution": {"width": {"$gt": 1}}}',
    b'{"chapter": "1", "page": [1], "image": 5, "approved": "maybe"}',
    b'{"chapter": true, "page": 1.5}',
    b'{"chapter": 1, "page": 99999999999999999999999}',
    b'{"__proto__": {"admin": true}}',
    b'{"prompt": "x", "prompt": 5}',
    b'{"approved": 1e999}',
    b'{"prompt": "\\ud800", "negativePrompt": "\\u0000"}',
]
POST_ROUTES = ["/jobs", "/pages", "/jobs/j_000000000000/cancel", "/images/ch01_p001_v1/approve"]


@pytest.mark.parametrize("route", POST_ROUTES)
async def test_nasty_bodies_never_give_500(open_api: OpenApi, route: str) -> None:
    api = await open_api(start_worker=False)
    for raw in NASTY_BODIES:
        resp = await api.client.post(route, data=raw, headers={"Content-Type": "application/json"})
        if resp.status == 202:  # a well-formed body is a job, not an error: but never a crash
            continue
        err = await expect_error(resp, resp.status)
        assert resp.status in (400, 404, 415), (raw[:80], resp.status, err)


async def test_body_over_the_size_limit_is_refused_as_json(api: Api) -> None:
    raw = io.BytesIO(json.dumps({"prompt": "x" * (2 * 1024 * 1024)}).encode())
    resp = await api.client.post("/jobs", data=raw, headers={"Content-Type": "application/json"})
    await expect_error(resp, 413)


# --- guards: Host, Origin, Content-Type ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Host": "evil.example"}, 403),
        ({"Host": "evil.example:3000"}, 403),
        ({"Host": "localhost.evil.example"}, 403),
        ({"Host": "127.0.0.1.nip.io"}, 403),
        ({"Host": "localhost:3000"}, 200),
        ({"Host": "LOCALHOST"}, 200),
        ({"Host": "127.0.0.1:3000"}, 200),
        ({"Host": "[::1]:3000"}, 200),
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "http://localhost.evil.example:5173"}, 403),
        ({"Origin": "null"}, 403),
        ({"Origin": "http://localhost:5173"}, 200),
        ({"Origin": "http://127.0.0.1:3000"}, 200),
    ],
)
async def test_host_and_origin_guard(api: Api, headers: dict[str, str], status: int) -> None:
    resp = await api.client.get("/health", headers=headers)
    if status == 200:
        assert resp.status == 200, await resp.text()
    else:
        err = await expect_error(resp, status)
        assert err["code"] == ErrorCode.FORBIDDEN


async def test_forbidden_host_cannot_submit(api: Api) -> None:
    resp = await api.post("/jobs", {"prompt": "x"}, headers={"Host": "evil.example"})
    await expect_error(resp, 403)
    resp = await api.post("/jobs", {"prompt": "x"}, headers={"Origin": "https://evil.example"})
    await expect_error(resp, 403)
    assert await api.stack.store.recent() == []


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", "application/xml"],
)
async def test_non_json_bodies_are_415(api: Api, content_type: str) -> None:
    for route in POST_ROUTES:
        resp = await api.client.post(route, data=b'{"prompt": "x"}', headers={"Content-Type": content_type})
        err = await expect_error(resp, 415)
        assert err["code"] == ErrorCode.UNSUPPORTED_MEDIA
    assert await api.stack.store.recent() == []


async def test_json_with_charset_and_an_untyped_empty_post_are_accepted(open_api: OpenApi) -> None:
    api = await open_api(start_worker=False)
    resp = await api.client.post("/jobs", data=b'{"prompt": "x"}',
                                  headers={"Content-Type": "application/json; charset=utf-8"})
    assert resp.status == 202, await resp.text()
    cancel = f"/jobs/{(await resp.json())['id']}/cancel"
    # An empty form post (what a foreign page can send without CORS) is refused even with no body...
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    await expect_error(await api.client.post(cancel, data=b"", headers=form), 415)
    # ...while a POST with neither body nor type (curl -X POST) is fine.
    resp = await api.client.post(cancel, skip_auto_headers=["Content-Type"])
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "cancelled"


# --- /health ---------------------------------------------------------------------------------------------


async def test_health_with_a_cpu_comfyui(api: Api) -> None:
    health = await (await api.client.get("/health")).json()
    assert health["status"] == "ok" and health["comfyui"] is True and health["mps"] is False
    assert health["comfyuiInfo"]["fp32Vae"] is True
    assert health["comfyuiInfo"]["devices"] == [{"name": "cpu", "type": "cpu"}]
    assert any("mps" in w for w in health["warnings"])
    assert health["gpu"] == {"heldBy": None} and health["queue"] == {"queued": 0, "running": None}


async def test_health_with_an_apple_gpu_and_without_fp32_vae(api: Api) -> None:
    api.fake.devices = [{"name": "mps (FAKE Apple M1 Pro)", "type": "mps"}]
    api.fake.argv = ["main.py", "--force-fp16"]
    await api.stack.core.monitor.probe()  # as if ComfyUI had been restarted on the Mac
    health = await (await api.client.get("/health")).json()
    assert health["mps"] is True
    assert health["comfyuiInfo"]["fp32Vae"] is False and health["comfyuiInfo"]["forceFp16"] is True
    assert [w for w in health["warnings"] if "fp32-vae" in w]
    assert not [w for w in health["warnings"] if "mps" in w]


async def test_health_when_comfyui_is_down(open_api: OpenApi) -> None:
    api = await open_api(comfyui_url=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    resp = await api.client.get("/health")
    assert resp.status == 200
    health = await resp.json()
    assert health["comfyui"] is False and health["mps"] is False
    assert "did not answer" in health["comfyuiInfo"]["error"]
    assert "not answering since" in health["comfyuiInfo"]["error"]
    # The job is stored all the same (validated against ComfyUI 0.3.75's samplers), and says why
    # it waits; a sampler no ComfyUI has is still refused.
    resp = await api.post("/jobs", {"prompt": "x"})
    assert resp.status == 202, await resp.text()
    job = await resp.json()
    assert job["status"] == "queued"
    assert job["waitingFor"].startswith(f"ComfyUI at {api.cfg.comfyui_url}, not answering since ")
    await expect_error(await api.post("/jobs", {"prompt": "x", "sampler": "nope"}), 400, "sampler")


# --- JSON-RPC: the same errors, the same codes -----------------------------------------------------------

RPC_PARITY: list[dict[str, Any]] = [
    {"resolution": {"width": 1024}},
    {"batchSize": 2},
    {"bogus": True},
    {"sampler": "nope"},
    {"checkpoint": CHECKPOINT_SDXL},
    {"checkpoint": "../x.safetensors"},
    {"loraId": LORA_SDXL},
    {"chapter": 1},
]


@pytest.mark.parametrize("body", RPC_PARITY)
async def test_rpc_errors_match_http(api: Api, body: dict[str, Any]) -> None:
    http_error = await expect_error(await api.post("/jobs", _with_prompt(body)), 400)
    answer = await rpc(api.stack.service, "submit", _with_prompt(body))
    assert answer["error"]["code"] == http_error["code"] == int(ErrorCode.INVALID_INPUT) == 1001
    assert answer["error"]["data"] == http_error  # field, message and details alike
    assert answer["error"]["message"] == http_error["message"]


async def test_rpc_not_found_conflict_and_success(api: Api) -> None:
    http_error = await expect_error(await api.client.get("/jobs/j_nope"), 404)
    answer = await rpc(api.stack.service, "status", {"id": "j_nope"})
    assert answer["error"]["code"] == int(ErrorCode.NOT_FOUND) == 1004
    assert answer["error"]["data"] == http_error

    submitted = (await rpc(api.stack.service, "submit", {"prompt": "over the socket"}))["result"]
    assert submitted["status"] == "queued"
    await api.wait_job(submitted["id"])
    answer = await rpc(api.stack.service, "cancel", {"id": submitted["id"]})
    assert answer["error"]["code"] == ErrorCode.CONFLICT
    jobs = (await rpc(api.stack.service, "jobs", {"status": "succeeded"}))["result"]
    assert [j["id"] for j in jobs] == [submitted["id"]]
    answer = await rpc(api.stack.service, "status", {"id": 5})
    assert answer["error"]["data"]["field"] == "id"


async def test_rpc_garbage_is_a_jsonrpc_error_not_a_crash(api: Api) -> None:
    methods = build_methods()
    nasty = [
        "{not json", "[]", "null", '{"jsonrpc": "2.0", "method": 5, "id": 1}',
        '{"jsonrpc": "2.0", "method": "submit", "params": {"seed": 1' + "9" * 5000 + '}, "id": 1}',
        "[" * 100_000 + "]" * 100_000,
    ]
    for line in nasty:
        answer = json.loads(await async_dispatch(line, methods=methods, context=api.stack.service))
        assert "error" in answer
    # Positional parameters do not fit the keyword-only methods: "invalid params", not a traceback.
    answer = await rpc(api.stack.service, "submit", ["a prompt"])
    assert answer["error"]["code"] == -32602
    answer = await rpc(api.stack.service, "no_such_method", {})
    assert answer["error"]["code"] == -32601
