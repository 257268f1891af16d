"""No silent wrong pages, no lost ones, against the real ComfyUI 0.3.75 and a real plasmad (issue 10,
items 3, 4 and 7): a LoRA built to miss the tiny checkpoint's keys, a LoRA whose weights are NaN,
a disk that fills while ComfyUI renders.

The LoRAs are built here, into a folder the session's ComfyUI reads besides the demo's own
(`--extra-model-paths-config`); plasmad's COMFYUI_DIR is a folder whose models/ point at the demo
checkpoints and at that folder.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from plasmad.comfy import modelfiles
from plasmad.comfy.templates import TXT2IMG_LORA, TemplateSet
from plasmad.core.config import BUNDLED_TEMPLATES
from plasmad.core.errors import ErrorCode
from tests.support.processes import COMFY_DIR, DEMO_CHECKPOINT, DEMO_LORA, ComfyServer, DaemonProcess
from tests.support.storage import fill, tmpfs

pytestmark = pytest.mark.comfyui

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = {"resolution": {"width": 64, "height": 64}, "steps": 2, "seed": 11}
MISFIT = "plasma-test-misfit.safetensors"
NAN = "plasma-test-nan.safetensors"
_BYTES = {"F32": 4, "F16": 2}


def write_lora(path: Path, tensors: dict[str, tuple[str, list[int]]], value: Any) -> Path:
    """A real safetensors LoRA: every tensor filled by `value(name)` (a float), little-endian."""
    metadata = {"ss_base_model_version": "sd_v1", "ss_network_module": "networks.lora"}
    header: dict[str, Any] = {"__metadata__": metadata}
    offset, blobs = 0, []
    for name, (dtype, shape) in sorted(tensors.items()):
        count = 1
        for d in shape:
            count *= d
        fmt = "<e" if dtype == "F16" else "<f"
        blob = struct.pack(fmt, value(name)) * count
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
    return path


def misfit_lora(folder: Path) -> Path:
    """kohya's real LoRA layout for a full-size SD 1.5 (tests/fixtures/kohya), at rank 1: its
    names and sizes miss the tiny demo checkpoint's UNet."""
    header = json.loads((FIXTURES / "kohya" / "success" / "lora_header.json").read_text())
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = list(entry["shape"])
        if name.endswith("lora_down.weight"):
            shape[0] = 1
        elif name.endswith("lora_up.weight"):
            shape[1] = 1
        tensors[name] = ("F16", shape)
    return write_lora(folder / MISFIT, tensors, lambda name: 0.01)


def nan_lora(folder: Path) -> Path:
    """The demo LoRA's exact layout, its lora_up weights NaN: the fp16 failure of Apple GPUs,
    made on demand (ComfyUI then draws all black and reports success)."""
    tensors, _ = modelfiles.read_header(COMFY_DIR / "models" / "loras" / DEMO_LORA)
    layout = {name: (entry["dtype"], list(entry["shape"])) for name, entry in tensors.items()}
    return write_lora(folder / NAN, layout, lambda name: float("nan") if "lora_up" in name else 1.0)


@pytest.fixture
def daemon(comfyui: ComfyServer, daemon_env: Any, start_daemon: Any, tmp_path: Path) -> DaemonProcess:
    assert comfyui.extra_loras is not None
    models = tmp_path / "ComfyUI" / "models"
    models.mkdir(parents=True)
    for kind in ("checkpoints", "controlnet"):
        (models / kind).symlink_to(COMFY_DIR / "models" / kind)
    (models / "loras").symlink_to(comfyui.extra_loras)
    return start_daemon(COMFYUI_URL=comfyui.url, COMFYUI_DIR=str(models.parent))  # type: ignore[no-any-return]


def test_a_lora_that_misses_the_checkpoint_is_refused_with_the_count_comfyui_would_log(
    comfyui: ComfyServer, daemon: DaemonProcess
) -> None:
    assert comfyui.extra_loras is not None
    lora = misfit_lora(comfyui.extra_loras)
    try:
        status, answer = daemon.http("POST", "/jobs", {"prompt": "spyke", "loraId": MISFIT, **SMALL})
        assert status == 400 and answer["error"]["field"] == "loraId", answer
        assert "192 of its 264 modules would not load" in answer["error"]["message"]
        assert "trained for another model" in answer["error"]["message"]

        # What ComfyUI itself does with it, asked directly: it loads what it can, logs the rest, and
        # "succeeds". Its own count must be ours: 3 lines per missing module, 1 per misshapen one.
        offset = comfyui.log.stat().st_size
        slots = {
            "prompt_text": "spyke", "negative_prompt": "", "seed": 1, "checkpoint_name": DEMO_CHECKPOINT,
            "steps": 1, "cfg": 7.0, "sampler": "euler", "scheduler": "normal", "unet_dtype": "fp32",
            "width": 64, "height": 64, "lora_name": MISFIT, "lora_strength": 1.0,
            "filename_prefix": "plasma-test/misfit",
        }  # fmt: skip
        graph = TemplateSet(BUNDLED_TEMPLATES).get(TXT2IMG_LORA).fill(slots)
        history = run_straight(comfyui.url, graph)
        assert history["status"]["status_str"] == "success"
        text = comfyui.log.read_bytes()[offset:].decode(errors="replace")
        assert text.count("lora key not loaded") == 3 * 168
        assert text.count("is invalid for input of size") == 24
    finally:
        lora.unlink()


