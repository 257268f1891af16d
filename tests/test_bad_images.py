"""No silent wrong pages (issue 10, item 3): an image that is all one colour (the NaN case) fails
its job with the likely fix, is kept in <state>/rejected/ for inspection and never published; and
`retry` over both APIs and plasmactl.

In-process over the FAKE ComfyUI, which serves whatever image a test gives it; the real ComfyUI
drawing black from a LoRA with NaN weights is in tests/test_faults_comfyui.py.
"""

from __future__ import annotations

import io
import json

from PIL import Image

from plasmad.core.errors import ErrorCode
from plasmad.core.images import check_generated
from plasmad.generation import pipeline_files
from tests.fakes.fake_comfyui import BLACK_PNG, PNG
from tests.support.app import Api, rpc
from tests.support.cli import DaemonThread, ctl


def png_of(colour: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


async def test_an_all_black_page_fails_with_the_fix_and_is_kept_aside_never_published(api: Api) -> None:
    api.fake.image = BLACK_PNG
    job_id = await api.submit(chapter=1, page=1, seed=3)
    job = await api.wait_job(job_id)
    assert job["status"] == "failed" and job["outputs"] == []
    error = job["error"]
    assert error["code"] == ErrorCode.BAD_IMAGE and error["name"] == "bad_image"
    message = error["message"]
    assert f"the image of job {job_id} is all black" in message
    assert "PLASMA_UNET_DTYPE=fp32" in message and "--force-upcast-attention" in message
    kept = api.cfg.state_dir / "rejected" / f"{job_id}.png"
    assert f"kept for inspection at {kept}, not published" in message
    assert error["details"] == {"colour": "#000000", "rejectedImage": str(kept)}
    assert kept.read_bytes() == BLACK_PNG
    graph = await (await api.client.get(f"/jobs/{job_id}/workflow")).json()
    assert json.loads(kept.with_name(f"{job_id}.workflow.json").read_text()) == graph
    # Not a page: no image, no workflow, no log entry.
    chapter = pipeline_files.chapter_dir(api.cfg.pipeline_dir, 1)  # type: ignore[arg-type]
    assert list((chapter / "raw").iterdir()) == [] and not (chapter / "generation-log.json").exists()


async def test_one_colour_of_any_shade_is_refused_for_an_image_without_a_page(api: Api) -> None:
    api.fake.image = png_of((255, 255, 255))
    job_id = await api.submit(seed=4)
    job = await api.wait_job(job_id)
    assert job["error"]["code"] == ErrorCode.BAD_IMAGE
    assert "is all one colour (#ffffff)" in job["error"]["message"]
    assert not (api.cfg.state_dir / "images" / f"{job_id}.png").exists()
    assert (api.cfg.state_dir / "rejected" / f"{job_id}.png").exists()


def test_a_picture_passes_and_a_single_stray_pixel_is_a_picture() -> None:
    check_generated(PNG, "x")
    im = Image.new("RGB", (64, 64))
    im.putpixel((63, 63), (1, 0, 0))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    check_generated(buf.getvalue(), "x")


async def test_a_retried_bad_image_is_kept_aside_again_and_a_fixed_one_is_published(api: Api) -> None:
    api.fake.image = BLACK_PNG
    job_id = await api.submit(chapter=1, page=2, seed=9)
    assert (await api.wait_job(job_id))["error"]["code"] == ErrorCode.BAD_IMAGE
    # Over JSON-RPC this time; the view is the same job, queued again.
    retried = await rpc(api.stack.service, "retry", {"id": job_id})
    assert retried["result"]["id"] == job_id and retried["result"]["status"] in ("queued", "running")
    assert (await api.wait_job(job_id))["error"]["code"] == ErrorCode.BAD_IMAGE
    assert len(api.fake.prompts) == 1  # ComfyUI's render was collected again, not redone

    api.fake.image = PNG  # as if ComfyUI had been fixed and the prompt re-run
    api.fake.history.clear()
    assert (await rpc(api.stack.service, "retry", {"id": job_id}))["result"]["id"] == job_id
    job = await api.wait_job(job_id)
    assert job["status"] == "succeeded" and job["outputs"][0].endswith("ch01_p002_v1.png")
    assert len(api.fake.prompts) == 2

    refused = await rpc(api.stack.service, "retry", {"id": job_id})
    assert refused["error"]["code"] == ErrorCode.CONFLICT
    assert "only a failed or cancelled job can be retried" in refused["error"]["message"]


def test_plasmactl_retry_runs_the_job_again_and_waits(daemon: DaemonThread) -> None:
    daemon.fake.image = BLACK_PNG
    submitted = ctl(daemon, "submit", "-p", "spyke", "--seed", "2", "--wait")
    assert submitted.exit_code == 1 and "all black" in submitted.output
    job_id = submitted.output.split("job ", 1)[1].split()[0]

    daemon.fake.image = PNG
    daemon.fake.history.clear()
    result = ctl(daemon, "retry", job_id, "--wait")
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"{job_id}.png")

    again = ctl(daemon, "--json", "retry", job_id)
    assert again.exit_code == 5 and json.loads(again.stdout)["error"]["name"] == "conflict"
    missing = ctl(daemon, "retry", "j_000000000000")
    assert missing.exit_code == 4
