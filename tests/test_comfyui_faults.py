"""Unattended runs against the real ComfyUI, with the faults made real (issue 10): ComfyUI down at
submit, killed mid-page and started again on the same port, frozen with SIGSTOP (a hang) and
thawed, a managed one frozen (killed and restarted by plasmad), a LoRA that does not fit the
checkpoint. Each test runs its own ComfyUI (tests/support/comfy_faults.py): the session's shared
one is never faulted. Hang limits are set low (PLASMA_COMFYUI_HANG) so that each test takes
seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.comfy_faults import OwnComfyUI, comfy_copy, wait_until, write_missing_keys_lora
from tests.support.processes import (
    COMFY_DIR,
    COMFY_PYTHON,
    DEMO_CHECKPOINT,
    DaemonEnv,
    DaemonProcess,
    free_port,
)

pytestmark = pytest.mark.comfyui

TINY = {"resolution": {"width": 64, "height": 64}, "steps": 2}
#: Long enough (a few seconds here) to be caught mid-run.
SLOW = {"resolution": {"width": 192, "height": 192}, "steps": 6}


@pytest.fixture
def own_comfyui(comfyui: Any, tmp_path: Path) -> Iterator[OwnComfyUI]:
    # `comfyui` only for its skip (or CI failure) when the demo ComfyUI is not set up.
    own = OwnComfyUI(tmp_path)
    yield own
    own.close()


def sampling(d: DaemonProcess, job_id: str) -> bool:
    """The job's prompt is in ComfyUI and sampling (a progress step was reported)."""
    _, job = d.http("GET", f"/jobs/{job_id}")
    return job["status"] == "running" and bool(job["progress"]) and job["progress"]["step"] >= 1


