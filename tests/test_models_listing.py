"""`GET /models`, JSON-RPC `models` and `plasmactl models`: what a request may name, where it was
found, and the refusals that list the nearest valid names (HTTP, JSON-RPC and the CLI alike).

The app is the real one in-process over the FAKE ComfyUI (what it lists is set per test); the model
files are FAKE safetensors headers (tests/support/modelfiles.py) in real folders, links included.
The last test runs a real plasmad with a real managed ComfyUI on the demo model (marked comfyui).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from plasmad.core.errors import ErrorCode
from tests.support.app import Api, expect_error, rpc
from tests.support.cli import DaemonThread, ctl
from tests.support.modelfiles import (
    CHECKPOINT_CKPT,
    CHECKPOINT_LINKED,
    CHECKPOINT_SD15,
    CHECKPOINT_SDXL,
    LORA_SD15,
    LORA_SDXL,
    SD15_CHECKPOINT,
    SD15_LORA,
    write_safetensors,
)
from tests.support.processes import (
    COMFY_DIR,
    COMFY_PYTHON,
    DEMO_CHECKPOINT,
    DEMO_LORA,
    DaemonEnv,
    DaemonProcess,
    free_port,
)


def _by_name(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in entries}


def _lists(api: Api, node: str, field: str, names: list[str]) -> None:
    """The FAKE ComfyUI lists `names` in `node`'s `field`."""
    api.fake.nodes[node] = {"input": {"required": {field: [names]}}}


async def test_models_lists_each_kind_with_what_a_request_may_name(api: Api, tmp_path: Path) -> None:
    comfyui = api.cfg.comfyui_dir or Path()
    checkpoints = comfyui / "models" / "checkpoints"
    write_safetensors(comfyui / "models" / "loras" / "plasma-samples" / "t_1" / "x.safetensors", SD15_LORA)
    controlnet = comfyui / "models" / "controlnet"
    controlnet.mkdir(parents=True)
    (controlnet / "control_v11p_sd15_openpose.pth").write_bytes(b"PK\x03\x04 torch zip")
    _lists(api, "CheckpointLoaderSimple", "ckpt_name", [CHECKPOINT_SD15])
    resp = await api.client.get("/models")
    assert resp.status == 200
    answer = await resp.json()
    ckpts = _by_name(answer["checkpoints"])
    sd15 = ckpts[CHECKPOINT_SD15]
    assert sd15["usable"] and sd15["sd15"] and sd15["family"] == "sd15" and sd15["whyNot"] is None
    assert sd15["folder"] == str(checkpoints)
    assert sd15["bytes"] == (checkpoints / CHECKPOINT_SD15).stat().st_size
    assert sd15["comfyui"] is True and ckpts[CHECKPOINT_LINKED]["comfyui"] is False
    linked = ckpts[CHECKPOINT_LINKED]
    assert linked["usable"] and linked["link"] == str(comfyui / "elsewhere" / "outside.safetensors")
    assert not ckpts[CHECKPOINT_SDXL]["usable"] and "SDXL" in ckpts[CHECKPOINT_SDXL]["whyNot"]
    assert ckpts[CHECKPOINT_SDXL]["sd15"] is False
    assert ckpts[CHECKPOINT_CKPT]["sd15"] is None and "pickle" in ckpts[CHECKPOINT_CKPT]["whyNot"]
    loras = _by_name(answer["loras"])
    assert loras[LORA_SD15]["usable"] and not loras[LORA_SDXL]["usable"]
    assert not any(n.startswith("plasma-samples/") for n in loras) and answer["plasmaCopies"] == 1
    pth = _by_name(answer["controlnets"])["control_v11p_sd15_openpose.pth"]
    assert pth["usable"] and pth["sd15"] is None  # loaded by ComfyUI alone: not read here
    assert answer["folders"]["checkpoints"] == [str(checkpoints)]
    assert answer["defaultCheckpoint"] == CHECKPOINT_SD15 and answer["comfyuiError"] is None
    assert (await rpc(api.stack.service, "models", {}))["result"] == answer


