"""ControlNet OpenPose (CTRL-01..03): pose-anchored img2img.

Most tests run the real app in-process against the FAKE ComfyUI (tests/fakes/fake_comfyui.py), with
FAKE model files (safetensors headers only, a .pth that is four magic bytes and junk) and real
images drawn here with Pillow: the 400 cases, the copy into ComfyUI's input/, the records, the
template shapes, plasmactl. Those marked `comfyui` run a real plasmad against the real ComfyUI
and the tiny ControlNet the project builds (demo/build_demo_model.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from plasmad.comfy import inputs as comfy_inputs
from plasmad.comfy.templates import (
    IMG2IMG_CONTROLNET,
    IMG2IMG_CONTROLNET_BASE,
    IMG2IMG_CONTROLNET_BASE_PREPROCESS,
    IMG2IMG_CONTROLNET_PREPROCESS,
    TemplateSet,
    load_template,
)
from plasmad.core import limits
from plasmad.core.config import BUNDLED_TEMPLATES
from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.generation import controlnet, pipeline_files
from tests.support.app import Api, expect_error, rpc, start_api
from tests.support.cli import DaemonThread, ctl
from tests.support.modelfiles import LORA_SD15, SD15_CONTROLNET, SD15_LORA, make_models_dir, write_safetensors
from tests.support.processes import DEMO_LORA, ComfyServer, DaemonEnv, DaemonProcess

DEFAULT_PTH = "control_v11p_sd15_openpose.pth"  # Config's default (INFRA-05's file name)
CN_SAFETENSORS = "openpose_sd15.safetensors"
CN_SDXL = "openpose_sdxl.safetensors"
CN_HTML = "failed_download.pth"
CN_LORA = "a_lora.safetensors"
CN_CKPT = "openpose.ckpt"
DEMO_CONTROLNET = "plasma-demo-openpose.safetensors"
PREPROCESSOR_INFO = {
    "input": {
        "required": {"image": ["IMAGE"]},
        "optional": {
            "detect_hand": [["enable", "disable"]],
            "detect_body": [["enable", "disable"]],
            "detect_face": [["enable", "disable"]],
            "resolution": ["INT", {"default": 512}],
            "scale_stick_for_xinsr_cn": [["disable", "enable"]],
        },
    },
    "output": ["IMAGE", "POSE_KEYPOINT"],
}
CONTROLNET_TEMPLATES = (
    IMG2IMG_CONTROLNET,
    IMG2IMG_CONTROLNET_BASE,
    IMG2IMG_CONTROLNET_PREPROCESS,
    IMG2IMG_CONTROLNET_BASE_PREPROCESS,
)


# --- images and models ------------------------------------------------------------------------------


def skeleton(size: tuple[int, int] = (64, 64), arms_up: bool = False) -> Image.Image:
    """A stick figure in OpenPose's colours on black: what a pose editor exports."""
    w, h = size
    img = Image.new("RGB", size, "black")
    d = ImageDraw.Draw(img)
    cx, neck, hip = w // 2, h * 5 // 16, h * 9 // 16
    hand_y = h // 8 if arms_up else h * 7 // 16
    d.ellipse([cx - w // 10, h // 16, cx + w // 10, h // 4], outline=(255, 0, 85), width=2)
    d.line([(cx, h // 4), (cx, neck)], fill=(255, 0, 0), width=3)
    d.line([(cx, neck), (cx, hip)], fill=(0, 0, 255), width=3)
    d.line([(cx, neck), (cx - w // 4, hand_y)], fill=(255, 85, 0), width=3)
    d.line([(cx, neck), (cx + w // 4, hand_y)], fill=(85, 255, 0), width=3)
    d.line([(cx, hip), (cx - w // 6, h - h // 16)], fill=(0, 255, 85), width=3)
    d.line([(cx, hip), (cx + w // 6, h - h // 16)], fill=(0, 85, 255), width=3)
    return img


def save(img: Image.Image, path: Path, **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def staged_name(path: Path, suffix: str = ".png") -> str:
    return f"plasma-{sha(path)[:16]}{suffix}"


def make_comfyui_tree(comfyui: Path) -> Path:
    """make_models_dir's FAKE models plus FAKE ControlNets of every kind validation must tell apart."""
    make_models_dir(comfyui)
    folder = comfyui / "models" / "controlnet"
    folder.mkdir(parents=True, exist_ok=True)
    # A torch.save zip archive starts with PK: four bytes of that and junk. plasmad never unpickles
    # it (ComfyUI loads it), so its body does not matter here.
    (folder / DEFAULT_PTH).write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    (folder / CN_HTML).write_bytes(b"<!DOCTYPE html><html>Repository not found</html>")
    (folder / CN_CKPT).write_bytes(b"PK\x03\x04 a pickle archive")
    write_safetensors(folder / CN_SAFETENSORS, SD15_CONTROLNET)
    sdxl = {k: [v[0], 2048] if k.endswith("to_k.weight") else v for k, v in SD15_CONTROLNET.items()}
    write_safetensors(folder / CN_SDXL, sdxl)
    write_safetensors(folder / CN_LORA, SD15_LORA)
    return comfyui


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    """Every kind of file a pose or init path might name, under tmp_path/img."""
    folder = tmp_path / "img"
    text = folder / "notes.txt"
    folder.mkdir()
    text.write_text("Spyke, page 3: arms up\n")
    fake_png = folder / "text-named.png"
    fake_png.write_text("not a picture at all\n")
    pose = save(skeleton(), folder / "pose.png")
    truncated = folder / "truncated.png"
    buf = io.BytesIO()
    skeleton((256, 256)).save(buf, format="PNG")
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    gif = folder / "anim.gif"
    frames = [skeleton(), skeleton(arms_up=True)]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    # 768x512 stored, EXIF orientation 6: ComfyUI's LoadImage turns it to 512x768, which fits.
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated_ok = save(skeleton((768, 512)), folder / "rotated-ok.jpg", exif=exif)
    # 512x768 stored, orientation 6: seen as 768x512, too wide.
    rotated_wide = save(skeleton((512, 768)), folder / "rotated-wide.jpg", exif=exif)
    unreadable = save(skeleton(), folder / "unreadable.png")
    unreadable.chmod(0)
    link = folder / "link-to-pose.png"
    link.symlink_to(pose)
    fifo = folder / "pipe.png"
    os.mkfifo(fifo)
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    return {
        "pose": pose,
        "pose_copy": save(skeleton(), tmp_path / "elsewhere" / "same-pose.png"),
        "pose_arms_up": save(skeleton(arms_up=True), folder / "arms-up.png"),
        "init": save(Image.new("RGB", (64, 96), (40, 90, 160)), folder / "init.png"),
        "init_jpeg": save(Image.new("RGB", (64, 64), (200, 120, 40)), folder / "init.jpg"),
        "big": save(skeleton((1024, 1024)), folder / "big.png"),
        "tall": save(skeleton((512, 800)), folder / "tall.png"),
        "tiny": save(skeleton((32, 32)), folder / "tiny.png"),
        "text": text,
        "text_png": fake_png,
        "truncated": truncated,
        "gif": gif,
        "rotated_ok": rotated_ok,
        "rotated_wide": rotated_wide,
        "unreadable": unreadable,
        "link": link,
        "fifo": fifo,
        "empty": empty,
        "folder": folder,
    }


# --- the in-process app -----------------------------------------------------------------------------

OpenCn = Callable[..., Awaitable[Api]]


@pytest.fixture
async def open_cn(tmp_path: Path) -> AsyncIterator[OpenCn]:
    """The real app over the FAKE ComfyUI, with ControlNet models in its models/controlnet."""
    async with AsyncExitStack() as exits:

        async def open_(start_worker: bool = True, nodes: dict[str, Any] | None = None, **cfg: Any) -> Api:
            if not (tmp_path / "ComfyUI").exists():
                make_comfyui_tree(tmp_path / "ComfyUI")
            api = await start_api(exits, tmp_path, start_worker, **cfg)
            api.fake.nodes.update(nodes or {})
            return api

        yield open_


@pytest.fixture
async def api(open_cn: OpenCn) -> Api:
    return await open_cn()


def input_dir(api: Api) -> Path:
    return (api.cfg.comfyui_dir or Path()) / "input"


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def nodes(graph: dict[str, Any], class_type: str) -> list[dict[str, Any]]:
    return [n for n in graph.values() if n["class_type"] == class_type]


def one(graph: dict[str, Any], class_type: str) -> dict[str, Any]:
    [node] = nodes(graph, class_type)
    return node


def posed(pose: Path, **body: Any) -> dict[str, Any]:
    return {"prompt": "spyke_plasma_v1, arms up", "poseImagePath": str(pose), **body}


# --- 400s: every refusal names its field, queues nothing, copies nothing ------------------------------


MakeBody = Callable[[dict[str, Path]], dict[str, Any]]
BAD: list[tuple[str, MakeBody, str, str]] = [
    ("strength-0.3", lambda i: posed(i["pose"], controlnetStrength=0.3), "controlnetStrength", "0.4-0.9"),
    ("strength-0.95", lambda i: posed(i["pose"], controlnetStrength=0.95), "controlnetStrength", "0.4-0.9"),
    ("strength-nan", lambda i: posed(i["pose"], controlnetStrength=float("nan")), "controlnetStrength", ""),
    ("strength-text", lambda i: posed(i["pose"], controlnetStrength="high"), "controlnetStrength", ""),
    ("missing-pose", lambda i: posed(i["folder"] / "nope.png"), "poseImagePath", "does not exist"),
    ("unreadable-pose", lambda i: posed(i["unreadable"]), "poseImagePath", "permission denied"),
    ("text-pose", lambda i: posed(i["text"]), "poseImagePath", "not an image"),
    ("text-named-png", lambda i: posed(i["text_png"]), "poseImagePath", "not an image"),
    ("truncated-pose", lambda i: posed(i["truncated"]), "poseImagePath", "not a readable image"),
    ("empty-pose", lambda i: posed(i["empty"]), "poseImagePath", "empty"),
    ("folder-pose", lambda i: posed(i["folder"]), "poseImagePath", "folder"),
    ("fifo-pose", lambda i: posed(i["fifo"]), "poseImagePath", "not a regular file"),
    ("relative-pose", lambda i: {**posed(i["pose"]), "poseImagePath": "img/pose.png"}, "poseImagePath",
     "absolute"),
    ("animated-pose", lambda i: posed(i["gif"]), "poseImagePath", "2 frames"),
    ("init-missing", lambda i: posed(i["pose"], initImagePath="/nonexistent/x.png"), "initImagePath",
     "does not exist"),
    ("init-text", lambda i: posed(i["pose"], initImagePath=str(i["text"])), "initImagePath", "not an image"),
    ("denoise-0", lambda i: posed(i["pose"], denoise=0), "denoise", ""),
    ("denoise-1.5", lambda i: posed(i["pose"], denoise=1.5), "denoise", ""),
    ("resolution-too-wide", lambda i: posed(i["pose"], resolution={"width": 520, "height": 64}),
     "resolution.width", "hardware limit of 512"),
    ("resolution-not-8", lambda i: posed(i["pose"], resolution={"width": 100, "height": 64}),
     "resolution.width", "multiple of 8"),
    ("strength-without-pose", lambda i: {"prompt": "x", "controlnetStrength": 0.5}, "controlnetStrength",
     "poseImagePath"),
    ("init-without-pose", lambda i: {"prompt": "x", "initImagePath": str(i["init"])}, "initImagePath",
     "poseImagePath"),
    ("denoise-without-pose", lambda i: {"prompt": "x", "denoise": 0.5}, "denoise", "poseImagePath"),
    ("model-without-pose", lambda i: {"prompt": "x", "controlnet": CN_SAFETENSORS}, "controlnet",
     "poseImagePath"),
    ("reference-without-pose", lambda i: {"prompt": "x", "poseIsSkeleton": False}, "poseIsSkeleton",
     "poseImagePath"),
    ("missing-model", lambda i: posed(i["pose"], controlnet="missing.safetensors"), "controlnet", "not in"),
    ("two-models", lambda i: posed(i["pose"], controlnet=[CN_SAFETENSORS, DEFAULT_PTH]), "controlnet",
     "one ControlNet model at a time"),
    ("no-model", lambda i: posed(i["pose"], controlnet=[]), "controlnet", "0 models"),
    ("model-not-a-name", lambda i: posed(i["pose"], controlnet={"name": "x"}), "controlnet", "file name"),
    ("sdxl-model", lambda i: posed(i["pose"], controlnet=CN_SDXL), "controlnet", "SDXL"),
    ("lora-as-model", lambda i: posed(i["pose"], controlnet=CN_LORA), "controlnet", "not a controlnet"),
    ("html-as-pth", lambda i: posed(i["pose"], controlnet=CN_HTML), "controlnet", "not a PyTorch file"),
    ("ckpt-model", lambda i: posed(i["pose"], controlnet=CN_CKPT), "controlnet", ".safetensors or .pth"),
    ("model-path-escape", lambda i: posed(i["pose"], controlnet="../loras/" + LORA_SD15), "controlnet", ""),
    ("preprocessor-missing", lambda i: posed(i["pose"], poseIsSkeleton=False), "poseIsSkeleton",
     "install the comfyui_controlnet_aux custom nodes"),
]


@pytest.mark.parametrize(("make", "field", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
async def test_bad_controlnet_request_is_400_naming_the_field(
    api: Api, images: dict[str, Path], make: MakeBody, field: str, words: str
) -> None:
    if make(images).get("poseImagePath") == str(images["unreadable"]) and not os.geteuid():
        pytest.skip("root reads a file with mode 000")
    err = await expect_error(await api.post("/jobs", make(images)), 400, field)
    assert words in err["message"], err
    assert api.fake.prompts == [] and await api.stack.store.recent() == []
    assert listing(input_dir(api)) == []  # nothing was copied for a refused request


async def test_a_file_that_fails_to_read_is_400(api: Api, images: dict[str, Path]) -> None:
    """Unreadable even for root (who reads mode-000 files): a read error, a path through a file."""
    cases = [(str(images["pose"]) + "/x.png", "Not a directory")]
    if sys.platform == "linux":
        cases.append(("/proc/self/mem", "cannot be read"))  # a regular file whose first read fails (EIO)
    for path, words in cases:
        resp = await api.post("/jobs", {**posed(images["pose"]), "poseImagePath": path})
        err = await expect_error(resp, 400, "poseImagePath")
        assert words in err["message"], err


async def test_missing_configured_model_is_400(open_cn: OpenCn, images: dict[str, Path]) -> None:
    api = await open_cn(controlnet="control_v11p_sd15_openpose_fp16.pth")
    err = await expect_error(await api.post("/jobs", posed(images["pose"])), 400, "controlnet")
    assert "control_v11p_sd15_openpose_fp16.pth" in err["message"]


async def test_preprocessor_of_an_unfitting_version_is_400(open_cn: OpenCn, images: dict[str, Path]) -> None:
    old = {"input": {"required": {"image": ["IMAGE"], "detect_hand": [["enable", "disable"]]}}}
    api = await open_cn(nodes={controlnet.PREPROCESSOR_NODE: old})
    err = await expect_error(await api.post("/jobs", posed(images["pose"], poseIsSkeleton=False)), 400,
                             "poseIsSkeleton")
    assert "detect_body" in err["message"] and "update" in err["message"]


async def test_rpc_says_the_same(api: Api, images: dict[str, Path]) -> None:
    answer = await rpc(api.stack.service, "submit", posed(images["pose"], controlnetStrength=0.95))
    assert answer["error"]["data"]["field"] == "controlnetStrength"
    assert answer["error"]["data"]["code"] == ErrorCode.INVALID_INPUT


# --- the happy path: template, slots, copy, records -------------------------------------------------


async def test_skeleton_with_lora_fills_the_controlnet_template(api: Api, images: dict[str, Path]) -> None:
    job_id = await api.submit(**posed(images["pose"], loraId=LORA_SD15, seed=5))
    job = await api.wait_job(job_id)
    assert job["status"] == "succeeded", job
    assert job["result"]["template"] == IMG2IMG_CONTROLNET
    # Defaults are recorded in the job's request: the model (PLASMA_CONTROLNET) and strength 0.65.
    assert job["request"]["controlnet"] == DEFAULT_PTH
    assert job["request"]["controlnetStrength"] == limits.CONTROLNET_STRENGTH_DEFAULT == 0.65
    assert job["result"]["controlnetStrength"] == 0.65
    assert (job["result"]["width"], job["result"]["height"]) == (64, 64)

    graph = api.fake.prompts[0]["prompt"]
    name = staged_name(images["pose"])
    assert [n["inputs"]["image"] for n in nodes(graph, "LoadImage")] == [name, name]  # init defaults to pose
    assert one(graph, "ControlNetLoader")["inputs"]["control_net_name"] == DEFAULT_PTH
    assert one(graph, "ControlNetApplyAdvanced")["inputs"]["strength"] == 0.65
    assert one(graph, "KSampler")["inputs"]["denoise"] == 0.75  # the template's own
    assert one(graph, "LoraLoader")["inputs"]["lora_name"] == LORA_SD15
    assert not nodes(graph, "EmptyLatentImage") and not nodes(graph, controlnet.PREPROCESSOR_NODE)
    # Exactly what is stored is what was sent and what was written beside the image.
    resp = await api.client.get(f"/jobs/{job_id}/workflow")
    assert await resp.json() == graph
    workflow = api.cfg.state_dir / "images" / f"{job_id}.workflow.json"
    assert json.loads(workflow.read_text()) == graph


async def test_without_lora_the_base_variant_runs(api: Api, images: dict[str, Path]) -> None:
    job = await api.wait_job(await api.submit(**posed(images["pose"])))
    assert job["status"] == "succeeded" and job["result"]["template"] == IMG2IMG_CONTROLNET_BASE
    graph = api.fake.prompts[0]["prompt"]
    assert not nodes(graph, "LoraLoader") and one(graph, "ControlNetApplyAdvanced")


async def test_reference_panel_uses_the_preprocessor_when_comfyui_has_it(
    open_cn: OpenCn, images: dict[str, Path]
) -> None:
    api = await open_cn(nodes={controlnet.PREPROCESSOR_NODE: PREPROCESSOR_INFO})
    panel = images["init_jpeg"]
    job = await api.wait_job(await api.submit(**posed(panel, poseIsSkeleton=False, loraId=LORA_SD15)))
    assert job["status"] == "succeeded", job
    assert job["result"]["template"] == IMG2IMG_CONTROLNET_PREPROCESS
    graph = api.fake.prompts[0]["prompt"]
    pre = one(graph, controlnet.PREPROCESSOR_NODE)
    apply = one(graph, "ControlNetApplyAdvanced")
    assert graph[apply["inputs"]["image"][0]] is pre
    scaled = graph[pre["inputs"]["image"][0]]
    assert scaled["class_type"] == "ImageScale"
    assert graph[scaled["inputs"]["image"][0]]["inputs"]["image"] == staged_name(panel, ".jpg")

    base = await api.wait_job(await api.submit(**posed(panel, poseIsSkeleton=False)))
    assert base["result"]["template"] == IMG2IMG_CONTROLNET_BASE_PREPROCESS


async def test_page_log_entry_has_the_controlnet_fields(api: Api, images: dict[str, Path]) -> None:
    body = posed(images["pose"], initImagePath=str(images["init"]), controlnetStrength=0.4, denoise=0.6,
                 controlnet=CN_SAFETENSORS, chapter=1, page=2, seed=9)
    job = await api.wait_job(await api.submit(**body))
    assert job["status"] == "succeeded", job
    raw = pipeline_files.raw_dir(api.cfg.pipeline_dir or Path(), 1)
    [entry] = json.loads((raw.parent / pipeline_files.LOG_NAME).read_text())
    assert entry["controlnetStrength"] == 0.4 and entry["denoise"] == 0.6
    assert entry["poseImage"] == str(images["pose"]) and entry["poseImageHash"] == sha(images["pose"])
    assert entry["initImage"] == str(images["init"]) and entry["initImageHash"] == sha(images["init"])
    assert entry["poseIsSkeleton"] is True and entry["controlnetModel"] == CN_SAFETENSORS
    assert entry["workflowTemplate"] == "img2img-base-controlnet.json"
    assert (entry["width"], entry["height"]) == (64, 96)  # the init image's size
    workflow = json.loads((raw / entry["workflowFile"]).read_text())
    assert workflow == api.fake.prompts[0]["prompt"]
    assert one(workflow, "ControlNetApplyAdvanced")["inputs"]["strength"] == 0.4
    assert one(workflow, "KSampler")["inputs"]["denoise"] == 0.6
    loads = {n["_meta"]["title"]: n["inputs"]["image"] for n in nodes(workflow, "LoadImage")}
    assert loads == {"Pose Image": staged_name(images["pose"]), "Init Image": staged_name(images["init"])}


async def test_exif_turned_image_is_measured_as_comfyui_sees_it(api: Api, images: dict[str, Path]) -> None:
    body = posed(images["pose"], initImagePath=str(images["rotated_ok"]))
    job = await api.wait_job(await api.submit(**body))
    assert (job["result"]["width"], job["result"]["height"]) == (512, 768)
    # Stored 512x768, seen 768x512: fitted into 512 wide, the aspect kept.
    job = await api.wait_job(await api.submit(**posed(images["rotated_wide"])))
    assert (job["result"]["width"], job["result"]["height"]) == (512, 344)


# --- the size: the page's `resolution`, else the init image's fitted to the limits -----------------------


def scaled_sizes(graph: dict[str, Any]) -> dict[str, tuple[int, int, str]]:
    """Each ImageScale node, by title: the size it scales to and how it crops."""
    return {
        n["_meta"]["title"]: (n["inputs"]["width"], n["inputs"]["height"], n["inputs"]["crop"])
        for n in nodes(graph, "ImageScale")
    }


@pytest.mark.parametrize(
    ("image", "size"),
    [("big", (512, 512)), ("tall", (488, 768)), ("tiny", (64, 64)), ("init", (64, 96)), ("pose", (64, 64))],
)
async def test_without_resolution_the_init_image_sets_the_size(
    api: Api, images: dict[str, Path], image: str, size: tuple[int, int]
) -> None:
    """Any size is usable: scaled down to the hardware limit (or up to 64 px) keeping the aspect,
    rounded to multiples of 8; the graph scales and centre-crops both images to it."""
    job = await api.wait_job(await api.submit(**posed(images[image])))
    assert job["status"] == "succeeded", job
    assert (job["result"]["width"], job["result"]["height"]) == size
    assert job["request"]["resolution"] == {"width": size[0], "height": size[1]}
    graph = api.fake.prompts[-1]["prompt"]
    assert scaled_sizes(graph) == {
        "Pose to page size": (*size, "center"),
        "Init to page size": (*size, "center"),
    }


async def test_resolution_is_the_page_size_on_the_controlnet_path(api: Api, images: dict[str, Path]) -> None:
    body = posed(images["big"], initImagePath=str(images["init"]), resolution={"width": 128, "height": 192})
    job = await api.wait_job(await api.submit(**body, chapter=1, page=4))
    assert job["status"] == "succeeded", job
    assert (job["result"]["width"], job["result"]["height"]) == (128, 192)
    graph = api.fake.prompts[-1]["prompt"]
    assert set(scaled_sizes(graph).values()) == {(128, 192, "center")}
    sampler_input = one(graph, "VAEEncode")["inputs"]["pixels"][0]
    assert graph[sampler_input]["_meta"]["title"] == "Init to page size"  # img2img from the scaled image
    raw = pipeline_files.raw_dir(api.cfg.pipeline_dir or Path(), 1)
    [entry] = json.loads((raw.parent / pipeline_files.LOG_NAME).read_text())
    assert (entry["width"], entry["height"]) == (128, 192)


@pytest.mark.parametrize(
    ("given", "fitted"),
    [((512, 768), (512, 768)), ((600, 900), (512, 768)), ((1000, 100), (512, 64)), ((100, 130), (96, 128)),
     ((33, 2000), (64, 768)), ((4000, 3000), (512, 384)), ((63, 63), (64, 64))],
)  # fmt: skip
def test_fit_size(given: tuple[int, int], fitted: tuple[int, int]) -> None:
    width, height = limits.fit_size(*given)
    assert (width, height) == fitted
    limits.check_size(width, height)  # always a size the hardware takes


# --- CTRL-01: the copy into ComfyUI's input/ --------------------------------------------------------


async def test_copy_is_named_by_content_and_reused(open_cn: OpenCn, images: dict[str, Path]) -> None:
    api = await open_cn(start_worker=False)
    await api.submit(**posed(images["pose"]))
    name = staged_name(images["pose"])
    assert len(name) == len("plasma-") + 16 + len(".png")
    staged = input_dir(api) / name
    assert listing(input_dir(api)) == [name]
    assert staged.read_bytes() == images["pose"].read_bytes()  # a byte copy: the hash names the content
    before = staged.stat()

    # The same picture from another path, and through a symlink: the same file, untouched.
    await api.submit(**posed(images["pose_copy"]))
    await api.submit(**posed(images["link"]))
    assert listing(input_dir(api)) == [name]
    after = staged.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    # Another picture, and a separate init image: new names beside it.
    await api.submit(**posed(images["pose_arms_up"], initImagePath=str(images["init_jpeg"])))
    assert listing(input_dir(api)) == sorted(
        [name, staged_name(images["pose_arms_up"]), staged_name(images["init_jpeg"], ".jpg")]
    )
    assert len(await api.stack.store.recent()) == 4


async def test_copy_never_clobbers(open_cn: OpenCn, images: dict[str, Path]) -> None:
    api = await open_cn(start_worker=False)
    squatter = input_dir(api) / staged_name(images["pose"])
    squatter.parent.mkdir(parents=True)
    squatter.write_bytes(b"someone else's file")
    err = await expect_error(await api.post("/jobs", posed(images["pose"])), 409)
    assert "never overwrites" in err["message"]
    assert squatter.read_bytes() == b"someone else's file"
    assert await api.stack.store.recent() == []


async def test_destination_never_comes_from_the_source_path(open_cn: OpenCn, tmp_path: Path) -> None:
    api = await open_cn(start_worker=False)
    comfy = api.cfg.comfyui_dir or Path()
    before = {p.relative_to(comfy) for p in comfy.rglob("*")}
    tricky = tmp_path / "deep" / "x"
    tricky.mkdir(parents=True)
    weird = save(skeleton(arms_up=True), tmp_path / "deep" / "..plasma-0000000000000000.png")
    # A dotted route to the file, and a symlink whose own name climbs out of input/.
    link = tmp_path / "deep" / "x" / "..%2f..%2fmodels%2fevil.png"
    link.symlink_to(weird)
    for path in (f"{tricky}/../../deep/x/../..plasma-0000000000000000.png", str(link)):
        await api.submit(**posed(Path(path)))
    name = staged_name(weird)
    assert {p.relative_to(comfy) for p in comfy.rglob("*")} - before == {Path("input"), Path("input", name)}
    assert [p.name for p in await asyncio.to_thread(lambda: list(tmp_path.rglob("*evil*")))] == [link.name]


def test_stage_writes_only_inside_input(tmp_path: Path, images: dict[str, Path]) -> None:
    target = tmp_path / "ComfyUI" / "input"
    (tmp_path / "ComfyUI").mkdir()
    for key in ("pose", "link", "init_jpeg", "rotated_ok"):
        image = comfy_inputs.read_image(str(images[key]), "poseImagePath")
        dest = comfy_inputs.stage(image, target)
        assert dest.parent == target and dest.name == image.name
        assert dest.name.startswith("plasma-") and "/" not in dest.name
        assert dest.read_bytes() == images[key].resolve().read_bytes()
        assert comfy_inputs.stage(image, target) == dest  # again: reused


def test_stage_into_an_unusable_input_is_a_clear_error(tmp_path: Path, images: dict[str, Path]) -> None:
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    (comfy / "input").write_text("a file where ComfyUI's input folder should be")  # even root cannot
    image = comfy_inputs.read_image(str(images["pose"]), "poseImagePath")
    with pytest.raises(PlasmaError) as caught:
        comfy_inputs.stage(image, comfy / "input")
    assert caught.value.code == ErrorCode.NOT_CONFIGURED and caught.value.field == "COMFYUI_DIR"


# --- the templates ----------------------------------------------------------------------------------


def test_every_controlnet_variant_is_loaded_and_picked() -> None:
    templates = TemplateSet(BUNDLED_TEMPLATES)
    picked = {
        controlnet.template_name(lora=lora, preprocess=pre) for lora in (True, False) for pre in (True, False)
    }
    assert picked == set(CONTROLNET_TEMPLATES)
    assert all(templates.has(name) for name in picked)


@pytest.mark.parametrize("name", CONTROLNET_TEMPLATES)
def test_controlnet_template_shape(name: str) -> None:
    template = load_template(BUNDLED_TEMPLATES, name)
    graph = template.graph
    # One ControlNet model per graph: the hardware limit, kept in the templates too.
    assert len(nodes(graph, "ControlNetLoader")) == limits.CONTROLNET_MODELS_AT_ONCE == 1
    assert len(nodes(graph, "ControlNetApplyAdvanced")) == 1
    assert len(nodes(graph, "LoraLoader")) == (1 if "lora" in name else 0)
    cn_slots = {"pose_image", "init_image", "controlnet_name", "controlnet_strength", "denoise"}
    assert cn_slots <= set(template.slots)
    assert ("lora_name" in template.slots) == ("lora" in name)
    # Both images are scaled and centre-cropped to the size, which the width/height slots set.
    for image_slot in ("pose_image", "init_image"):
        assert graph[_scaler_of(graph, template.node_of(image_slot))]["inputs"]["crop"] == "center"
    assert {node for node, _ in template.slots["width"]} == {
        k for k, n in graph.items() if n["class_type"] == "ImageScale"
    }
    apply = one(graph, "ControlNetApplyAdvanced")
    hint = graph[apply["inputs"]["image"][0]]
    pose_node = graph[_scaler_of(graph, template.node_of("pose_image"))]  # the pose, at the page's size
    if name.endswith("-preprocess"):
        assert hint["class_type"] == controlnet.PREPROCESSOR_NODE
        assert set(hint["inputs"]) == set(controlnet.PREPROCESSOR_INPUTS)
        assert graph[hint["inputs"]["image"][0]] is pose_node
    else:
        assert hint is pose_node
    sampler = one(graph, "KSampler")
    assert graph[sampler["inputs"]["latent_image"][0]]["class_type"] == "VAEEncode"
    assert sampler["inputs"]["positive"] == [sampler["inputs"]["negative"][0], 0]


@pytest.mark.parametrize("lora", ["lora", "base"])
def test_preprocess_variant_differs_by_the_one_node(lora: str) -> None:
    plain = load_template(BUNDLED_TEMPLATES, f"img2img-{lora}-controlnet")
    pre = load_template(BUNDLED_TEMPLATES, f"img2img-{lora}-controlnet-preprocess")
    [pre_id] = [k for k, n in pre.graph.items() if n["class_type"] == controlnet.PREPROCESSOR_NODE]
    rest = {k: v for k, v in pre.graph.items() if k != pre_id}
    apply_id = next(k for k, n in rest.items() if n["class_type"] == "ControlNetApplyAdvanced")
    pose_id = pre.node_of("pose_image")
    hint = pre.graph[pre_id]["inputs"]["image"]  # the scaled pose image, which plain gives ControlNet
    rest[apply_id] = {**rest[apply_id], "inputs": {**rest[apply_id]["inputs"], "image": hint}}
    rest[pose_id] = {**rest[pose_id], "_meta": plain.graph[pose_id]["_meta"]}
    assert rest == plain.graph and pre.slots == plain.slots


def _scaler_of(graph: dict[str, Any], loader: str) -> str:
    """The ImageScale node that takes the LoadImage node `loader`."""
    [node_id] = [
        k for k, n in graph.items() if n["class_type"] == "ImageScale" and n["inputs"]["image"][0] == loader
    ]
    return node_id


def test_base_variant_is_the_lora_one_without_the_lora() -> None:
    with_lora = load_template(BUNDLED_TEMPLATES, IMG2IMG_CONTROLNET)
    base = load_template(BUNDLED_TEMPLATES, IMG2IMG_CONTROLNET_BASE)
    assert set(with_lora.graph) - set(base.graph) == {"2"} and set(base.graph) < set(with_lora.graph)
    assert set(with_lora.slots) - set(base.slots) == {"lora_name", "lora_strength"}
    for node_id, node in base.graph.items():
        assert node["class_type"] == with_lora.graph[node_id]["class_type"]
        for value in node["inputs"].values():
            assert value != ["2", 0] and value != ["2", 1]


# --- plasmactl ---------------------------------------------------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonThread]:
    make_comfyui_tree(tmp_path / "ComfyUI")
    d = DaemonThread(tmp_path).start()
    yield d
    d.stop()


def test_plasmactl_submit_and_generate_with_a_pose(
    daemon: DaemonThread, images: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(images["pose"].parent)  # a relative path is made absolute by plasmactl
    result = ctl(daemon, "submit", "-p", "Spyke, arms up", "--pose", "pose.png", "--strength", "0.5",
                 "--init", str(images["init"]), "--denoise", "0.6", "--controlnet", CN_SAFETENSORS, "--json")
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["request"]["poseImagePath"] == str(images["pose"])
    assert job["request"]["controlnetStrength"] == 0.5 and job["request"]["denoise"] == 0.6
    assert job["request"]["initImagePath"] == str(images["init"])
    assert ctl(daemon, "wait", job["id"]).exit_code == 0

    prompt_file = pipeline_files.prompt_file(daemon.pipeline, 3, 1)
    prompt_file.parent.mkdir(parents=True)
    prompt_file.write_text("Spyke leaps\n")
    result = ctl(daemon, "generate", "-c", "3", "--page", "1", "--pose", str(images["pose"]), "--seed", "4")
    assert result.exit_code == 0, result.output
    image = pipeline_files.raw_dir(daemon.pipeline, 3) / "ch03_p001_v1.png"
    assert result.stdout.strip() == str(image)
    [entry] = json.loads((image.parent.parent / pipeline_files.LOG_NAME).read_text())
    assert entry["controlnetStrength"] == 0.65 and entry["poseImage"] == str(images["pose"])
    assert entry["workflowTemplate"] == "img2img-base-controlnet.json"


def test_plasmactl_refusals_exit_2_with_one_line(daemon: DaemonThread, images: dict[str, Path]) -> None:
    pose = str(images["pose"])
    result = ctl(daemon, "submit", "-p", "x", "--pose", pose, "--strength", "0.95")
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("plasmactl: controlnetStrength: 0.95 is outside 0.4-0.9")
    result = ctl(daemon, "submit", "-p", "x", "--pose", pose, "--reference")
    assert result.exit_code == 2 and "comfyui_controlnet_aux" in result.stderr
    result = ctl(daemon, "submit", "-p", "x", "--pose", str(images["text"]), "--json")
    assert result.exit_code == 2 and json.loads(result.stdout)["error"]["field"] == "poseImagePath"


# --- against the real ComfyUI ------------------------------------------------------------------------


@pytest.fixture
def real_daemon(comfyui: ComfyServer, daemon_env: DaemonEnv, start_daemon: Any) -> Iterator[DaemonProcess]:
    """A real plasmad on the real ComfyUI; the files it stages into the demo's input/ are removed after."""
    inputs = comfyui.dir / "input"
    before = set(listing(inputs))
    yield start_daemon(
        COMFYUI_URL=comfyui.url, COMFYUI_DIR=str(comfyui.dir), PLASMA_CONTROLNET=DEMO_CONTROLNET
    )
    for name in set(listing(inputs)) - before:
        if name.startswith(comfy_inputs.NAME_PREFIX):
            (inputs / name).unlink(missing_ok=True)


def pixels(path: str | Path) -> bytes:
    with Image.open(path) as img:
        return img.convert("RGB").tobytes()


@pytest.mark.comfyui
def test_posed_page_for_real(real_daemon: DaemonProcess, comfyui: ComfyServer, tmp_path: Path) -> None:
    pose = save(skeleton(arms_up=True), tmp_path / "pose.png")
    body = posed(pose, chapter=1, page=1, steps=2, seed=7, loraId=DEMO_LORA)
    status, low = real_daemon.http("POST", "/jobs", {**body, "controlnetStrength": 0.4})
    assert status == 202, low
    low = real_daemon.wait_job(low["id"], 300)
    assert low["status"] == "succeeded", low
    status, high = real_daemon.http("POST", "/jobs", {**body, "controlnetStrength": 0.9})
    high = real_daemon.wait_job(high["id"], 300)
    assert high["status"] == "succeeded", high

    raw = real_daemon.denv.pipeline_dir / "output" / "ch-01" / "raw"
    entries = json.loads((raw.parent / pipeline_files.LOG_NAME).read_text())
    assert [e["controlnetStrength"] for e in entries] == [0.4, 0.9]
    for entry in entries:
        assert entry["poseImage"] == str(pose) and entry["poseImageHash"] == sha(pose)
        assert entry["initImageHash"] == sha(pose) and entry["denoise"] == 0.75
        assert entry["workflowTemplate"] == "img2img-lora-controlnet.json" and entry["loraId"] == DEMO_LORA
        assert (entry["width"], entry["height"]) == (64, 64)
        workflow = json.loads((raw / entry["workflowFile"]).read_text())
        assert one(workflow, "ControlNetApplyAdvanced")["inputs"]["strength"] == entry["controlnetStrength"]
        assert one(workflow, "ControlNetLoader")["inputs"]["control_net_name"] == DEMO_CONTROLNET
    with Image.open(raw / "ch01_p001_v1.png") as img:
        assert img.size == (64, 64)
    assert pixels(raw / "ch01_p001_v1.png") != pixels(raw / "ch01_p001_v2.png")  # strength matters
    # CTRL-01: the skeleton was copied into ComfyUI's input/ under its content hash.
    assert (comfyui.dir / "input" / staged_name(pose)).read_bytes() == pose.read_bytes()


@pytest.mark.comfyui
def test_any_pose_size_at_the_page_size_for_real(real_daemon: DaemonProcess, tmp_path: Path) -> None:
    """A pose far over the hardware limit and of another aspect (refused before), drawn at the
    page's `resolution`; then, without one, an init image whose size is not a multiple of 8."""
    big = save(skeleton((1200, 900)), tmp_path / "big-pose.png")
    init = save(Image.new("RGB", (100, 130), (90, 60, 30)), tmp_path / "init.png")
    requests = [
        (posed(big, resolution={"width": 64, "height": 96}), (64, 96)),
        (posed(big, initImagePath=str(init)), (96, 128)),
    ]
    for body, size in requests:
        page = {"steps": 2, "seed": 3, "chapter": 2, "page": 1}
        status, job = real_daemon.http("POST", "/jobs", {**body, **page})
        assert status == 202, job
        job = real_daemon.wait_job(job["id"], 300)
        assert job["status"] == "succeeded", job
        with Image.open(job["outputs"][0]) as img:
            assert img.size == size
        assert (job["result"]["width"], job["result"]["height"]) == size
    raw = real_daemon.denv.pipeline_dir / "output" / "ch-02" / "raw"
    entries = json.loads((raw.parent / pipeline_files.LOG_NAME).read_text())
    assert [(e["width"], e["height"]) for e in entries] == [(64, 96), (96, 128)]


@pytest.mark.comfyui
def test_reference_panel_is_refused_by_the_real_comfyui(real_daemon: DaemonProcess, tmp_path: Path) -> None:
    pose = save(skeleton(), tmp_path / "panel.png")
    status, body = real_daemon.http("POST", "/jobs", posed(pose, poseIsSkeleton=False, steps=2))
    assert status == 400, body
    assert body["error"]["field"] == "poseIsSkeleton"
    assert "comfyui_controlnet_aux" in body["error"]["message"]


@pytest.mark.comfyui
def test_plasmactl_against_the_real_daemon(real_daemon: DaemonProcess, tmp_path: Path) -> None:
    plasmactl = shutil.which("plasmactl", path=str(Path(sys.executable).parent))
    assert plasmactl, "the console script is installed with the package"
    pose = save(skeleton(), tmp_path / "pose.png")
    init = save(Image.new("RGB", (64, 64), (90, 60, 30)), tmp_path / "init.png")
    prompt_file = pipeline_files.prompt_file(real_daemon.denv.pipeline_dir, 2, 4)
    prompt_file.parent.mkdir(parents=True)
    prompt_file.write_text("a figure on a rooftop\n")
    env = {**os.environ, "PLASMA_SOCKET": str(real_daemon.denv.socket)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([plasmactl, *args], env=env, capture_output=True, text=True, timeout=300)

    done = run("generate", "-c", "2", "--page", "4", "--pose", str(pose), "--steps", "2", "--seed", "3")
    assert done.returncode == 0, done.stderr
    image = real_daemon.denv.pipeline_dir / "output" / "ch-02" / "raw" / "ch02_p004_v1.png"
    assert done.stdout.strip() == str(image) and image.is_file()
    [entry] = json.loads((image.parent.parent / pipeline_files.LOG_NAME).read_text())
    assert entry["workflowTemplate"] == "img2img-base-controlnet.json" and entry["controlnetStrength"] == 0.65

    done = run("submit", "-p", "x", "--pose", str(pose), "--strength", "0.7", "--init", str(init),
               "--denoise", "0.5", "--steps", "2", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded" and job["result"]["controlnetStrength"] == 0.7
    workflow = json.loads(Path(job["outputs"][0]).with_suffix(".workflow.json").read_text())
    assert one(workflow, "KSampler")["inputs"]["denoise"] == 0.5
