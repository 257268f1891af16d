"""The whole LoRA loop against the real ComfyUI 0.3.75 and the tiny demo model, through a real
plasmad: train with ComfyUI's own nodes -> samples -> promote -> generate with the new LoRA.

Tiny on purpose (CPU): 64 px images, 4 steps in chunks of 2. Everything written into the demo
ComfyUI's folders (the promoted LoRA, the sample copies) is removed afterwards.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from plasmad.comfy import modelfiles
from tests.support.processes import ComfyServer, DaemonProcess, remove_from_comfyui
from tests.support.training import NAME, STEP_FILES, make_dataset

pytestmark = pytest.mark.comfyui

SMALL = {"steps": 2, "resolution": {"width": 64, "height": 64}}
WAIT_S = 300  #: the longest wait for a training, or its samples, on a CPU
POLL_S = 0.2


def pixels(path: str) -> bytes:
    with Image.open(path) as img:
        return img.convert("RGB").tobytes()


@pytest.fixture
def daemon(comfyui: ComfyServer, start_daemon: Any) -> DaemonProcess:
    return start_daemon(COMFYUI_URL=comfyui.url, COMFYUI_DIR=str(comfyui.dir))  # type: ignore[no-any-return]


@pytest.fixture
def cleanup(comfyui: ComfyServer) -> Iterator[list[Path]]:
    """Paths in the demo ComfyUI to remove after the test, whatever happened."""
    paths: list[Path] = []
    yield paths
    remove_from_comfyui(comfyui, paths)


def test_train_sample_promote_generate(
    comfyui: ComfyServer, daemon: DaemonProcess, tmp_path: Path, cleanup: list[Path]
) -> None:
    name = f"plasma-test-{secrets.token_hex(3)}"
    loras = comfyui.dir / "models" / "loras"
    cleanup.append(loras / f"{name}.safetensors")
    log_start = comfyui.log.stat().st_size
    dataset = make_dataset(tmp_path / "data")
    name_in_steps = [f.replace(NAME, name) for f in STEP_FILES[:2]]

    started = time.monotonic()
    status, t = daemon.http(
        "POST",
        "/loras/train",
        {
            "datasetDir": str(dataset),
            "outputName": name,
            "steps": 4,
            "saveEverySteps": 2,
            "resolution": 64,
            "learningRate": 1e-3,
            "networkDim": 8,
        },
    )
    assert status == 202, t
    cleanup.append(loras / "plasma-samples" / t["id"])
    assert t["trainer"] == "comfyui" and any("NO GPU" in w for w in t["warnings"])
    done = daemon.wait_for(
        f"/loras/{t['id']}/status", lambda s: s["status"] not in ("queued", "running"), WAIT_S, POLL_S
    )
    train_seconds = time.monotonic() - started
    assert done["status"] == "succeeded", done
    assert (done["step"], done["total"], done["outcome"]) == (4, 4, "succeeded")
    assert [c["file"] for c in done["checkpoints"]] == [*name_in_steps, f"{name}.safetensors"]
    assert all(c["complete"] for c in done["checkpoints"]) and done["secPerStep"] is not None
    assert any("saving checkpoint" in line for line in done["logTail"]), done["logTail"]
    # kohya's layout: lora_unet_* keys, SD 1.5 by its header; ComfyUI's own working files are gone.
    final = Path(done["outputDir"]) / f"{name}.safetensors"
    info = modelfiles.inspect(final)
    assert (info.role, info.family) == ("lora", "sd15")
    tensors, meta = modelfiles.read_header(final)
    assert all(k.startswith("lora_unet_") for k in tensors) and meta["ss_network_dim"] == "8"
    assert not (comfyui.dir / "input" / "plasma-train" / t["id"]).exists()
    assert not (loras / "plasma-train" / t["id"]).exists()

    # Samples: every checkpoint, the same prompt and seed, one sheet.
    started = time.monotonic()
    status, s = daemon.http(
        "POST",
        f"/loras/{t['id']}/samples",
        {"prompts": ["spyke_plasma_v1, full body, standing, white background"], "seed": 5, **SMALL},
    )
    assert status in (200, 202), s
    s = daemon.wait_for(
        f"/loras/{t['id']}/samples", lambda a: a["state"] == "done" and bool(a["sheet"]), WAIT_S, POLL_S
    )
    samples_seconds = time.monotonic() - started
    assert s["failed"] == [] and s["total"] == 3 and Path(s["sheet"]).is_file()

    # Promote step 4; ComfyUI lists it; a generation with it succeeds and every key loads.
    status, p = daemon.http("POST", f"/loras/{t['id']}/promote", {"step": 4})
    assert status == 200 and p["listed"] is True, p
    assert (loras / f"{name}.safetensors").read_bytes() == (
        Path(done["outputDir"]) / name_in_steps[1]
    ).read_bytes()
    status, job = daemon.http(
        "POST", "/jobs", {"prompt": "spyke_plasma_v1, full body", "loraId": p["loraId"], "seed": 5, **SMALL}
    )
    assert status == 202, job
    with_lora = daemon.wait_job(job["id"])
    assert with_lora["status"] == "succeeded", with_lora
    status, job = daemon.http("POST", "/jobs", {"prompt": "spyke_plasma_v1, full body", "seed": 5, **SMALL})
    base = daemon.wait_job(job["id"])
    assert pixels(with_lora["outputs"][0]) != pixels(base["outputs"][0])  # the LoRA does something
    with comfyui.log.open("rb") as f:
        f.seek(log_start)
        assert b"lora key not loaded" not in f.read()
    print(
        f"\ntiny ComfyUI training, 4 steps: {train_seconds:.1f} s; 3 samples + sheet: {samples_seconds:.1f} s"
    )


def test_cancel_interrupts_the_training_prompt(
    comfyui: ComfyServer, daemon: DaemonProcess, tmp_path: Path, cleanup: list[Path]
) -> None:
    dataset = make_dataset(tmp_path / "data")
    status, t = daemon.http(
        "POST",
        "/loras/train",
        {
            "datasetDir": str(dataset),
            "outputName": f"plasma-cancel-{secrets.token_hex(3)}",
            "steps": 400,
            "saveEverySteps": 400,
            "resolution": 64,
            "networkDim": 4,
        },
    )
    assert status == 202, t
    daemon.wait_for(
        f"/loras/{t['id']}/status", lambda s: s["status"] == "running" and s["step"] >= 2, WAIT_S, POLL_S
    )
    started = time.monotonic()
    status, _ = daemon.http("POST", f"/loras/{t['id']}/cancel", {})
    assert status == 200
    done = daemon.wait_for(
        f"/loras/{t['id']}/status", lambda s: s["status"] not in ("queued", "running"), 60, POLL_S
    )
    assert done["status"] == "cancelled" and done["outcome"] == "cancelled", done
    assert time.monotonic() - started < 30 and done["step"] < 400
    assert not (comfyui.dir / "input" / "plasma-train" / t["id"]).exists()
    # ComfyUI is free again: a generation runs at once.
    status, job = daemon.http("POST", "/jobs", {"prompt": "x", **SMALL})
    assert daemon.wait_job(job["id"], 60)["status"] == "succeeded"
