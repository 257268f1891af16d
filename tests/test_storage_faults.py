"""Storage faults lose nothing and say so (issue 10, item 4), with the faults made real: a tmpfs that
fills up (ENOSPC), remounted read-only (EROFS), a folder another user may not write (EACCES).

The app runs in-process over the FAKE ComfyUI (whose `gate` holds a "render" while the test fills
the disk); tests/test_faults_comfyui.py does the same against the real ComfyUI and plasmad.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from plasmad.core import fsutil
from plasmad.core.errors import ErrorCode, PlasmaError, storage_error
from plasmad.generation import pipeline_files
from tests.fakes.fake_comfyui import PNG
from tests.support.app import Api, eventually, expect_error
from tests.support.processes import DaemonEnv
from tests.support.storage import PAGE, fill, free_bytes, remount, tmpfs

OTHER_TOOL_ENTRY = {"imageFile": "ch01_p000_v1.png", "approved": True, "generationBackend": "gemini"}


def chapter(api: Api) -> Path:
    return pipeline_files.chapter_dir(api.cfg.pipeline_dir, 1)  # type: ignore[arg-type]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("filler"))


async def submit_page(api: Api, **body: Any) -> str:
    return await api.submit(chapter=1, page=1, seed=5, **body)


async def failed_with(api: Api, job_id: str, code: ErrorCode) -> dict[str, Any]:
    job = await api.wait_job(job_id)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == code, job["error"]
    return dict(job["error"])


async def test_a_disk_that_fills_while_comfyui_renders_loses_nothing_and_retry_keeps_v1(
    api: Api, tmp_path: Path
) -> None:
    with tmpfs(chapter(api), "4m") as folder:
        log_before = pipeline_files._dump([OTHER_TOOL_ENTRY])
        (folder / "generation-log.json").write_bytes(log_before)
        api.fake.gate = asyncio.Event()
        job_id = await submit_page(api)
        await prompted(api)
        filler = fill(folder)  # the disk fills while the image is being "rendered"
        api.fake.gate.set()

        error = await failed_with(api, job_id, ErrorCode.STORAGE)
        assert error["name"] == "storage"
        raw = folder / "raw"
        assert f"cannot write to {raw}: the disk is full (ENOSPC)" in error["message"]
        assert f"plasmactl retry {job_id}" in error["message"], error
        # Nothing half-written: no image, no workflow, no temp file, the log as it was.
        assert files_in(raw) == []
        assert (folder / "generation-log.json").read_bytes() == log_before

        filler.unlink()
        resp = await api.post(f"/jobs/{job_id}/retry")
        assert resp.status == 202, await resp.text()
        assert (await resp.json())["status"] == "queued"
        job = await api.wait_job(job_id)
        assert job["status"] == "succeeded", job
        assert job["outputs"] == [str(raw / "ch01_p001_v1.png")]  # the version it had reserved
        assert len(api.fake.prompts) == 1  # ComfyUI still had the render: collected, not run again
        assert files_in(raw) == ["ch01_p001_v1.png", "ch01_p001_v1.workflow.json"]
        log = json.loads((folder / "generation-log.json").read_text())
        assert log[0] == OTHER_TOOL_ENTRY and log[1]["jobId"] == job_id and log[1]["version"] == 1


@pytest.mark.parametrize("stage", ["image", "workflow", "log"])
async def test_whichever_write_the_disk_refuses_leaves_all_three_or_none(
    api: Api, stage: str
) -> None:
    """The disk full with room for none, one (the image) or two of the three files (image and
    workflow, so the log entry is the write that fails): none of the three stays."""
    with tmpfs(chapter(api), "4m") as folder:
        (folder / "generation-log.json").write_bytes(pipeline_files._dump([OTHER_TOOL_ENTRY]))
        api.fake.gate = asyncio.Event()
        job_id = await submit_page(api)
        await prompted(api)
        graph = (await (await api.client.get(f"/jobs/{job_id}/workflow")).json())
        workflow_pages = -(-len(pipeline_files._dump(graph)) // PAGE)
        room = {"image": 0, "workflow": 1, "log": 1 + workflow_pages}[stage]
        filler = fill(folder, leave_pages=room)
        assert free_bytes(folder) == room * PAGE
        api.fake.gate.set()

        error = await failed_with(api, job_id, ErrorCode.STORAGE)
        # The write that failed: the image's or workflow's (in raw/), or the log's (after the
        # image and workflow had been linked into place: rolled back).
        assert error["details"]["folder"] == str(folder if stage == "log" else folder / "raw")
        assert files_in(folder / "raw") == []
        assert json.loads((folder / "generation-log.json").read_text()) == [OTHER_TOOL_ENTRY]
        filler.unlink()
        assert (await api.post(f"/jobs/{job_id}/retry")).status == 202
        assert (await api.wait_job(job_id))["outputs"][0].endswith("ch01_p001_v1.png")


async def test_a_broken_log_fails_the_job_before_comfyui_is_asked(api: Api) -> None:
    folder = chapter(api)
    folder.mkdir(parents=True)
    (folder / "generation-log.json").write_text('[{"imageFile": "ch01_p001_v1.png",')  # cut short
    job_id = await submit_page(api)
    error = await failed_with(api, job_id, ErrorCode.CONFLICT)
    assert "generation-log.json is not readable JSON" in error["message"] and "fix it" in error["message"]
    assert api.fake.prompts == []  # no render was spent on it


async def test_a_read_only_folder_fails_before_the_render_and_retry_runs_it_once_writable(
    api: Api,
) -> None:
    with tmpfs(chapter(api), "4m") as folder:
        remount(folder, "ro")
        job_id = await submit_page(api)
        error = await failed_with(api, job_id, ErrorCode.STORAGE)
        assert f"cannot write to {folder}" in error["message"]
        assert "read-only filesystem (EROFS)" in error["message"]
        assert "remount it read-write" in error["message"]
        assert api.fake.prompts == []

        remount(folder, "rw")
        assert (await api.post(f"/jobs/{job_id}/retry")).status == 202
        job = await api.wait_job(job_id)
        assert job["status"] == "succeeded"
        assert pixels((folder / "raw" / "ch01_p001_v1.png").read_bytes()) == pixels(PNG)  # + fingerprints


async def test_a_disk_with_too_little_room_for_a_page_is_refused_before_the_render(api: Api) -> None:
    with tmpfs(chapter(api), "64k"):
        job_id = await submit_page(api)
        error = await failed_with(api, job_id, ErrorCode.STORAGE)
        assert "KB free, a page needs up to 2048 KB" in error["message"], error
        assert error["details"]["errno"] == "ENOSPC" and api.fake.prompts == []


async def test_an_image_without_a_page_is_written_whole_or_not_at_all(api: Api) -> None:
    images = api.cfg.state_dir / "images"
    with tmpfs(images, "4m"):
        api.fake.gate = asyncio.Event()
        job_id = await api.submit(seed=5)
        await prompted(api)
        filler = fill(images, leave_pages=1)  # the image fits, its workflow does not
        api.fake.gate.set()
        error = await failed_with(api, job_id, ErrorCode.STORAGE)
        assert f"cannot write to {images}" in error["message"]
        assert files_in(images) == []
        filler.unlink()
        assert (await api.post(f"/jobs/{job_id}/retry")).status == 202
        assert (await api.wait_job(job_id))["outputs"] == [str(images / f"{job_id}.png")]


def test_eacces_for_a_user_who_may_not_write_is_a_storage_error() -> None:
    """As root nothing is refused for permissions: the check runs as `nobody`, in a child, on a
    root-owned folder outside pytest's private tmp tree (which `nobody` cannot even traverse)."""
    root = Path(tempfile.mkdtemp(prefix="pl-eacces-"))
    root.chmod(0o755)
    try:
        _check_as_nobody(root / "locked")
    finally:
        shutil.rmtree(root)