def history_prefixes(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/history?max_items=200", timeout=10) as resp:
        history = json.loads(resp.read())
    return [
        n["inputs"].get("filename_prefix")
        for h in history.values()
        for n in h["prompt"][2].values()
        if n["class_type"] == "SaveImage"
    ]


def test_pages_queued_while_comfyui_is_down_and_killed_mid_page_all_land_once(
    own_comfyui: OwnComfyUI, daemon_env: DaemonEnv, start_daemon: Any
) -> None:
    pipeline = daemon_env.pipeline_dir
    for page in (1, 2, 3):
        prompt = pipeline / "prompts" / "ch-01" / f"p{page:03d}.txt"
        prompt.parent.mkdir(parents=True, exist_ok=True)
        prompt.write_text(f"spyke_plasma_v1, page {page}\nnegative: blurry\n")
    # A fresh plasmad that has never seen a ComfyUI, and none answers.
    d: DaemonProcess = start_daemon(COMFYUI_URL=own_comfyui.url, COMFYUI_DIR=str(COMFY_DIR))
    ids = []
    for page in (1, 2, 3):
        status, job = d.http("POST", "/pages", {"chapter": 1, "page": page, **(SLOW if page == 2 else TINY)})
        assert status == 202, job
        ids.append(job["id"])
    _, first = d.http("GET", f"/jobs/{ids[0]}")
    assert first["status"] == "queued"
    assert first["waitingFor"].startswith(f"ComfyUI at {own_comfyui.url}, not answering since ")

    own_comfyui.start()
    wait_until(lambda: sampling(d, ids[1]), "page 2 to be sampling", 120)
    own_comfyui.kill()  # a crash in the middle of page 2
    own_comfyui.start()  # the artist starts it again, on the same port

    done = [d.wait_job(i, 240) for i in ids]
    assert [j["status"] for j in done] == ["succeeded"] * 3, done
    assert [len(j["result"]["attempts"]) for j in done] == [0, 1, 0]
    assert f"ComfyUI at {own_comfyui.url}" in done[1]["result"]["attempts"][0]["reason"]
    raw = pipeline / "output" / "ch-01" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == [
        f"ch01_p{page:03d}_v1{ext}" for page in (1, 2, 3) for ext in (".png", ".workflow.json")
    ]
    entries = json.loads((raw.parent / "generation-log.json").read_text())
    assert sorted(e["jobId"] for e in entries) == sorted(ids)
    # PLASMA_UNET_DTYPE=auto, decided when the first job started: this ComfyUI runs on a CPU.
    assert {e["unetDtype"] for e in entries} == {"fp32"}
    workflow = json.loads((raw / "ch01_p001_v1.workflow.json").read_text())
    assert [n["inputs"]["dtype"] for n in workflow.values() if n["class_type"] == "ModelComputeDtype"] == [
        "fp32"
    ]


def test_a_frozen_comfyui_is_a_hang_and_its_prompt_is_collected_after_sigcont(
    own_comfyui: OwnComfyUI, start_daemon: Any
) -> None:
    own_comfyui.start()
    d: DaemonProcess = start_daemon(
        COMFYUI_URL=own_comfyui.url, COMFYUI_DIR=str(COMFY_DIR), PLASMA_COMFYUI_HANG="3"
    )
    status, job = d.http("POST", "/jobs", {"prompt": "spyke_plasma_v1, standing", **SLOW})
    assert status == 202, job
    wait_until(lambda: sampling(d, job["id"]), "the job to be sampling", 120)
    own_comfyui.freeze()

    for _ in range(3):  # /health never waits on a hung ComfyUI
        started = time.monotonic()
        status, health = d.http("GET", "/health")
        assert status == 200 and time.monotonic() - started < 1.0
        time.sleep(0.5)

    def waiting() -> dict[str, Any] | None:
        _, view = d.http("GET", f"/jobs/{job['id']}")
        return view if "not answering since" in (view["waitingFor"] or "") else None

    view = wait_until(waiting, "the hang to be seen", 60)
    assert view["status"] == "running"  # not failed: it waits for ComfyUI, and says so
    _, health = d.http("GET", "/health")
    assert health["comfyui"] is False and "not answering since" in health["comfyuiInfo"]["error"]
    own_comfyui.thaw()

    done = d.wait_job(job["id"], 120)
    assert done["status"] == "succeeded", done
    [attempt] = done["result"]["attempts"]
    assert "hung: nothing heard for" in attempt["reason"]
    # ComfyUI rendered the prompt it had when it was frozen; plasmad collected it, did not send it again.
    assert history_prefixes(own_comfyui.url).count(f"plasma/{job['id']}") == 1
    assert Path(done["outputs"][0]).is_file()


def test_a_frozen_managed_comfyui_is_restarted_and_a_lora_that_does_not_fit_fails_its_job(
    comfyui: Any, tmp_path: Path, daemon_env: DaemonEnv
) -> None:
    folder = comfy_copy(tmp_path)  # its own models/: this test adds a LoRA there
    swap = folder / "models" / "loras" / "swap.safetensors"
    os.link(folder / "models" / "loras" / "spyke_plasma_demo.safetensors", swap)
    out = tmp_path / "comfy-out"
    daemon_env.env.update(
        COMFYUI_MANAGED="1",
        COMFYUI_PYTHON=str(COMFY_PYTHON),
        COMFYUI_DIR=str(folder),
        COMFYUI_URL=f"http://127.0.0.1:{free_port()}",
        COMFYUI_ARGS=f"--cpu --base-directory {folder} --output-directory {out} --disable-auto-launch",
        PLASMA_CHECKPOINT=DEMO_CHECKPOINT,
        PLASMA_COMFYUI_HANG="3",
    )
    d = DaemonProcess(daemon_env, startup_timeout=240)
    try:
        _, health = d.http("GET", "/health")
        pid = health["comfyuiInfo"]["process"]["pid"]
        status, job = d.http("POST", "/jobs", {"prompt": "spyke_plasma_v1, standing", **SLOW})
        assert status == 202, job
        wait_until(lambda: sampling(d, job["id"]), "the job to be sampling", 120)
        os.killpg(pid, signal.SIGSTOP)  # the managed ComfyUI hangs

        # Queued while ComfyUI hangs, its LoRA fine when it is checked; then the file is replaced
        # by one made for another model (the artist re-exported it).
        body = {"prompt": "spyke_plasma_v1", "loraId": swap.name, "chapter": 1, "page": 1, **TINY}
        status, page = d.http("POST", "/jobs", body)
        assert status == 202, page
        bad = write_missing_keys_lora(tmp_path / "bad.safetensors")
        os.replace(bad, swap)

        done = d.wait_job(job["id"], 240)
        assert done["status"] == "succeeded", done
        [attempt] = done["result"]["attempts"]
        assert "hung" in attempt["reason"]
        _, health = d.http("GET", "/health")
        process = health["comfyuiInfo"]["process"]
        assert process["restarts"] == 1 and process["pid"] != pid
        assert process["lastExitReason"].startswith("killed by plasmad: hung")

        failed = d.wait_job(page["id"], 120)
        assert failed["status"] == "failed", failed
        message = failed["error"]["message"]
        assert "could not apply the LoRA swap.safetensors" in message
        assert "'lora key not loaded' lines" in message
        assert not list((daemon_env.pipeline_dir / "output" / "ch-01").rglob("*.png"))  # no page published
    finally:
        code = d.stop() if d.proc.poll() is None else d.proc.returncode
    assert code == 0