def run_straight(url: str, graph: dict[str, Any]) -> dict[str, Any]:
    """POST a graph to ComfyUI and wait for its history (no plasmad in between)."""
    prompt_id = str(uuid.uuid4())
    body = json.dumps({"prompt": graph, "prompt_id": prompt_id}).encode()
    req = urllib.request.Request(f"{url}/prompt", body, {"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/history/{prompt_id}", timeout=30) as resp:
            history = json.loads(resp.read())
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            return dict(history[prompt_id])
        time.sleep(0.2)
    raise TimeoutError(prompt_id)


def test_a_lora_with_nan_weights_draws_black_and_the_page_is_kept_aside_not_published(
    comfyui: ComfyServer, daemon: DaemonProcess
) -> None:
    assert comfyui.extra_loras is not None
    lora = nan_lora(comfyui.extra_loras)
    try:
        body = {"prompt": "spyke", "loraId": NAN, "chapter": 1, "page": 1, **SMALL}
        status, job = daemon.http("POST", "/jobs", body)
        assert status == 202, job
        job = daemon.wait_job(job["id"])
        assert job["status"] == "failed" and job["error"]["code"] == ErrorCode.BAD_IMAGE, job
        assert "is all black" in job["error"]["message"]
        assert "PLASMA_UNET_DTYPE=fp32" in job["error"]["message"]
        assert "--force-upcast-attention" in job["error"]["message"]
        kept = Path(job["error"]["details"]["rejectedImage"])
        assert kept == daemon.denv.state_dir / "rejected" / f"{job['id']}.png"
        with Image.open(kept) as image:
            assert image.convert("RGB").getextrema() == ((0, 0), (0, 0), (0, 0))
        chapter = daemon.denv.pipeline_dir / "output" / "ch-01"
        assert list((chapter / "raw").iterdir()) == [] and not (chapter / "generation-log.json").exists()
    finally:
        lora.unlink()


def test_a_disk_that_fills_during_a_real_render_loses_nothing_and_the_retry_keeps_v1(
    comfyui: ComfyServer, daemon: DaemonProcess
) -> None:
    assert comfyui.pid is not None
    chapter = daemon.denv.pipeline_dir / "output" / "ch-01"
    with tmpfs(chapter, "4m"):
        status, job = daemon.http(
            "POST", "/jobs", {"prompt": "spyke", "chapter": 1, "page": 1, **SMALL, "steps": 6}
        )
        assert status == 202, job
        daemon.wait_for(
            f"/jobs/{job['id']}", lambda j: (j.get("progress") or {}).get("step", 0) >= 1, timeout=300
        )
        # ComfyUI stands still while the disk fills, so the render cannot finish first.
        os.kill(comfyui.pid, signal.SIGSTOP)
        try:
            filler = fill(chapter)
        finally:
            os.kill(comfyui.pid, signal.SIGCONT)
        failed = daemon.wait_job(job["id"], timeout=300)  # a loaded 2-core machine renders slowly
        assert failed["status"] == "failed" and failed["error"]["code"] == ErrorCode.STORAGE, failed
        assert f"cannot write to {chapter / 'raw'}: the disk is full (ENOSPC)" in failed["error"]["message"]
        assert [p.name for p in (chapter / "raw").iterdir()] == []
        assert not (chapter / "generation-log.json").exists()

        filler.unlink()
        status, again = daemon.http("POST", f"/jobs/{job['id']}/retry", {})
        assert status == 202 and again["id"] == job["id"], again
        done = daemon.wait_job(job["id"], timeout=300)
        assert done["status"] == "succeeded", done
        assert done["outputs"] == [str(chapter / "raw" / "ch01_p001_v1.png")]
        log = json.loads((chapter / "generation-log.json").read_text())
        assert [(e["imageFile"], e["jobId"]) for e in log] == [("ch01_p001_v1.png", job["id"])]
        # ComfyUI rendered it once: the retry collected the image it still had.
        rendered = list((comfyui.output_dir / "plasma").glob(f"{job['id']}_*.png"))
        assert len(rendered) == 1, rendered
