"""Reproductions and consistency checks (issue 12), in-process over the FAKE ComfyUI: the refusals,
the API's and the CLI's shapes, the fresh-render check. What only the real ComfyUI can show (a
reproduction pixel-identical, a replaced LoRA changing the picture) is tests/test_reproduce_comfyui.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from PIL import Image

from plasmactl.output import Exit
from plasmad.generation import pipeline_files
from tests.support.app import Api, eventually, expect_error, rpc
from tests.support.cli import DaemonThread, ctl
from tests.support.modelfiles import LORA_SD15, SD15_LORA, write_safetensors
from tests.test_fingerprints import png_of

SMALL = {"resolution": {"width": 64, "height": 64}, "steps": 2}


async def make_page(api: Api, **body: Any) -> str:
    api.fake.image = png_of()
    job = await api.wait_job(await api.submit(chapter=1, page=1, seed=5, loraId=LORA_SD15, **SMALL, **body))
    assert job["status"] == "succeeded", job
    return Path(job["outputs"][0]).stem


async def reproduce(api: Api, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    resp = await api.post(f"/images/{name}/reproduce", body or {})
    assert resp.status == 202, await resp.text()
    return dict(await resp.json())


async def finished(api: Api, record: dict[str, Any]) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        resp = await api.client.get(f"/reproductions/{record['id']}")
        assert resp.status == 200, await resp.text()
        answer = dict(await resp.json())
        return answer if answer["state"] == "done" else None

    return dict(await eventually(done, f"{record['id']} to be compared", timeout=30))


def raw(api: Api) -> Path:
    return pipeline_files.raw_dir(api.cfg.pipeline_dir or Path(), 1)


# --- a reproduction -----------------------------------------------------------------------------------


async def test_a_reproduction_runs_the_stored_workflow_fresh_and_compares(api: Api) -> None:
    name = await make_page(api)
    before = sorted(p.name for p in raw(api).iterdir())
    freed = api.fake.freed
    record = await reproduce(api, name, {"runs": 2})
    assert record["id"].startswith("r_") and record["kind"] == "reproduce" and record["state"] == "running"
    assert record["page"] == name and record["runs"] == 2 and len(record["jobs"]) == 2
    assert [(f["role"], f["status"]) for f in record["files"]] == [("checkpoint", "same"), ("lora", "same")]
    done = await finished(api, record)
    # The graph sent each time is the page's stored workflow, as it is.
    workflow = json.loads((raw(api) / f"{name}.workflow.json").read_text())
    assert [p["prompt"] for p in api.fake.prompts[-2:]] == [workflow, workflow]
    assert api.fake.freed == freed + 2  # ComfyUI's cache cleared before each run
    folder = api.cfg.state_dir / "reproductions" / name / record["id"]
    assert done["folder"] == str(folder) and done["identical"] is True and done["minSsim"] == 1.0
    for n, result in enumerate(done["results"], 1):
        assert result["status"] == "succeeded" and result["image"] == str(folder / f"run-{n}.png")
        assert (result["identical"], result["maxDiff"], result["ssim"]) == (True, 0, 1.0)
        assert result["samplerSteps"] == 2
    with Image.open(done["sheet"]) as sheet:
        assert sheet.format == "PNG" and sheet.width > 3 * 256  # the original and two runs
    # Nothing new where the pipeline reads.
    assert sorted(p.name for p in raw(api).iterdir()) == before
    # The same through JSON-RPC.
    answer = await rpc(api.stack.service, "reproduction", {"id": record["id"]})
    assert answer["result"]["results"] == done["results"]


async def test_a_changed_file_is_named_and_refused_unless_forced(api: Api) -> None:
    name = await make_page(api)
    lora = (api.cfg.comfyui_dir or Path()) / "models" / "loras" / LORA_SD15
    write_safetensors(lora, SD15_LORA, {"ss_training_comment": "retrained under the same name"})
    error = await expect_error(await api.post(f"/images/{name}/reproduce", {}), 409, "image")
    assert LORA_SD15 in error["message"] and "changed" in error["message"] and "--force" in error["message"]
    [changed] = error["details"]["files"]
    assert changed["role"] == "lora" and changed["status"] == "changed"
    assert changed["recorded"] != changed["now"]
    jobs_before = len(api.fake.prompts)
    record = await reproduce(api, name, {"force": True})
    assert {f["role"]: f["status"] for f in record["files"]} == {"checkpoint": "same", "lora": "changed"}
    assert record["force"] is True
    await finished(api, record)
    assert len(api.fake.prompts) == jobs_before + 1
    # A file gone: named as missing.
    lora.unlink()
    error = await expect_error(await api.post(f"/images/{name}/reproduce", {}), 409, "image")
    assert f"{LORA_SD15} is missing" in error["message"]


async def test_the_refusals(api: Api) -> None:
    await expect_error(await api.post("/images/page-one/reproduce", {}), 400, "image")
    await expect_error(await api.post("/images/ch01_p009_v1/reproduce", {}), 404)
    name = await make_page(api)
    for body, field in (({"runs": 0}, "runs"), ({"runs": 11}, "runs"), ({"runs": "2"}, "runs"),
                        ({"force": 1}, "force"), ({"seed": 3}, "seed")):
        await expect_error(await api.post(f"/images/{name}/reproduce", body), 400, field)
    # A page made before fingerprints were recorded: nothing to verify it against.
    log_path = raw(api).parent / pipeline_files.LOG_NAME
    entries = json.loads(log_path.read_text())
    del entries[0]["fingerprints"]
    log_path.write_text(json.dumps(entries))
    error = await expect_error(await api.post(f"/images/{name}/reproduce", {}), 409, "image")
    assert "no fingerprints" in error["message"]
    await reproduce(api, name, {"force": True})
    # Its workflow file gone.
    (raw(api) / f"{name}.workflow.json").unlink()
    await expect_error(await api.post(f"/images/{name}/reproduce", {"force": True}), 404)
    # Unknown records.
    await expect_error(await api.client.get("/reproductions/r_0000000000"), 404)
    await expect_error(await api.client.get("/reproductions/..%2F..%2Fx"), 400, "id")


async def test_a_workflow_edited_past_the_hardware_limits_is_refused_even_forced(api: Api) -> None:
    """The stored graph runs as it is, so a hand edit (a bigger page, a batch, more steps) is
    checked against the same limits as a request: --force skips the file check, never these."""
    name = await make_page(api)
    workflow_path = raw(api) / f"{name}.workflow.json"
    workflow = json.loads(workflow_path.read_text())
    latent = next(k for k, n in workflow.items() if n["class_type"] == "EmptyLatentImage")
    sampler = next(k for k, n in workflow.items() if n["class_type"] == "KSampler")
    prompts = len(api.fake.prompts)
    for node, name_, value in ((latent, "width", 1024), (latent, "batch_size", 4), (sampler, "steps", 500)):
        edited = json.loads(json.dumps(workflow))
        edited[node]["inputs"][name_] = value
        workflow_path.write_text(json.dumps(edited))
        error = await expect_error(
            await api.post(f"/images/{name}/reproduce", {"force": True}), 400, f"workflow.{node}.{name_}"
        )
        assert str(value) in error["message"]
    assert len(api.fake.prompts) == prompts  # nothing was sent


async def test_a_render_served_from_cache_fails_the_run(api: Api) -> None:
    """ComfyUI's history lists the nodes it served from its cache: after a clear, none may be."""
    name = await make_page(api)
    api.fake.messages = [["execution_cached", {"nodes": ["1", "7"], "prompt_id": "x"}]]
    done = await finished(api, await reproduce(api, name))
    [result] = done["results"]
    assert result["status"] == "failed" and "served node(s) 1, 7 from its cache" in result["note"]
    assert done["identical"] is False and done["minSsim"] is None
    # A ComfyUI whose history says nothing of its cache: the sampler's progress must have come.
    api.fake.messages = []
    api.fake.scenario = "silent"
    done = await finished(api, await reproduce(api, name))
    assert "no sampler step" in done["results"][0]["note"]


