"""Opt-in: a real kohya sd-scripts training through a real plasmad.

Skipped unless KOHYA_PYTHON and KOHYA_SCRIPT are set (kohya cannot be installed from the package
registries, so CI has none). It also needs COMFYUI_DIR with a full-size SD 1.5 checkpoint named by
PLASMA_CHECKPOINT (sd-scripts hard-codes the full architecture: the tiny demo model will not do) and,
offline, KOHYA_EXTRA_ARGS="--tokenizer_cache_dir DIR". COMFYUI_URL is optional: without a ComfyUI
the POST /free before the training just fails with a warning. Tiny: 64 px, 4 steps.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from plasmad.comfy import modelfiles
from tests.support.processes import DaemonProcess
from tests.support.training import make_dataset

pytestmark = pytest.mark.skipif(
    not (os.environ.get("KOHYA_PYTHON") and os.environ.get("KOHYA_SCRIPT")),
    reason="set KOHYA_PYTHON and KOHYA_SCRIPT to drive a real kohya",
)


def test_a_real_kohya_training(start_daemon: Any, tmp_path: Path) -> None:
    missing = [k for k in ("COMFYUI_DIR", "PLASMA_CHECKPOINT") if not os.environ.get(k)]
    if missing:
        pytest.skip(f"a real kohya run also needs {', '.join(missing)} (a full-size SD 1.5 checkpoint)")
    names = (
        "KOHYA_PYTHON",
        "KOHYA_SCRIPT",
        "KOHYA_EXTRA_ARGS",
        "COMFYUI_DIR",
        "COMFYUI_URL",
        "PLASMA_CHECKPOINT",
    )
    env = {k: os.environ[k] for k in names if os.environ.get(k)}
    env.setdefault("COMFYUI_URL", "http://127.0.0.1:9")
    d: DaemonProcess = start_daemon(**env)
    dataset = make_dataset(tmp_path / "data")
    status, t = d.http(
        "POST",
        "/loras/train",
        {
            "datasetDir": str(dataset),
            "outputName": "plasma_kohya_test",
            "steps": 4,
            "saveEverySteps": 2,
            "resolution": 64,
        },
    )
    assert status == 202, t
    assert t["trainer"] == "kohya"
    deadline = time.monotonic() + 3600
    while True:
        _, done = d.http("GET", f"/loras/{t['id']}/status")
        if done["status"] not in ("queued", "running"):
            break
        assert time.monotonic() < deadline, done
        time.sleep(1)
    assert done["status"] == "succeeded", (done["reason"], done["logTail"])
    assert [c["step"] for c in done["checkpoints"]] == [2, 4, None]
    assert done["loss"] is not None
    info = modelfiles.inspect(Path(done["outputDir"]) / "plasma_kohya_test.safetensors")
    assert (info.role, info.family) == ("lora", "sd15")
