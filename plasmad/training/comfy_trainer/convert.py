"""ComfyUI's LoRA files in kohya's layout: the header rewritten, the tensor bytes copied as they are.

SaveLoRA writes `diffusion_model.<ldm path>.lora_up.weight`-style keys into ComfyUI's output folder.
Each checkpoint is rewritten into kohya's layout (`lora_unet_<ldm path>.lora_down.weight`, `.alpha`,
conv layers as kohya shapes them, kohya's `ss_*` metadata) by renaming the header only. ComfyUI's
LoraLoader loads it with every key matched. sd-scripts itself names UNet modules the diffusers way,
so its own tools would not resume from this file.

Blocking: call these through asyncio.to_thread.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any, BinaryIO

from plasmad.comfy import modelfiles
from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.core.fsutil import write_new
from plasmad.training.backend import TrainSpec

_SUFFIXES = ("lora_up.weight", "lora_down.weight", "lora_mid.weight", "alpha", "diff_b", "diff")
_UNET = "diffusion_model."


def unet_shapes(checkpoint: Path) -> dict[str, list[int]]:
    """The UNet's weight shapes by LDM path (from the checkpoint's header; no tensor is read)."""
    tensors, _ = modelfiles.read_header(checkpoint)
    prefix = "model." + _UNET
    return {
        key[len(prefix) : -len(".weight")]: list(value["shape"])
        for key, value in tensors.items()
        if key.startswith(prefix) and key.endswith(".weight") and isinstance(value, dict)
    }


def kohya_metadata(spec: TrainSpec, step: int) -> dict[str, str]:
    """kohya's `ss_*` metadata for a checkpoint at `step`, and plasmad's own."""
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(spec.network_dim),
        "ss_network_alpha": "1.0",  # what TrainLoraNode trains with (scale 1/rank)
        "ss_base_model_version": "sd_v1",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.title": spec.output_name,
        "ss_output_name": spec.output_name,
        "ss_steps": str(step),
        "ss_max_train_steps": str(spec.steps),
        "ss_learning_rate": repr(spec.learning_rate),
        "ss_resolution": f"({spec.resolution}, {spec.resolution})",
        "ss_seed": str(spec.seed),
        "ss_sd_model_name": spec.checkpoint,
        "ss_training_comment": "trained by ComfyUI's TrainLoraNode, run by plasmad",
        "plasma_trainer": "comfyui",
        "plasma_training_id": spec.training_id,
    }


def kohya_key(key: str) -> tuple[str, str, str] | None:
    """`diffusion_model.a.b.lora_up.weight` -> ("lora_unet_a_b.lora_up.weight", "a.b", "lora_up.weight")."""
    if not key.startswith(_UNET):
        return None
    for suffix in _SUFFIXES:
        if key.endswith("." + suffix):
            path = key[len(_UNET) : -len(suffix) - 1]
            return f"lora_unet_{path.replace('.', '_')}.{suffix}", path, suffix
    return None


def _kohya_entry(entry: dict[str, Any], base: list[int] | None, suffix: str) -> dict[str, Any]:
    """A tensor's header entry with kohya's shape: a conv LoRA is 4-D there, 2-D in ComfyUI's file
    (the same bytes, row-major)."""
    entry = dict(entry)
    shape = list(entry["shape"])
    if base is not None and len(base) == 4 and len(shape) == 2:
        out_ch, in_ch, kh, kw = base
        if suffix == "lora_down.weight" and shape[1] == in_ch * kh * kw:
            entry["shape"] = [shape[0], in_ch, kh, kw]
        elif suffix == "lora_up.weight" and shape[0] == out_ch:
            entry["shape"] = [shape[0], shape[1], 1, 1]
    return entry


def to_kohya(src: Path, dst: Path, unet_shapes: dict[str, list[int]], metadata: dict[str, str]) -> None:
    """Rewrite a SaveLoRA file in kohya's layout at `dst` (blocking). Only the header changes: keys
    renamed, conv LoRAs given kohya's 4-D shapes (the same bytes, row-major), metadata added."""
    old_len, tensors = modelfiles.read_raw_header(src)
    tensors.pop("__metadata__", None)
    header: dict[str, Any] = {}
    for key, entry in tensors.items():
        renamed = kohya_key(key)
        if renamed is None:
            header[key] = entry
            continue
        new_key, path, suffix = renamed
        header[new_key] = _kohya_entry(entry, unet_shapes.get(path), suffix)
    header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes

    def write(out: BinaryIO) -> None:
        with src.open("rb") as f:
            f.seek(8 + old_len)
            out.write(struct.pack("<Q", len(blob)) + blob)
            shutil.copyfileobj(f, out, 1024 * 1024)  # the tensors, byte for byte, never all in memory

    # A training's own folder: each name is written once, never replaced.
    if not write_new(dst, write):
        raise PlasmaError(ErrorCode.CONFLICT, f"{dst} exists already; not overwritten")