# --- a consistency check ------------------------------------------------------------------------------


async def test_a_consistency_check_compares_same_seed_runs(api: Api) -> None:
    api.fake.image = png_of()
    crop = {"x": 8, "y": 16, "width": 24, "height": 24}
    body = {"prompt": "spyke_plasma_v1, full body", **SMALL, "crop": crop}
    resp = await api.post("/consistency", body)
    assert resp.status == 202, await resp.text()
    record = await resp.json()
    assert record["id"].startswith("c_") and record["kind"] == "consistency" and record["runs"] == 3
    seed = record["seed"]
    assert isinstance(seed, int) and record["request"]["seed"] == seed  # drawn once, for every run
    done = await finished(api, record)
    seeds = {p["prompt"][n]["inputs"]["seed"] for p in api.fake.prompts for n in p["prompt"]
             if p["prompt"][n]["class_type"] == "KSampler"}
    assert seeds == {seed} and api.fake.freed == 3
    assert done["matrix"] == [[1.0] * 3] * 3 and done["identical"] is True
    assert done["crop"] == crop
    folder = api.cfg.state_dir / "consistency" / record["id"]
    assert [r["image"] for r in done["results"]] == [str(folder / f"run-{n}.png") for n in (1, 2, 3)]
    assert await asyncio.to_thread(Path(done["sheet"]).is_file)


