"""Reproductions and consistency checks against the real ComfyUI 0.3.75 and the demo model, through
a real plasmad process: a page reproduced pixel-identical on this CPU (with its sampler really run
again, not served from ComfyUI's cache), a LoRA replaced under the same name named and refused, and
with --force really used; the PNG's fingerprints read back with Pillow; three same-seed renders
with an SSIM of 1.0."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support.processes import DEMO_LORA, ComfyServer, DaemonEnv, DaemonProcess

pytestmark = pytest.mark.comfyui

SMALL = {"resolution": {"width": 64, "height": 64}, "steps": 2}


@pytest.fixture
def daemon(comfyui: ComfyServer, daemon_env: DaemonEnv, start_daemon: Any) -> DaemonProcess:
    return start_daemon(COMFYUI_URL=comfyui.url, COMFYUI_DIR=str(comfyui.dir))  # type: ignore[no-any-return]


@pytest.fixture
def own_lora(comfyui: ComfyServer) -> Iterator[Path]:
    """A copy of the demo LoRA under a name of this test's own (the demo's is shared)."""
    folder = comfyui.dir / "models" / "loras" / f"plasma-test-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    lora = folder / "spyke.safetensors"
    shutil.copyfile(comfyui.dir / "models" / "loras" / DEMO_LORA, lora)
    yield lora
    shutil.rmtree(folder, ignore_errors=True)


def retrain(lora: Path, factor: float) -> None:
    """Save a "retrained" LoRA over `lora`, as an artist would: the same name and size, other
    weights (every lora_up tensor scaled), written beside and moved over the old file."""
    data = bytearray(lora.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    base = 8 + length
    for name, spec in header.items():
        if name != "__metadata__" and "lora_up" in name:
            start, end = (base + o for o in spec["data_offsets"])
            weights = np.frombuffer(bytes(data[start:end]), dtype=np.float32) * factor
            data[start:end] = weights.astype(np.float32).tobytes()
    tmp = lora.with_suffix(".tmp")
    tmp.write_bytes(bytes(data))
    os.replace(tmp, lora)


def reproduce(d: DaemonProcess, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, answer = d.http("POST", f"/images/{name}/reproduce", body)
    return status, dict(answer)


def compared(d: DaemonProcess, record: dict[str, Any]) -> dict[str, Any]:
    # Generous: each run reloads the model after ComfyUI's cache is cleared; the machine is shared.
    path = f"/reproductions/{record['id']}"
    return dict(d.wait_for(path, lambda r: r["state"] == "done", timeout=600, interval=0.3))


def test_a_page_is_reproduced_and_a_replaced_lora_refused(daemon: DaemonProcess, own_lora: Path) -> None:
    lora_id = f"{own_lora.parent.name}/{own_lora.name}"
    status, job = daemon.http(
        "POST", "/jobs", {"prompt": "spyke_plasma_v1, standing", "loraId": lora_id, "seed": 7,
                          "chapter": 1, "page": 1, **SMALL},
    )  # fmt: skip
    assert status == 202, job
    job = daemon.wait_job(job["id"])
    assert job["status"] == "succeeded", job
    page = Path(job["outputs"][0])
    name = page.stem

    # The fingerprints: in the log entry, and in the PNG beside ComfyUI's own graph (Pillow reads them).
    [entry] = json.loads((page.parent.parent / "generation-log.json").read_text())
    prints = entry["fingerprints"]
    assert prints["lora"]["file"] == lora_id
    assert prints["lora"]["sha256"] == hashlib.sha256(own_lora.read_bytes()).hexdigest()
    assert prints["lora"]["autov2"] == prints["lora"]["sha256"][:10]
    assert set(prints) == {"checkpoint", "lora"}
    with Image.open(page) as im:
        assert json.loads(im.text["plasma_fingerprints"]) == prints
        assert json.loads(im.text["prompt"])  # ComfyUI's chunk is still there

    # Reproduced: the same pixels, the sampler run again (its steps reported, nothing cached).
    status, record = reproduce(daemon, name, {"runs": 1})
    assert status == 202, record
    done = compared(daemon, record)
    for result in done["results"]:
        assert result["status"] == "succeeded", result
        assert (result["identical"], result["maxDiff"], result["ssim"]) == (True, 0, 1.0)
        assert result["samplerSteps"] == 2
    assert done["identical"] is True and Path(done["sheet"]).is_file()
    folder = daemon.denv.state_dir / "reproductions" / name / done["id"]
    assert Path(done["results"][0]["image"]).parent == folder

    # The LoRA retrained and saved under the same name: named, refused.
    retrain(own_lora, 3.0)
    status, error = reproduce(daemon, name, {})
    assert status == 409, error
    assert lora_id in error["error"]["message"] and error["error"]["details"]["files"][0]["role"] == "lora"
    # Forced: ComfyUI really renders with the new file (its old one was not kept), so it differs.
    status, record = reproduce(daemon, name, {"force": True})
    assert status == 202, record
    [result] = compared(daemon, record)["results"]
    assert result["status"] == "succeeded" and result["identical"] is False and result["maxDiff"] > 0
    assert result["ssim"] < 1.0


def test_three_same_seed_renders_agree(daemon: DaemonProcess) -> None:
    """Acceptance criterion 2 on this CPU: three renders of one seed, an SSIM of 1.0, the whole
    picture and a region of it (where the right bracer would be)."""
    body = {"prompt": "spyke_plasma_v1, right bracer", "loraId": DEMO_LORA, "seed": 11, **SMALL,
            "crop": {"x": 32, "y": 16, "width": 24, "height": 24}}
    status, record = daemon.http("POST", "/consistency", body)
    assert status == 202, record
    done = compared(daemon, record)
    assert [r["status"] for r in done["results"]] == ["succeeded"] * 3
    assert all(r["samplerSteps"] == 2 for r in done["results"])  # each rendered, none from the cache
    assert done["matrix"] == [[1.0] * 3] * 3 and done["identical"] is True and done["minSsim"] == 1.0
    with Image.open(done["sheet"]) as sheet:
        assert sheet.width >= 3 * 256
