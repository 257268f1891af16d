"""The review board's API over the real app and the FAKE ComfyUI: the pages and versions listed from
the generation logs, a version's image, thumbnail and workflow, re-roll and vary, a job's image,
and the board's own files with their Content-Security-Policy. The real browser test is
tests/test_board_browser.py."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from plasmad.api.board import ASSETS, CSP, STATIC
from plasmad.generation import pipeline_files
from tests.support.app import Api, OpenApi, expect_error, rpc
from tests.support.modelfiles import LORA_SD15

PAGE = {"chapter": 1, "page": 1, "loraId": LORA_SD15, "steps": 4, "resolution": {"width": 64, "height": 64}}


async def generate(api: Api, **body: Any) -> dict[str, Any]:
    job = await api.wait_job(await api.submit(**{**PAGE, **body}))
    assert job["status"] == "succeeded", job
    return job


async def json_of(api: Api, path: str, status: int = 200) -> Any:
    resp = await api.client.get(path)
    assert resp.status == status, await resp.text()
    return await resp.json()


def log_entries(api: Api, chapter: int = 1) -> list[dict[str, Any]]:
    pipeline = api.cfg.pipeline_dir
    assert pipeline is not None
    path = pipeline_files.chapter_dir(pipeline, chapter) / pipeline_files.LOG_NAME
    return list(json.loads(path.read_text()))


def entry_of(api: Api, name: str) -> dict[str, Any]:
    return next(e for e in log_entries(api, int(name[2:4])) if e["imageFile"] == f"{name}.png")


def raw(api: Api, chapter: int = 1) -> Path:
    assert api.cfg.pipeline_dir is not None
    return pipeline_files.raw_dir(api.cfg.pipeline_dir, chapter)


# --- the listing ---------------------------------------------------------------------------------------


async def test_pages_and_versions_come_from_the_generation_logs(api: Api) -> None:
    await generate(api, seed=5)
    await generate(api, seed=6, loraStrength=0.7)
    await generate(api, page=2, seed=7)
    # An entry another tool wrote (the pipeline's Gemini mode): fewer fields, some of other types.
    log_path = raw(api).parent / pipeline_files.LOG_NAME
    entries = json.loads(log_path.read_text())
    entries.append({"imageFile": "ch01_p003_v1.png", "approved": True, "seed": "not a number"})
    entries.append({"note": "not an image entry"})
    log_path.write_text(json.dumps(entries))
    # Chapter 2's log is broken: listed with the reason, the rest still listed.
    broken = raw(api, 2).parent
    broken.mkdir(parents=True)
    (broken / pipeline_files.LOG_NAME).write_text("[{not json")

    listing = await json_of(api, "/pages")
    [ch1, ch2] = listing["chapters"]
    assert (ch1["chapter"], ch1["name"], ch1["error"]) == (1, "ch-01", None)
    assert ch2["chapter"] == 2 and "not readable JSON" in ch2["error"] and ch2["pages"] == []
    assert [p["name"] for p in ch1["pages"]] == ["ch01_p001", "ch01_p002", "ch01_p003"]
    p1 = ch1["pages"][0]
    assert [v["name"] for v in p1["versions"]] == ["ch01_p001_v1", "ch01_p001_v2"] and p1["approved"] == []
    v1, v2 = p1["versions"]
    assert (v1["seed"], v1["loraId"], v1["loraStrength"], v1["steps"]) == (5, LORA_SD15, 1.0, 4)
    assert (v2["seed"], v2["loraStrength"], v2["version"], v2["page"]) == (6, 0.7, 2, 1)
    assert v1["hasImage"] and v1["hasWorkflow"] and v1["approved"] is False
    assert v1["sampler"] == "euler_ancestral" and v1["model"] and v1["width"] == 64
    assert v1["workflowTemplate"] == "txt2img-lora.json" and v1["jobId"].startswith("j_")
    assert v1["controlnetStrength"] is None and v1["modelFingerprint"] is None
    foreign = ch1["pages"][2]["versions"][0]
    assert foreign["approved"] is True and foreign["seed"] is None and foreign["hasImage"] is False
    assert ch1["pages"][2]["approved"] == ["ch01_p003_v1"]

    only = await json_of(api, "/pages?chapter=2")
    assert [c["chapter"] for c in only["chapters"]] == [2]
    await expect_error(await api.client.get("/pages?chapter=one"), 400, "chapter")
    await expect_error(await api.client.get("/pages?volume=1"), 400, "volume")
    by_rpc = await rpc(api.stack.service, "pages", {"chapter": 1})
    assert by_rpc["result"] == await json_of(api, "/pages?chapter=1")


async def test_no_pages_yet_is_an_empty_listing(api: Api) -> None:
    assert await json_of(api, "/pages") == {"chapters": []}


async def test_without_a_pipeline_the_listing_says_which_setting(open_api: OpenApi) -> None:
    api = await open_api(pipeline_dir=None)
    error = await expect_error(await api.client.get("/pages"), 503)
    assert "PLASMA_PIPELINE_DIR" in error["message"]


async def test_approve_and_unapprove_change_the_log_entry(api: Api) -> None:
    await generate(api, seed=5)
    resp = await api.post("/images/ch01_p001_v1/approve", {"approved": True})
    assert resp.status == 200 and entry_of(api, "ch01_p001_v1")["approved"] is True
    assert (await json_of(api, "/pages"))["chapters"][0]["pages"][0]["approved"] == ["ch01_p001_v1"]
    resp = await api.post("/images/ch01_p001_v1/approve", {"approved": False})
    assert resp.status == 200 and entry_of(api, "ch01_p001_v1")["approved"] is False


# --- a version's files ---------------------------------------------------------------------------------


async def test_image_thumbnail_and_workflow_of_a_version(api: Api) -> None:
    await generate(api, seed=5)
    # A page-sized noisy picture (as the demo model draws) in place of the FAKE's 1x1 PNG.
    image = raw(api) / "ch01_p001_v1.png"
    Image.frombytes("RGB", (512, 768), random.Random(1).randbytes(512 * 768 * 3)).save(image)

    resp = await api.client.get("/images/ch01_p001_v1")
    assert resp.status == 200 and resp.content_type == "image/png"
    assert await resp.read() == image.read_bytes()
    assert resp.headers["X-Content-Type-Options"] == "nosniff" and resp.headers.get("ETag")
    again = await api.client.get("/images/ch01_p001_v1.png", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304  # the browser keeps what it has

    thumb = await api.client.get("/images/ch01_p001_v1/thumbnail?size=128")
    assert thumb.status == 200 and thumb.content_type == "image/jpeg"
    data = await thumb.read()
    assert len(data) < image.stat().st_size / 4
    cache = api.cfg.state_dir / "thumbnails"
    [cached] = list(cache.rglob("*.jpg"))
    assert cached.read_bytes() == data
    with Image.open(cached) as small:
        assert small.size == (85, 128)
    made = cached.stat().st_mtime_ns
    await asyncio.sleep(0.01)
    assert await (await api.client.get("/images/ch01_p001_v1/thumbnail?size=128")).read() == data
    assert cached.stat().st_mtime_ns == made  # served from the cache, not made again
    # Another size, and the same image written anew: new thumbnails under new keys.
    assert (await api.client.get("/images/ch01_p001_v1/thumbnail")).status == 200
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert (await api.client.get("/images/ch01_p001_v1/thumbnail?size=128")).status == 200
    assert len(list(cache.rglob("*.jpg"))) == 3
    await expect_error(await api.client.get("/images/ch01_p001_v1/thumbnail?size=100"), 400, "size")

    workflow = await json_of(api, "/images/ch01_p001_v1/workflow")
    assert workflow == json.loads((raw(api) / "ch01_p001_v1.workflow.json").read_text())


@pytest.mark.parametrize(
    "name",
    ["ch1_p1_v1", "ch01_p001_v1.workflow.json", "..%2F..%2Fetc%2Fpasswd", "ch01_p001_v1%00", "ch01_p001"],
)
async def test_a_version_is_named_and_never_a_path(api: Api, name: str) -> None:
    # A NUL byte is refused by the API's guard before any operation, naming the path's part.
    field = "name" if "%00" in name else "image"
    for path in (f"/images/{name}", f"/images/{name}/thumbnail", f"/images/{name}/workflow"):
        await expect_error(await api.client.get(path), 400, field)
    await expect_error(await api.post(f"/images/{name}/reroll"), 400, field)


async def test_a_missing_version_is_a_404(api: Api) -> None:
    await generate(api, seed=5)
    for path in ("/images/ch01_p009_v1", "/images/ch01_p009_v1/thumbnail", "/images/ch01_p009_v1/workflow"):
        await expect_error(await api.client.get(path), 404)
    await expect_error(await api.post("/images/ch01_p009_v1/reroll"), 404)
    (raw(api) / "ch01_p001_v1.png").write_bytes(b"not a png at all")
    error = await expect_error(await api.client.get("/images/ch01_p001_v1/thumbnail"), 409)
    assert "not a readable image" in error["message"]


async def test_a_jobs_image_and_thumbnail(open_api: OpenApi) -> None:
    api = await open_api()
    done = await api.wait_job(await api.submit(seed=3))  # no page: the state dir's images/
    resp = await api.client.get(f"/jobs/{done['id']}/image")
    expected = await asyncio.to_thread(Path(done["outputs"][0]).read_bytes)
    assert resp.status == 200 and await resp.read() == expected
    assert (await api.client.get(f"/jobs/{done['id']}/thumbnail?size=128")).content_type == "image/jpeg"
    await expect_error(await api.client.get("/jobs/j_000000000000/image"), 404)


async def test_a_queued_job_has_no_image_yet(open_api: OpenApi) -> None:
    api = await open_api(start_worker=False)
    job_id = await api.submit(seed=3)
    error = await expect_error(await api.client.get(f"/jobs/{job_id}/image"), 404)
    assert "queued" in error["message"]


# --- new versions: re-roll and vary --------------------------------------------------------------------


SAME = ("promptHash", "promptFile", "model", "sampler", "scheduler", "steps", "cfg", "loraId", "width")


async def test_reroll_is_the_same_settings_with_a_new_seed(api: Api) -> None:
    first = await generate(api, seed=5, prompt="spyke_plasma_v1, rooftop", negativePrompt="blurry")
    resp = await api.post("/images/ch01_p001_v1/reroll")
    assert resp.status == 202, await resp.text()
    job = await api.wait_job((await resp.json())["id"])
    assert job["status"] == "succeeded" and job["outputs"][0].endswith("ch01_p001_v2.png"), job
    old, new = entry_of(api, "ch01_p001_v1"), entry_of(api, "ch01_p001_v2")
    assert {k: new[k] for k in SAME} == {k: old[k] for k in SAME}
    assert new["seed"] != old["seed"] and new["loraStrength"] == old["loraStrength"]
    assert job["request"]["negativePrompt"] == "blurry" == first["request"]["negativePrompt"]
    # The socket API does the same; a body with anything in it is refused.
    rerolled = (await rpc(api.stack.service, "reroll", {"image": "ch01_p001_v1"}))["result"]
    assert rerolled["status"] == "queued" and rerolled["request"]["chapter"] == 1
    await expect_error(await api.post("/images/ch01_p001_v1/reroll", {"seed": 5}), 400, "seed")


async def test_vary_keeps_the_seed_and_changes_a_strength(api: Api) -> None:
    await generate(api, seed=5)
    resp = await api.post("/images/ch01_p001_v1/vary", {"loraStrength": 0.4})
    assert resp.status == 202, await resp.text()
    job = await api.wait_job((await resp.json())["id"])
    assert job["status"] == "succeeded", job
    old, new = entry_of(api, "ch01_p001_v1"), entry_of(api, "ch01_p001_v2")
    assert (new["seed"], new["loraStrength"], old["loraStrength"]) == (5, 0.4, 1.0)
    for body, field in (
        ({}, "body"),
        ({"loraStrength": 3}, "loraStrength"),
        ({"loraStrength": "0.5"}, "loraStrength"),
        ({"controlnetStrength": 0.6}, "controlnetStrength"),  # a txt2img page has no ControlNet
        ({"seed": 1}, "seed"),
    ):
        await expect_error(await api.post("/images/ch01_p001_v1/vary", body), 400, field)
    await generate(api, page=2, seed=9, loraId=None)
    error = await expect_error(await api.post("/images/ch01_p002_v1/vary", {"loraStrength": 0.5}), 400)
    assert error["field"] == "loraStrength" and "without a LoRA" in error["message"]


async def test_versions_that_cannot_be_made_again_say_why(api: Api) -> None:
    await generate(api, seed=5)
    await generate(api, seed=6)
    # Not made by plasmad: no template recorded.
    log_path = raw(api).parent / pipeline_files.LOG_NAME
    entries = json.loads(log_path.read_text())
    del entries[0]["workflowTemplate"]
    log_path.write_text(json.dumps(entries))
    error = await expect_error(await api.post("/images/ch01_p001_v1/reroll"), 409)
    assert "not made by plasmad" in error["message"]
    # A workflow edited by hand so that it no longer fits its template.
    workflow = raw(api) / "ch01_p001_v2.workflow.json"
    graph = json.loads(workflow.read_text())
    sampler = next(k for k, n in graph.items() if n["class_type"] == "KSampler")
    del graph[sampler]["inputs"]["seed"]
    workflow.write_text(json.dumps(graph))
    error = await expect_error(await api.post("/images/ch01_p001_v2/vary", {"loraStrength": 0.5}), 409)
    assert "does not match the template txt2img-lora.json" in error["message"]
    workflow.unlink()
    await expect_error(await api.post("/images/ch01_p001_v2/reroll"), 404)


async def test_vary_a_posed_page_keeps_its_pose(api: Api, tmp_path: Path) -> None:
    assert api.cfg.comfyui_dir is not None
    models = api.cfg.comfyui_dir / "models" / "controlnet"
    models.mkdir(parents=True, exist_ok=True)
    (models / api.cfg.controlnet).write_bytes(b"PK\x03\x04" + b"\x00" * 60)  # torch.save's zip magic
    pose = tmp_path / "poses" / "arms-up.png"
    pose.parent.mkdir()
    picture = Image.new("RGB", (64, 96), "black")
    ImageDraw.Draw(picture).line([(32, 10), (32, 80)], fill=(255, 0, 0), width=3)
    picture.save(pose)
    body = {"prompt": "spyke_plasma_v1, arms up", "poseImagePath": str(pose), "controlnetStrength": 0.6}
    job = await api.wait_job(await api.submit(**{k: v for k, v in PAGE.items() if k != "resolution"}, **body))
    assert job["status"] == "succeeded", job
    resp = await api.post("/images/ch01_p001_v1/vary", {"controlnetStrength": 0.8})
    assert resp.status == 202, await resp.text()
    varied = await api.wait_job((await resp.json())["id"])
    assert varied["status"] == "succeeded", varied
    old, new = entry_of(api, "ch01_p001_v1"), entry_of(api, "ch01_p001_v2")
    assert (new["controlnetStrength"], old["controlnetStrength"], new["seed"]) == (0.8, 0.6, old["seed"])
    assert new["poseImageHash"] == old["poseImageHash"] and new["workflowTemplate"] == old["workflowTemplate"]
    await expect_error(await api.post("/images/ch01_p001_v1/vary", {"controlnetStrength": 0.95}), 400)


TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}


# --- the board's own files -----------------------------------------------------------------------------


async def test_the_board_is_served_with_a_self_only_policy(api: Api) -> None:
    resp = await api.client.get("/")
    assert resp.status == 200 and resp.content_type == "text/html"
    html = await resp.text()
    assert resp.headers["Content-Security-Policy"] == CSP
    assert "default-src 'none'" in CSP and "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    # Every file the page and its modules name is one the board serves, with a type browsers run.
    named = set(re.findall(r'"/board/([\w.-]+)"', html))
    for script in STATIC.glob("*.js"):
        named |= set(re.findall(r'from "\./([\w.-]+)"', script.read_text()))
    assert named and named <= ASSETS
    for name in sorted(named):
        asset = await api.client.get(f"/board/{name}")
        assert asset.status == 200, name
        assert asset.headers["Content-Security-Policy"] == CSP
        assert asset.content_type == TYPES[name.rsplit(".", 1)[1]]
    assert "<script>" not in html and "style=" not in html  # nothing inline: the policy forbids it


@pytest.mark.parametrize(
    "path", ["/board/index.html", "/board/..%2F__init__.py", "/board/nope.js", "/board/", "/board/board.JS"]
)
async def test_only_the_boards_files_are_served(api: Api, path: str) -> None:
    await expect_error(await api.client.get(path), 404)


async def test_the_board_has_the_api_guard(api: Api) -> None:
    await expect_error(await api.client.get("/", headers={"Host": "evil.example:3000"}), 403)
    await expect_error(await api.client.get("/pages", headers={"Host": "evil.example"}), 403)
    resp = await api.client.post(
        "/images/ch01_p001_v1/reroll", data="{}", headers={"Content-Type": "text/plain"}
    )
    await expect_error(resp, 415)
    resp = await api.post("/images/ch01_p001_v1/reroll", {}, headers={"Origin": "https://evil.example"})
    await expect_error(resp, 403)