async def test_a_consistency_check_that_differs(api: Api) -> None:
    """Run 2 comes back another picture (what an Apple GPU can do): the scores say by how much."""
    api.fake.image = png_of()
    resp = await api.post("/consistency", {"prompt": "spyke", "seed": 9, "runs": 2, **SMALL})
    record = await resp.json()
    await api.wait_job(record["jobs"][0])
    api.fake.image = png_of(colour=(200, 30, 46))
    done = await finished(api, record)
    second = done["results"][1]
    assert second["identical"] is False and second["maxDiff"] == 6 and 0.9 < second["ssim"] <= 1.0
    assert done["matrix"][0][1] == done["matrix"][1][0] == second["ssim"]


async def test_consistency_refusals(api: Api) -> None:
    base = {"prompt": "spyke", **SMALL}
    for body, field in (
        ({**base, "runs": 1}, "runs"),
        ({**base, "crop": {"x": 60, "y": 0, "width": 8, "height": 8}}, "crop"),
        ({**base, "crop": {"x": 0, "y": 0, "width": 4, "height": 8}}, "crop.width"),
        ({**base, "chapter": 1, "page": 1}, "chapter"),
        ({**base, "sampler": "nope"}, "sampler"),  # validated as any generation
        ({**base, "resolution": {"width": 1024, "height": 64}}, "resolution.width"),
        ({**base, "colour": "red"}, "colour"),
        ({"runs": 3}, "prompt"),
    ):
        await expect_error(await api.post("/consistency", body), 400, field)
    assert api.fake.prompts == [] and await api.stack.store.recent(limit=10) == []


# --- the command line ---------------------------------------------------------------------------------


def test_the_commands(daemon: DaemonThread) -> None:
    daemon.fake.image = png_of()
    result = ctl(daemon, "submit", "-p", "spyke", "-c", "1", "--page", "1", "--lora", LORA_SD15,
                 "--width", "64", "--height", "64", "--wait")
    assert result.exit_code == 0, result.output
    name = Path(result.stdout.strip()).stem
    result = ctl(daemon, "reproduce", name, "--runs", "2")
    assert result.exit_code == 0, result.output
    assert "checkpoint" in result.stdout and "lora" in result.stdout and "same" in result.stdout
    assert "result: pixel-identical" in result.stdout and "contact sheet: " in result.stdout
    result = ctl(daemon, "--json", "reproduce", name, "--min-ssim", "0.99")
    record = json.loads(result.stdout)
    assert result.exit_code == 0 and record["state"] == "done" and record["identical"] is True
    assert ctl(daemon, "reproduction", record["id"]).exit_code == 0

    lora = (daemon.stack.cfg.comfyui_dir or Path()) / "models" / "loras" / LORA_SD15
    write_safetensors(lora, SD15_LORA, {"ss_training_comment": "retrained"})
    result = ctl(daemon, "reproduce", name)
    assert result.exit_code == int(Exit.CONFLICT) == 5 and LORA_SD15 in result.stderr
    assert ctl(daemon, "reproduce", name, "--force").exit_code == 0

    result = ctl(daemon, "consistency", "-p", "spyke", "--seed", "4", "--width", "64", "--height", "64",
                 "--crop", "0,0,32,32")
    assert result.exit_code == 0, result.output
    assert "SSIM matrix:" in result.stdout and "seed 4, region x 0 y 0 32x32" in result.stdout
    for bad in ("1,2,3", "a,b,c,d", "-1,0,8,8"):
        result = ctl(daemon, "consistency", "-p", "spyke", "--crop", bad)
        assert result.exit_code == int(Exit.USAGE) and "--crop" in result.stderr
    result = ctl(daemon, "consistency", "-p", "spyke", "--runs", "1")
    assert result.exit_code == int(Exit.USAGE) and "runs" in result.stderr
