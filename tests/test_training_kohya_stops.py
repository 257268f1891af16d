"""Opt-in: a real kohya sd-scripts training stopped two ways, through a real plasmad: cancelled
(SIGTERM to its process group), and its trainer killed with SIGKILL (what the kernel's out-of-memory
killer does). Both keep the checkpoints already written, leave no kohya process behind, and are
told apart (`cancelled`; `out_of_memory` with advice for the run's own settings). Also: the
preflight against the registry's own torchvision wheel, which installs on a CPU torch and then
fails at import.

Skipped unless KOHYA_PYTHON and KOHYA_SCRIPT are set, like tests/test_training_kohya.py (see there
for COMFYUI_DIR, PLASMA_CHECKPOINT and KOHYA_EXTRA_ARGS). 64 px, network_dim 4, a checkpoint every
step, so the first checkpoint comes soon after the model is loaded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from plasmad.comfy import modelfiles
from plasmad.training.kohya.preflight import preflight
from tests.support.processes import DaemonProcess
from tests.support.training import make_dataset

pytestmark = pytest.mark.skipif(
    not (os.environ.get("KOHYA_PYTHON") and os.environ.get("KOHYA_SCRIPT")),
    reason="set KOHYA_PYTHON and KOHYA_SCRIPT to drive a real kohya",
)
NAMES = (
    "KOHYA_PYTHON", "KOHYA_SCRIPT", "KOHYA_EXTRA_ARGS", "COMFYUI_DIR", "COMFYUI_URL", "PLASMA_CHECKPOINT"
)
LOAD_TIMEOUT_S = 900  #: loading a full-size checkpoint on a loaded 2-core machine, then one step


def _start(start_daemon: Any, tmp_path: Path) -> tuple[DaemonProcess, dict[str, Any]]:
    missing = [k for k in ("COMFYUI_DIR", "PLASMA_CHECKPOINT") if not os.environ.get(k)]
    if missing:
        pytest.skip(f"a real kohya run also needs {', '.join(missing)} (a full-size SD 1.5 checkpoint)")
    env = {k: os.environ[k] for k in NAMES if os.environ.get(k)}
    env.setdefault("COMFYUI_URL", "http://127.0.0.1:9")
    d: DaemonProcess = start_daemon(**env)
    body = {
        "datasetDir": str(make_dataset(tmp_path / "data")),
        "outputName": "plasma_kohya_stop",
        "steps": 50,
        "saveEverySteps": 1,
        "resolution": 64,
        "networkDim": 4,
        "networkAlpha": 2,
    }
    status, t = d.http("POST", "/loras/train", body)
    assert status == 202, t
    first = d.wait_for(
        f"/loras/{t['id']}/status",
        lambda s: s["status"] not in ("queued", "running") or any(c["complete"] for c in s["checkpoints"]),
        timeout=LOAD_TIMEOUT_S,
        interval=1,
    )
    assert first["status"] == "running", (first["reason"], first["logTail"])
    return d, first


def _ended(d: DaemonProcess, training_id: str) -> dict[str, Any]:
    done: dict[str, Any] = d.wait_for(
        f"/loras/{training_id}/status",
        lambda s: s["status"] not in ("queued", "running"),
        timeout=120,
        interval=1,
    )
    return done


def _processes_naming(text: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append((int(entry.name), cmdline))
    return found


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm) state": the parent's pid


def _kept(done: dict[str, Any]) -> list[dict[str, Any]]:
    kept = [c for c in done["checkpoints"] if c["complete"]]
    assert kept, done
    for c in kept:  # whole files ComfyUI can load: kohya's LoRA layout, SD 1.5
        info = modelfiles.inspect(Path(c["path"]))
        assert (info.role, info.family) == ("lora", "sd15")
    return kept


def test_a_real_kohya_training_cancelled(start_daemon: Any, tmp_path: Path) -> None:
    d, running = _start(start_daemon, tmp_path)
    status, _ = d.http("POST", f"/loras/{running['id']}/cancel")
    assert status == 200
    done = _ended(d, running["id"])
    assert (done["status"], done["outcome"]) == ("cancelled", "cancelled"), done
    assert done["step"] < done["total"]
    _kept(done)
    assert _processes_naming(done["outputDir"]) == []  # the launcher and the trainer are gone


def test_a_real_kohya_trainer_killed(start_daemon: Any, tmp_path: Path) -> None:
    d, running = _start(start_daemon, tmp_path)
    # The trainer itself: the launcher's child (its data loader workers, its own children, share its
    # command line). What the out-of-memory killer picks: the biggest process.
    named = _processes_naming(running["outputDir"])
    launchers = [pid for pid, cmd in named if "accelerate.commands.launch" in cmd]
    trainers = [pid for pid, _ in named if _parent(pid) in launchers]
    assert len(launchers) == 1 and len(trainers) == 1, named
    os.kill(trainers[0], signal.SIGKILL)
    done = _ended(d, running["id"])
    assert (done["status"], done["outcome"]) == ("failed", "out_of_memory"), done
    assert "SIGKILL" in done["reason"]
    assert "--resolution" not in done["advice"]  # already at 64: no lower resolution is suggested
    assert "--dim" not in done["advice"] and "Checkpoints saved before the failure are kept" in done["advice"]
    _, job = d.http("GET", f"/jobs/{running['id']}")
    assert job["error"]["code"] == 1041
    _kept(done)
    assert _processes_naming(done["outputDir"]) == []


async def test_the_preflight_with_the_registrys_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry's torchvision wheel is CUDA-built: it unpacks on a CPU torch and fails at import."""
    python = Path(os.environ["KOHYA_PYTHON"])
    wheels = tmp_path / "wheels"
    got = await asyncio.to_thread(
        subprocess.run,
        [str(python), "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(wheels),
         "torchvision"],
        capture_output=True, text=True, timeout=300,
    )
    if got.returncode != 0 or not list(wheels.glob("torchvision-*.whl")):
        pytest.skip(f"the torchvision wheel could not be fetched: {got.stderr.strip()[-300:]}")
    site = tmp_path / "site"
    with zipfile.ZipFile(next(wheels.glob("torchvision-*.whl"))) as wheel:
        wheel.extractall(site)
    monkeypatch.setenv("PYTHONPATH", str(site))  # ahead of whatever torchvision kohya's venv has
    report = await preflight(python, Path(os.environ["KOHYA_SCRIPT"]))
    assert report.torch_version is not None and report.accelerate_version is not None
    assert report.installed["torchvision"] is True
    assert list(report.import_errors) == ["torchvision"], report.errors
    assert report.errors[0].startswith(f"torchvision cannot be imported in {python}: ")
    assert report.import_errors["torchvision"].split(": ", 1)[0].endswith(("Error", "Exception"))