async def test_models_with_an_a1111_folder(api: Api, tmp_path: Path) -> None:
    comfyui = api.cfg.comfyui_dir or Path()
    a1111 = tmp_path / "stable-diffusion-webui" / "models"
    write_safetensors(a1111 / "Stable-diffusion" / "anything-v5.safetensors", SD15_CHECKPOINT)
    write_safetensors(a1111 / "Lora" / "june.safetensors", SD15_LORA)
    (comfyui / "extra_model_paths.yaml").write_text(
        f"a111:\n  base_path: {a1111.parent}\n  checkpoints: models/Stable-diffusion\n  loras: models/Lora\n"
    )
    answer = await (await api.client.get("/models")).json()
    anything = _by_name(answer["checkpoints"])["anything-v5.safetensors"]
    assert anything["folder"] == str(a1111 / "Stable-diffusion") and anything["usable"]
    assert answer["configFiles"] == [str(comfyui.resolve() / "extra_model_paths.yaml")]
    # A generation may name both; ComfyUI finds them the same way.
    job = await api.submit(checkpoint="anything-v5.safetensors", loraId="june.safetensors")
    assert (await api.wait_job(job))["status"] == "succeeded"


async def test_models_when_comfyui_is_down(open_api: Any) -> None:
    api = await open_api(comfyui_url="http://127.0.0.1:9")
    answer = await (await api.client.get("/models")).json()
    assert answer["comfyuiError"] and all(e["comfyui"] is None for e in answer["checkpoints"])
    assert _by_name(answer["checkpoints"])[CHECKPOINT_SD15]["usable"]  # judged from the files alone


async def test_a_misspelt_model_is_refused_with_the_nearest_names(api: Api) -> None:
    resp = await api.post("/jobs", {"prompt": "x", "checkpoint": "sd_15.safetensors"})
    err = await expect_error(resp, 400, "checkpoint")
    nearest = err["details"]["nearest"]
    assert nearest[0] == CHECKPOINT_SD15 and CHECKPOINT_SDXL not in nearest  # only usable names
    assert f"nearest: {CHECKPOINT_SD15}" in err["message"]
    resp = await api.post("/jobs", {"prompt": "x", "loraId": "spyke.safetensors"})
    err = await expect_error(resp, 400, "loraId")
    assert err["details"]["nearest"] == [LORA_SD15]
    answer = await rpc(api.stack.service, "submit", {"prompt": "x", "loraId": "spyke.safetensors"})
    assert answer["error"]["code"] == ErrorCode.INVALID_INPUT and answer["error"]["data"] == err


def test_plasmactl_models(daemon: DaemonThread) -> None:
    result = ctl(daemon, "models")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("checkpoints (searched in this order: ")
    sd15 = next(line for line in lines if CHECKPOINT_SD15 in line)
    assert sd15.split()[:2] == ["*", CHECKPOINT_SD15] and " yes " in sd15  # the default, marked
    sdxl = next(line for line in lines if CHECKPOINT_SDXL in line)
    assert " no " in sdxl and sdxl.endswith("is an SDXL checkpoint; only SD 1.5 fits in 16 GB (SD 1.5 only)")
    assert any("link -> " in line for line in lines if CHECKPOINT_LINKED in line)
    data = json.loads(ctl(daemon, "models", "--json").output)
    assert {e["name"] for e in data["loras"]} >= {LORA_SD15, LORA_SDXL}


def test_plasmactl_shows_the_nearest_names(daemon: DaemonThread) -> None:
    result = ctl(daemon, "submit", "-p", "x", "--checkpoint", "sd_15.safetensors")
    assert result.exit_code == 2
    first, *notes = result.output.splitlines()
    assert first.startswith("plasmactl: checkpoint: 'sd_15.safetensors' is not in ")
    assert f"; nearest: {CHECKPOINT_SD15}" in first
    assert [n.split(":")[0] for n in notes] == ["  searched"]  # the nearest names are not said twice


