"""Request validation, in the one place every entry point uses (HTTP, JSON-RPC, CLI, benchmark).

`models.parse` has already checked types and refused unknown fields; here the hardware limits of
`plasmad.limits` are applied (GEN-03), and everything that needs ComfyUI or the disk: the sampler
and scheduler ComfyUI offers, the checkpoint and LoRA files and their family (SD 1.5 only, read
from the safetensors header). Every refusal is a PlasmaError INVALID_INPUT naming the field.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plasmad import limits, modelfiles
from plasmad.comfyui import ComfyClient
from plasmad.config import Config
from plasmad.errors import invalid
from plasmad.models import GenerateRequest
from plasmad.templates import IMG2IMG_CONTROLNET, TXT2IMG_BASE, TXT2IMG_LORA


def check_batch_size(value: int, field: str = "batch_size") -> None:
    if value != limits.BATCH_SIZE:
        raise invalid(
            field,
            f"{value} is not allowed: batch size {limits.BATCH_SIZE} is the only safe value "
            "on 16 GB of unified memory",
        )


def check_size(width: int, height: int, field: str = "resolution") -> None:
    for name, value, most in (("width", width, limits.MAX_WIDTH), ("height", height, limits.MAX_HEIGHT)):
        where = f"{field}.{name}" if field else name
        if value > most:
            raise invalid(
                where,
                f"{value} is over the hardware limit of {most} "
                f"(max {limits.MAX_WIDTH}x{limits.MAX_HEIGHT} on an M1 Pro 16 GB)",
            )
        if value < limits.MIN_SIZE:
            raise invalid(where, f"{value} is under the minimum of {limits.MIN_SIZE}")
        if value % limits.SIZE_MULTIPLE:
            raise invalid(where, f"{value} is not a multiple of {limits.SIZE_MULTIPLE}")


def check_controlnet_strength(value: float, field: str = "controlnetStrength") -> None:
    lo, hi = limits.CONTROLNET_STRENGTH_MIN, limits.CONTROLNET_STRENGTH_MAX
    if not lo <= value <= hi:
        raise invalid(field, f"{value} is outside {lo}-{hi}")


@dataclass(frozen=True)
class GenerationPlan:
    """A validated generation: what the worker fills into which template."""

    template: str
    seed: int
    checkpoint: str
    lora_id: str | None
    slots: dict[str, Any]
    request: dict[str, Any]  #: the wire request with seed and checkpoint filled in


async def validate_generate(req: GenerateRequest, cfg: Config, comfy: ComfyClient) -> GenerationPlan:
    check_batch_size(req.batch_size)
    check_size(req.resolution.width, req.resolution.height)
    if (req.chapter is None) != (req.page is None):
        raise invalid("page" if req.page is None else "chapter", "chapter and page go together")
    if req.chapter is not None:
        cfg.require_pipeline_dir()
    if req.pose_image_path is None:
        for field, value in (
            ("controlnetStrength", req.controlnet_strength),
            ("initImagePath", req.init_image_path),
            ("denoise", req.denoise),
        ):
            if value is not None:
                raise invalid(field, "only applies with poseImagePath (ControlNet)")
    elif req.controlnet_strength is not None:
        check_controlnet_strength(req.controlnet_strength)

    samplers = await comfy.input_choices("KSampler", "sampler_name")
    if samplers and req.sampler not in samplers:
        raise invalid("sampler", f"{req.sampler!r} is not a ComfyUI sampler", {"choices": samplers})
    schedulers = await comfy.input_choices("KSampler", "scheduler")
    if schedulers and req.scheduler not in schedulers:
        raise invalid("scheduler", f"{req.scheduler!r} is not a ComfyUI scheduler", {"choices": schedulers})

    models = cfg.require_comfyui_dir() / "models"
    checkpoint = req.checkpoint or cfg.checkpoint
    if not checkpoint:
        raise invalid("checkpoint", "no checkpoint given and PLASMA_CHECKPOINT is not set")
    await asyncio.to_thread(
        modelfiles.check_model, models / "checkpoints", checkpoint, "checkpoint", "checkpoint"
    )
    if req.lora_id is not None:
        await asyncio.to_thread(modelfiles.check_model, models / "loras", req.lora_id, "loraId", "lora")

    seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
    slots: dict[str, Any] = {
        "prompt_text": req.prompt,
        "negative_prompt": req.negative_prompt,
        "seed": seed,
        "checkpoint_name": checkpoint,
        "steps": req.steps,
        "cfg": req.cfg,
        "sampler": req.sampler,
        "scheduler": req.scheduler,
        "unet_dtype": cfg.unet_dtype,
    }
    if req.pose_image_path is not None:
        template = IMG2IMG_CONTROLNET
    else:
        template = TXT2IMG_LORA if req.lora_id else TXT2IMG_BASE
        slots.update(width=req.resolution.width, height=req.resolution.height)
    if req.lora_id is not None:
        slots.update(lora_name=req.lora_id, lora_strength=req.lora_strength)
    request = req.model_dump(mode="json", by_alias=True, exclude_none=True)
    request.update(seed=seed, checkpoint=checkpoint)
    return GenerationPlan(
        template=template, seed=seed, checkpoint=checkpoint, lora_id=req.lora_id, slots=slots, request=request
    )


def readable_image(path_text: str, field: str) -> Path:
    """A path that names an image Pillow can read (blocking: run in a thread)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path_text).expanduser()
    try:
        with Image.open(path) as img:
            img.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise invalid(field, f"{path_text!r} is not a readable image ({exc})") from None
    return path.resolve()