def _check_as_nobody(folder: Path) -> None:
    folder.mkdir(mode=0o755)
    code = (  # imports first: this Python's own files may be out of `nobody`'s reach
        "import os\n"
        "from pathlib import Path\n"
        "from plasmad.core.errors import PlasmaError\n"
        "from plasmad.core.fsutil import check_writable\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        f"    check_writable(Path({str(folder)!r}), then='retry it')\n"
        "except PlasmaError as exc:\n"
        "    print(exc.code, exc.message)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip("cannot switch to another user here")
    assert done.stdout.startswith(f"{int(ErrorCode.STORAGE)} cannot write to {folder}"), done
    assert "plasmad may not write there (EACCES); fix the folder's permissions, then retry it" in done.stdout


def test_the_errors_a_person_can_fix_are_named_and_the_rest_are_not() -> None:
    for number, said in (
        (errno.ENOSPC, "the disk is full (ENOSPC)"),
        (errno.EDQUOT, "the disk quota is used up (EDQUOT)"),
        (errno.EROFS, "it is on a read-only filesystem (EROFS)"),
        (errno.EACCES, "plasmad may not write there (EACCES)"),
    ):
        err = storage_error(OSError(number, os.strerror(number), "/pipe/output/ch-01/raw/x.png"), "/pipe")
        assert err is not None and err.code == ErrorCode.STORAGE and err.code.http_status == 507
        assert err.message.startswith(f"cannot write to /pipe/output/ch-01/raw: {said}")
    assert storage_error(OSError(errno.EIO, "I/O error"), "/pipe") is None  # a stranger fault: not hidden
    with pytest.raises(PlasmaError, match="cannot write to /x: the disk is full"):
        with fsutil.storage_errors(Path("/x")):
            raise OSError(errno.ENOSPC, "No space left on device")


def test_stale_temp_files_of_ours_are_swept_and_nothing_else(tmp_path: Path) -> None:
    old, fresh = time.time() - 3600, time.time()
    names = {
        ".ch01_p001_v1.png.k2j3h4g5.plasma.tmp": old,  # ours, left by a kill -9: swept
        ".generation-log.json.a1b2c3d4.plasma.tmp": fresh,  # ours, being written now: kept
        ".ch01_p002_v1.png.x9y8z7w6.tmp": old,  # another tool's temp file: kept
        "notes.plasma.tmp": old,  # not a hidden temp name: kept
    }
    for name, mtime in names.items():
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (mtime, mtime))
    (tmp_path / ".dir.plasma.tmp").mkdir()
    os.utime(tmp_path / ".dir.plasma.tmp", (old, old))
    (tmp_path / ".link.plasma.tmp").symlink_to(tmp_path / "notes.plasma.tmp")
    removed = fsutil.sweep_stale_temps([tmp_path, tmp_path / "missing"], older_than_s=600)
    assert removed == [tmp_path / ".ch01_p001_v1.png.k2j3h4g5.plasma.tmp"]
    left = {p.name for p in tmp_path.iterdir()}
    assert left == set(names) - {removed[0].name} | {".dir.plasma.tmp", ".link.plasma.tmp"}


