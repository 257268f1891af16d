"""Request validation, in the one place every entry point uses (HTTP, JSON-RPC, CLI, benchmark).

`models.parse` has already checked types and refused unknown fields; here the hardware limits of
`plasmad.core.limits` are applied (GEN-03), and everything that needs ComfyUI or the disk: the sampler
and scheduler ComfyUI offers, the checkpoint and LoRA files and their family (SD 1.5 only, read
from the safetensors header), and whether the LoRA's modules fit the checkpoint's layers
(`plasmad.comfy.lora_fit`). Every refusal is a PlasmaError INVALID_INPUT naming the field.

What ComfyUI offers is read from its last known catalogue (the monitor's), never from ComfyUI
itself: a job is queued whether ComfyUI answers or not. Before refusing a name the catalogue
lacks, it is read again from ComfyUI if ComfyUI answers (a node installed since, say).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

from plasmad.comfy import inputs as comfy_inputs
from plasmad.comfy import lora_fit, model_catalog, model_paths
from plasmad.comfy.catalogue import Catalogue
from plasmad.comfy.model_paths import ModelFolders
from plasmad.comfy.monitor import ComfyMonitor
from plasmad.comfy.precision import UnetDtype
from plasmad.comfy.templates import TXT2IMG_BASE, TXT2IMG_LORA
from plasmad.core import limits
from plasmad.core.config import Config
from plasmad.core.errors import invalid
from plasmad.core.limits import check_batch_size, check_controlnet_strength, check_size
from plasmad.core.wire import GenerateRequest
from plasmad.generation import controlnet
from plasmad.generation.controlnet import ControlNetPlan


@dataclass(frozen=True)
class GenerationPlan:
    """A validated generation: what the worker fills into which template."""

    template: str
    seed: int
    checkpoint: str
    lora_id: str | None
    slots: dict[str, Any]
    request: dict[str, Any]  #: the wire request with seed and checkpoint filled in
    unet_dtype: UnetDtype  #: the UNet's precision in the graph, and why
    controlnet: ControlNetPlan | None = None  #: its images go into ComfyUI's input/ at submit


async def validate_generate(req: GenerateRequest, cfg: Config, monitor: ComfyMonitor) -> GenerationPlan:
    _check_request(req, cfg)
    await _check_sampling(req, monitor)
    folders, checkpoint = await _check_models(req, cfg)
    seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
    unet_dtype = monitor.unet_dtype(cfg.unet_dtype)
    slots = _common_slots(req, seed, checkpoint, unet_dtype.value)
    cn_plan: ControlNetPlan | None = None
    if req.pose_image_path is not None:
        cn_plan = await validate_controlnet(req, cfg, monitor, folders)
        template = controlnet.template_name(lora=req.lora_id is not None, preprocess=cn_plan.preprocess)
        slots.update(cn_plan.slots())
    else:
        template = TXT2IMG_LORA if req.lora_id else TXT2IMG_BASE
        slots.update(width=req.resolution.width, height=req.resolution.height)
    if req.lora_id is not None:
        slots.update(lora_name=req.lora_id, lora_strength=req.lora_strength)
    request = req.model_dump(mode="json", by_alias=True, exclude_none=True)
    request.update(seed=seed, checkpoint=checkpoint)
    if cn_plan is not None:
        request.update(controlnet=cn_plan.model, controlnetStrength=cn_plan.strength)
        # The size it runs at, asked for or fitted from the init image: running the request again
        # (or reading it) gives the same.
        request["resolution"] = {"width": cn_plan.width, "height": cn_plan.height}
    return GenerationPlan(
        template=template,
        seed=seed,
        checkpoint=checkpoint,
        lora_id=req.lora_id,
        slots=slots,
        request=request,
        unet_dtype=unet_dtype,
        controlnet=cn_plan,
    )


def _check_request(req: GenerateRequest, cfg: Config) -> None:
    """The limits, and the fields that only go together (chapter and page; the ControlNet ones)."""
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
            ("controlnet", req.controlnet),
            ("poseIsSkeleton", None if req.pose_is_skeleton else False),
        ):
            if value is not None:
                raise invalid(field, "only applies with poseImagePath (ControlNet)")
    elif req.controlnet_strength is not None:
        check_controlnet_strength(req.controlnet_strength)


async def _check_sampling(req: GenerateRequest, monitor: ComfyMonitor) -> None:
    """The sampler and scheduler are ones ComfyUI offers, as it last said (or, before any ComfyUI
    was seen, ones ComfyUI 0.3.75 offers)."""

    def unknown(catalogue: Catalogue) -> bool:
        return req.sampler not in catalogue.samplers or req.scheduler not in catalogue.schedulers

    catalogue = monitor.catalogue
    if unknown(catalogue):
        catalogue = await monitor.refresh()
    if req.sampler not in catalogue.samplers:
        raise invalid(
            "sampler", f"{req.sampler!r} is not a ComfyUI sampler", {"choices": list(catalogue.samplers)}
        )
    if req.scheduler not in catalogue.schedulers:
        raise invalid(
            "scheduler",
            f"{req.scheduler!r} is not a ComfyUI scheduler",
            {"choices": list(catalogue.schedulers)},
        )


async def _check_models(req: GenerateRequest, cfg: Config) -> tuple[ModelFolders, str]:
    """ComfyUI's model folders, and the checkpoint: both it and the LoRA SD 1.5 by their headers,
    found where ComfyUI finds them (links and extra_model_paths.yaml included)."""
    folders = await asyncio.to_thread(model_paths.model_folders, cfg)
    checkpoint = req.checkpoint or cfg.checkpoint
    if not checkpoint:
        raise invalid("checkpoint", "no checkpoint given and PLASMA_CHECKPOINT is not set")
    base = await asyncio.to_thread(
        model_catalog.check_model, folders, "checkpoints", checkpoint, "checkpoint"
    )
    if req.lora_id is not None:
        lora = await asyncio.to_thread(model_catalog.check_model, folders, "loras", req.lora_id, "loraId")
        # SD 1.5 both, yet the LoRA may be cut for another UNet: ComfyUI would load part of it and
        # draw the page without the character, reporting success.
        await asyncio.to_thread(lora_fit.check_lora_fits, base, lora, "loraId")
    return folders, checkpoint


def _common_slots(req: GenerateRequest, seed: int, checkpoint: str, unet_dtype: str) -> dict[str, Any]:
    """The slots every template has."""
    return {
        "prompt_text": req.prompt,
        "negative_prompt": req.negative_prompt,
        "seed": seed,
        "checkpoint_name": checkpoint,
        "steps": req.steps,
        "cfg": req.cfg,
        "sampler": req.sampler,
        "scheduler": req.scheduler,
        "unet_dtype": unet_dtype,
    }


async def validate_controlnet(
    req: GenerateRequest, cfg: Config, monitor: ComfyMonitor, folders: ModelFolders
) -> ControlNetPlan:
    """CTRL-01..03: the model, the pose source, the pose and init images (read, not yet copied),
    and the size: `resolution` if given, else the init image's fitted to the limits. Either
    image may have any size and aspect: the graph scales and centre-crops both to it."""
    assert req.pose_image_path is not None
    strength = req.controlnet_strength
    if strength is None:
        strength = limits.CONTROLNET_STRENGTH_DEFAULT
    names = [cfg.controlnet] if req.controlnet is None else req.controlnet
    if len(names) != limits.CONTROLNET_MODELS_AT_ONCE:
        raise invalid(
            "controlnet",
            f"{len(names)} models given: one ControlNet model at a time is what fits in 16 GB",
        )
    model = names[0]
    await asyncio.to_thread(model_catalog.check_model, folders, "controlnet", model, "controlnet")
    if not req.pose_is_skeleton:
        await _check_preprocessor(monitor)

    pose = await asyncio.to_thread(comfy_inputs.read_image, req.pose_image_path, "poseImagePath")
    init = pose
    if req.init_image_path is not None:
        init = await asyncio.to_thread(comfy_inputs.read_image, req.init_image_path, "initImagePath")
    if "resolution" in req.model_fields_set:  # the page's size: both images are cropped to it
        width, height = req.resolution.width, req.resolution.height
    else:  # img2img's own size: the init image's, fitted to the limits
        width, height = limits.fit_size(init.width, init.height)
    return ControlNetPlan(
        model=model,
        strength=strength,
        denoise=req.denoise,
        preprocess=not req.pose_is_skeleton,
        pose=pose,
        init=init,
        width=width,
        height=height,
    )


async def _check_preprocessor(monitor: ComfyMonitor) -> None:
    """The OpenPose preprocessor (a custom node) as ComfyUI last listed it; not judged before any
    ComfyUI was seen (the job then fails in ComfyUI, saying so, if it is missing)."""
    node = controlnet.PREPROCESSOR_NODE
    catalogue = monitor.catalogue
    if catalogue.has_node(node) is not True:
        catalogue = await monitor.refresh()
    if catalogue.has_node(node) is not None:
        controlnet.check_preprocessor(catalogue.node(node))