# --- the real ComfyUI: a linked checkpoint and an A1111 folder, found the same way by both -------------


@pytest.mark.comfyui
def test_real_comfyui_loads_what_plasmad_finds(tmp_path: Path, daemon_env: DaemonEnv) -> None:
    """The issue's setup, for real: the checkpoint is a symlink in models/checkpoints (a multi-GB
    file kept elsewhere), the LoRA lives in an A1111 folder named by extra_model_paths.yaml. plasmad
    accepts both names, ComfyUI loads both, and GET /models says where each was found."""
    if not (COMFY_PYTHON.exists() and (COMFY_DIR / "models" / "checkpoints" / DEMO_CHECKPOINT).exists()):
        if os.environ.get("CI"):
            pytest.fail("the demo ComfyUI is not set up (scripts/setup-comfyui.sh)")
        pytest.skip("the demo ComfyUI is not set up (scripts/setup-comfyui.sh)")
    base = tmp_path / "comfy-base"  # ComfyUI's own models/ moves here (--base-directory)
    (base / "models" / "checkpoints").mkdir(parents=True)
    (base / "custom_nodes").mkdir()  # ComfyUI 0.3.75 lists it at start under --base-directory
    (base / "models" / "checkpoints" / "linked.safetensors").symlink_to(
        COMFY_DIR / "models" / "checkpoints" / DEMO_CHECKPOINT
    )
    webui = tmp_path / "stable-diffusion-webui"
    (webui / "models" / "Lora").mkdir(parents=True)
    (webui / "models" / "Lora" / "june.safetensors").symlink_to(COMFY_DIR / "models" / "loras" / DEMO_LORA)
    extra = tmp_path / "extra_model_paths.yaml"
    extra.write_text(f"a111:\n    base_path: {webui}\n    loras: |\n        models/Lora\n")
    daemon_env.env.update(
        COMFYUI_MANAGED="1",
        COMFYUI_PYTHON=str(COMFY_PYTHON),
        COMFYUI_DIR=str(COMFY_DIR),
        COMFYUI_URL=f"http://127.0.0.1:{free_port()}",
        COMFYUI_ARGS=f"--cpu --base-directory {base} --extra-model-paths-config {extra} "
        f"--output-directory {tmp_path / 'comfy-out'} --disable-auto-launch",
        PLASMA_CHECKPOINT="linked.safetensors",
    )
    d = DaemonProcess(daemon_env, startup_timeout=240)
    try:
        _, models = d.http("GET", "/models")
        assert models["comfyuiError"] is None, models["comfyuiError"]
        linked = _by_name(models["checkpoints"])["linked.safetensors"]
        assert linked["usable"] and linked["comfyui"] is True
        assert linked["folder"] == str(base / "models" / "checkpoints")
        june = _by_name(models["loras"])["june.safetensors"]
        assert june["usable"] and june["comfyui"] is True and june["folder"] == str(webui / "models" / "Lora")
        _, report = d.http("GET", "/doctor")
        checks = {c["id"]: c for c in report["checks"]}
        assert checks["models.checkpoint"]["status"] == "ok", checks["models.checkpoint"]
        paths = checks["models.paths"]
        assert paths["status"] == "ok" and str(webui / "models" / "Lora") in paths["detail"]
        body = {"prompt": "spyke_plasma_v1, standing", "loraId": "june.safetensors",
                "resolution": {"width": 64, "height": 64}, "steps": 2}
        status, job = d.http("POST", "/jobs", body)
        assert status == 202, job
        done = d.wait_job(job["id"], 300)
        assert done["status"] == "succeeded", done
        _, graph = d.http("GET", f"/jobs/{job['id']}/workflow")
        loaders = {node["class_type"]: node["inputs"] for node in graph.values()}
        assert loaders["CheckpointLoaderSimple"]["ckpt_name"] == "linked.safetensors"
        assert loaders["LoraLoader"]["lora_name"] == "june.safetensors"
    finally:
        d.stop()