async def test_retry_is_for_failed_and_cancelled_generations_only(api: Api) -> None:
    job_id = await api.submit(seed=1)
    assert (await api.wait_job(job_id))["status"] == "succeeded"
    await expect_error(await api.post(f"/jobs/{job_id}/retry"), 409)
    await expect_error(await api.post("/jobs/j_000000000000/retry"), 404)


async def prompted(api: Api) -> None:
    """Until the job's prompt has reached the (FAKE) ComfyUI."""

    async def posted() -> bool:
        return bool(api.fake.prompts)

    await eventually(posted, "the prompt to reach ComfyUI")


def test_plasmad_sweeps_stale_temp_files_of_ours_at_start(
    daemon_env: DaemonEnv, start_daemon: Any
) -> None:
    """A real plasmad (no ComfyUI needed to start): a kill -9 mid-write left temp files behind."""
    chapter_folder = pipeline_files.chapter_dir(daemon_env.pipeline_dir, 1)
    raw, images = chapter_folder / "raw", daemon_env.state_dir / "images"
    stale = [
        raw / ".ch01_p001_v1.png.k2j3h4g5.plasma.tmp",
        chapter_folder / ".generation-log.json.q1w2e3r4.plasma.tmp",
        images / ".j_0123456789ab.png.z0x9c8v7.plasma.tmp",
        # deeper folders of the state dir: a thumbnail, a reproduction's run
        daemon_env.state_dir / "thumbnails" / "ab" / ".ab12.jpg.p0o9i8u7.plasma.tmp",
        daemon_env.state_dir / "reproductions" / "ch01_p001_v1" / "r_0123" / ".run1.png.a1s2d3f4.plasma.tmp",
        # a training's sample LoRA, copied into ComfyUI's loras/plasma-samples/<id>/
        daemon_env.root / "ComfyUI/models/loras/plasma-samples/t_1/.s.safetensors.q9w8e7r6.plasma.tmp",
    ]
    fresh = raw / ".ch01_p002_v1.png.n3w4n3w4.plasma.tmp"  # as if being written right now
    foreign = raw / ".ch01_p003_v1.png.tmp"  # not ours
    old = time.time() - 3600
    for path in [*stale, fresh, foreign]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    for path in [*stale, foreign]:
        os.utime(path, (old, old))
    daemon = start_daemon(COMFYUI_DIR=str(daemon_env.root / "ComfyUI"))
    assert [p for p in stale if p.exists()] == []
    assert fresh.exists() and foreign.exists()
    daemon.stop()
    assert "a temp file left by a write that was cut short" in daemon.log.read_text()


def pixels(png: bytes) -> bytes:
    """An image's pixels: the published PNG carries a fingerprint text chunk ComfyUI's has not."""
    with Image.open(io.BytesIO(png)) as im:
        return im.tobytes()
