"""Fingerprints (issue 12): the hashes of the files that made an image, in its log entry and its
PNG, computed off the event loop while the job waits. In-process over the FAKE ComfyUI with FAKE
model files; the real ComfyUI's side is tests/test_reproduce_comfyui.py."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from plasmad.core import pngtext
from plasmad.core.filehash import FileHasher
from plasmad.generation import fingerprints, pipeline_files
from tests.support.app import Api, OpenApi, eventually
from tests.support.modelfiles import CHECKPOINT_SD15, LORA_SD15, SD15_CHECKPOINT, SD15_LORA, write_safetensors
from tests.test_controlnet import DEFAULT_PTH, make_comfyui_tree, posed, save, skeleton, staged_name

#: The "2 GB checkpoint" of the ordering test, smaller to keep the suite quick: still seconds to hash.
BIG_BYTES = 1024**3


def png_of(size: tuple[int, int] = (64, 64), colour: tuple[int, int, int] = (200, 30, 40)) -> bytes:
    """A PNG with a `prompt` text chunk, as ComfyUI's SaveImage writes them: a picture, not one
    colour (a one-colour image is refused as the NaN case)."""
    buffer = io.BytesIO()
    meta = PngInfo()
    meta.add_text("prompt", json.dumps({"3": {"class_type": "KSampler"}}))
    image = Image.new("RGB", size, colour)
    image.paste((255 - colour[0], 255 - colour[1], 255 - colour[2]), (0, 0, size[0] // 2, size[1] // 2))
    image.save(buffer, format="PNG", pnginfo=meta)
    return buffer.getvalue()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def models(api: Api) -> Path:
    return (api.cfg.comfyui_dir or Path()) / "models"


# --- the PNG chunk -----------------------------------------------------------------------------------


def test_the_text_chunk_goes_in_without_touching_the_pixels() -> None:
    original = png_of()
    stamped = pngtext.add_text(original, "plasma_fingerprints", '{"lora": {"sha256": "ab"}}')
    with Image.open(io.BytesIO(stamped)) as im:
        assert im.text["plasma_fingerprints"] == '{"lora": {"sha256": "ab"}}'
        assert "prompt" in im.text  # ComfyUI's own chunk is still there
        pixels = im.convert("RGB").tobytes()
    with Image.open(io.BytesIO(original)) as im:
        assert pixels == im.convert("RGB").tobytes()
    # The compressed pixel data is ComfyUI's, byte for byte: only a chunk was spliced in.
    idat = original.index(b"IDAT") - 4
    assert stamped.endswith(original[idat:])
    # Added again (a retry): the same bytes, one chunk.
    again = pngtext.add_text(stamped, "plasma_fingerprints", '{"lora": {"sha256": "ab"}}')
    assert again == stamped and again.count(b"plasma_fingerprints") == 1
    for bad in (b"", b"GIF89a", original[:40]):
        with pytest.raises(ValueError):
            pngtext.add_text(bad, "k", "v")


# --- the hasher --------------------------------------------------------------------------------------


async def test_the_hasher_hashes_once_per_version_of_a_file(tmp_path: Path, monkeypatch: Any) -> None:
    hasher = FileHasher(tmp_path / "state" / "hashes.sqlite3")
    reads: list[Path] = []
    digest = hasher._digest

    def counting(path: Path, version: Any) -> str:
        reads.append(path)
        return digest(path, version)

    monkeypatch.setattr(hasher, "_digest", counting)
    f = tmp_path / "lora.safetensors"
    f.write_bytes(b"A" * 1000)
    try:
        first, second = await asyncio.gather(hasher.sha256(f), hasher.sha256(f))  # asked twice at once
        assert first.sha256 == second.sha256 == sha256_of(f) and first.autov2 == first.sha256[:10]
        assert first.size == 1000 and len(reads) == 1
        assert (await hasher.sha256(f)).sha256 == first.sha256 and len(reads) == 1  # cached
        # A new hasher (a restarted daemon) finds it in the state dir's table.
        other = FileHasher(tmp_path / "state" / "hashes.sqlite3")
        monkeypatch.setattr(other, "_digest", counting)
        assert (await other.sha256(f)).sha256 == first.sha256 and len(reads) == 1
        await other.close()
        # Rewritten under the same name with the same size: another version, hashed again.
        f.write_bytes(b"B" * 1000)
        changed = await hasher.sha256(f)
        assert changed.sha256 == sha256_of(f) != first.sha256 and len(reads) == 2
        with pytest.raises(FileNotFoundError):
            await hasher.sha256(tmp_path / "gone.safetensors")
    finally:
        await hasher.close()


# --- in the page's files ----------------------------------------------------------------------------


async def test_a_page_records_its_fingerprints_in_the_log_the_png_and_the_job(api: Api) -> None:
    api.fake.image = png_of()
    job = await api.wait_job(await api.submit(chapter=1, page=1, seed=3, loraId=LORA_SD15))
    assert job["status"] == "succeeded", job
    raw = pipeline_files.raw_dir(api.cfg.pipeline_dir or Path(), 1)
    [entry] = json.loads((raw.parent / pipeline_files.LOG_NAME).read_text())
    prints = entry["fingerprints"]
    assert set(prints) == {"checkpoint", "lora"}
    for role, folder, name in (("checkpoint", "checkpoints", CHECKPOINT_SD15), ("lora", "loras", LORA_SD15)):
        path = models(api) / folder / name
        assert prints[role]["file"] == name and prints[role]["sha256"] == sha256_of(path)
        assert prints[role]["autov2"] == prints[role]["sha256"][:10]
        assert prints[role]["bytes"] == path.stat().st_size
    # The node and input that name each file in the stored workflow.
    workflow = json.loads((raw / "ch01_p001_v1.workflow.json").read_text())
    assert workflow[prints["lora"]["node"]]["inputs"][prints["lora"]["input"]] == LORA_SD15
    with Image.open(raw / "ch01_p001_v1.png") as im:
        assert json.loads(im.text[fingerprints.PNG_KEY]) == prints
        assert "prompt" in im.text
    assert job["result"]["fingerprints"] == prints


async def test_an_image_without_a_page_carries_them_too(api: Api) -> None:
    api.fake.image = png_of()
    job = await api.wait_job(await api.submit(seed=4))
    image = api.cfg.state_dir / "images" / f"{job['id']}.png"
    with Image.open(image) as im:
        prints = json.loads(im.text[fingerprints.PNG_KEY])
    assert set(prints) == {"checkpoint"}
    assert prints["checkpoint"]["sha256"] == sha256_of(models(api) / "checkpoints" / CHECKPOINT_SD15)


async def test_a_queued_job_starts_while_a_big_checkpoint_is_hashed(open_api: OpenApi) -> None:
    """The first hash of a big checkpoint runs while jobs already queued run: the worker waits for
    a hash only when it publishes the image that needs it."""
    api = await open_api(start_worker=False)
    big = models(api) / "checkpoints" / "big.safetensors"
    write_safetensors(big, SD15_CHECKPOINT)
    os.truncate(big, BIG_BYTES)  # sparse: a gigabyte to read, no gigabyte on disk
    first = await api.submit(seed=1)  # queued before, on the small checkpoint
    second = await api.submit(seed=2, checkpoint="big.safetensors")  # hashing starts now
    hashing = api.stack.core.hasher._tasks[big.resolve()]
    api.stack.queue.start()
    done = await api.wait_job(first)
    assert done["status"] == "succeeded" and not hashing.done()  # ran and published meanwhile
    await eventually(lambda: _prompts(api, 2), "the second job to reach ComfyUI")
    assert not hashing.done()  # it rendered before its checkpoint's hash was ready
    job = await eventually(lambda: _finished(api, second), "the second job to publish", timeout=300)
    assert job["status"] == "succeeded", job
    print_ = job["result"]["fingerprints"]["checkpoint"]
    assert print_["bytes"] == BIG_BYTES and print_["sha256"] == hashing.result().sha256


async def _prompts(api: Api, n: int) -> bool:
    return len(api.fake.prompts) >= n


async def _finished(api: Api, job_id: str) -> dict[str, Any] | None:
    job = await api.job(job_id)
    return job if job["status"] in ("succeeded", "failed") else None


async def test_a_model_replaced_under_its_name_clears_comfyuis_cache(api: Api) -> None:
    """ComfyUI keeps a loaded LoRA by its name: a retrained one saved over it would not be used,
    and the page would carry the new file's fingerprint. So ComfyUI's cache is cleared first."""
    lora = models(api) / "loras" / LORA_SD15
    assert (await api.wait_job(await api.submit(loraId=LORA_SD15)))["status"] == "succeeded"
    assert (await api.wait_job(await api.submit(loraId=LORA_SD15)))["status"] == "succeeded"
    assert api.fake.freed == 0  # the same file: ComfyUI's cache is kept
    write_safetensors(lora, SD15_LORA, {"ss_training_comment": "retrained"})
    job = await api.wait_job(await api.submit(loraId=LORA_SD15))
    assert job["status"] == "succeeded" and api.fake.freed == 1
    assert job["result"]["fingerprints"]["lora"]["sha256"] == sha256_of(lora)


async def test_a_posed_page_fingerprints_its_controlnet_and_images(tmp_path: Path, open_api: OpenApi) -> None:
    """The ControlNet model and the pose and init images (as staged in ComfyUI's input/) too."""
    make_comfyui_tree(tmp_path / "ComfyUI")
    api = await open_api()
    api.fake.image = png_of()
    pose = save(skeleton(), tmp_path / "img" / "pose.png")
    init = save(Image.new("RGB", (64, 96), (40, 90, 160)), tmp_path / "img" / "init.png")
    body = posed(pose, initImagePath=str(init), loraId=LORA_SD15, chapter=1, page=2, seed=9)
    job = await api.wait_job(await api.submit(**body))
    assert job["status"] == "succeeded", job
    prints = job["result"]["fingerprints"]
    assert set(prints) == {"checkpoint", "lora", "controlnet", "poseImage", "initImage"}
    assert prints["controlnet"]["file"] == DEFAULT_PTH
    assert prints["controlnet"]["sha256"] == sha256_of(models(api) / "controlnet" / DEFAULT_PTH)
    for role, source in (("poseImage", pose), ("initImage", init)):
        assert prints[role]["file"] == staged_name(source) and prints[role]["sha256"] == sha256_of(source)
    raw = pipeline_files.raw_dir(api.cfg.pipeline_dir or Path(), 1)
    [entry] = json.loads((raw.parent / pipeline_files.LOG_NAME).read_text())
    assert entry["fingerprints"] == prints
    assert entry["poseImageHash"] == prints["poseImage"]["sha256"]  # the ControlNet fields agree
