"""Will a LoRA load into a checkpoint? Judged from the two safetensors headers alone (no torch).

ComfyUI applies a LoRA module by module: it maps each module's name to a weight of the model and
adds the module's low-rank product, reshaped to that weight. A module whose name maps to no weight
is skipped ("lora key not loaded"), one whose product has another size fails its reshape ("shape
... is invalid"); either way the prompt still succeeds, drawn mostly by the base model: a page
without the character and no error. So the fit is checked at submit, and a LoRA trained for
another model (another architecture, another depth) is refused before anything runs.

The names are matched the way ComfyUI matches them (its comfy/lora.py and comfy/utils.py, read to
learn the scheme; written here anew): kohya names a module `lora_unet_<path>` with the path's dots
as underscores, the path either LDM-style as the checkpoint stores it (`input_blocks_1_1_proj_in`)
or diffusers-style as sd-scripts does (`down_blocks_0_attentions_0_proj_in`), and text-encoder
modules `lora_te_text_model_encoder_layers_<i>_<name>`. The diffusers names are derived from the
checkpoint's own UNet layout, read from its keys, so a cut-down UNet maps like ComfyUI maps it.

Blocking (reads headers): call through asyncio.to_thread. Results are cached per file
(path, size, mtime): a chapter of pages with one LoRA reads each header once.
"""

from __future__ import annotations

import functools
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plasmad.comfy.modelfiles import HeaderError, read_header
from plasmad.core.errors import invalid

UNET = "model.diffusion_model."
CLIP = "cond_stage_model.transformer."
#: The text-encoder layers kohya trains, by the checkpoint's name and kohya's.
_CLIP_MODULES = {
    "mlp.fc1": "mlp_fc1",
    "mlp.fc2": "mlp_fc2",
    "self_attn.k_proj": "self_attn_k_proj",
    "self_attn.q_proj": "self_attn_q_proj",
    "self_attn.v_proj": "self_attn_v_proj",
    "self_attn.out_proj": "self_attn_out_proj",
}
#: A ResNet block's layers: LDM name -> diffusers name.
_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
#: Top-level layers: LDM name -> diffusers name.
_BASIC = {
    "input_blocks.0.0": "conv_in",
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}
#: The prefixes of kohya's module names (the only LoRA layout judged here).
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_")
_BLOCK = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.+)$")
_MIDDLE = re.compile(r"^middle_block\.(\d+)\.(.+)$")
_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)$")
Shape = tuple[int, ...]
Places = dict[int, tuple[int, int]]  #: UNet block number -> (level, index in the level)


@dataclass(frozen=True)
class LoraFit:
    """How a LoRA's modules meet a checkpoint's weights."""

    modules: int  #: kohya-style modules in the LoRA
    missing: tuple[str, ...]  #: modules whose name maps to no weight of the checkpoint
    misshapen: tuple[str, ...]  #: modules that map to a weight of another size

    @property
    def unloadable(self) -> int:
        return len(self.missing) + len(self.misshapen)


# --- the checkpoint: which module names it can take, and their weights' shapes ---------------------


def _unet_blocks(paths: Iterable[str]) -> tuple[Places, Places]:
    """Where each input and output block sits in diffusers' layout: block -> (level, index).

    Input blocks after conv_in go level by level: ResNet blocks (each maybe with attention),
    then a downsampler (`op`) that ends the level. Output blocks likewise, a level ending with
    the block that carries an upsampler (`<block>.<n>.conv`)."""
    subs: dict[tuple[str, int], set[str]] = defaultdict(set)
    for path in paths:
        if m := _BLOCK.match(path):
            subs[(m.group(1), int(m.group(2)))].add(f"{m.group(3)}.{m.group(4).split('.', 1)[0]}")
    places: dict[str, Places] = {"input_blocks": {}, "output_blocks": {}}
    for side, ends_level in (("input_blocks", "0.op"), ("output_blocks", ".conv")):
        level = index = 0
        for block in sorted(n for s, n in subs if s == side and not (s == "input_blocks" and n == 0)):
            if side == "input_blocks" and ends_level in subs[(side, block)]:
                places[side][block] = (level, -1)  # the downsampler
                level, index = level + 1, 0
                continue
            places[side][block] = (level, index)
            index += 1
            if side == "output_blocks" and any(s.endswith(ends_level) for s in subs[(side, block)]):
                level, index = level + 1, 0
    return places["input_blocks"], places["output_blocks"]


def _diffusers_name(path: str, inputs: Places, outputs: Places) -> str | None:
    """An LDM UNet layer path (no `.weight`) as diffusers names it, or None if it has no such name."""
    if path in _BASIC:
        return _BASIC[path]
    if m := _MIDDLE.match(path):
        part, rest = int(m.group(1)), m.group(2)
        if part == 1:
            return f"mid_block.attentions.0.{rest}"
        layer = _RESNET.get(rest)
        return f"mid_block.resnets.{part // 2}.{layer}" if layer else None
    m = _BLOCK.match(path)
    if m is None:
        return None
    side, block, part, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    where = (inputs if side == "input_blocks" else outputs).get(block)
    if where is None:
        return None
    level, index = where
    prefix = f"{'down' if side == 'input_blocks' else 'up'}_blocks.{level}"
    if index < 0:  # input_blocks.N.0.op: the downsampler
        return f"{prefix}.downsamplers.0.conv" if rest == "op" else None
    if part == 0:
        layer = _RESNET.get(rest)
        return f"{prefix}.resnets.{index}.{layer}" if layer else None
    if rest == "conv":  # output_blocks.N.{1,2}.conv: the upsampler
        return f"{prefix}.upsamplers.0.conv"
    return f"{prefix}.attentions.{index}.{rest}" if part == 1 else None


def module_targets(tensors: dict[str, Any]) -> dict[str, Shape]:
    """Every kohya module name a checkpoint can take -> the shape of the weight it patches."""
    weights = {
        key[: -len(".weight")]: tuple(int(d) for d in entry["shape"])
        for key, entry in tensors.items()
        if key.endswith(".weight") and isinstance(entry, dict) and isinstance(entry.get("shape"), list)
    }
    unet = {key[len(UNET) :]: shape for key, shape in weights.items() if key.startswith(UNET)}
    inputs, outputs = _unet_blocks(unet)
    targets: dict[str, Shape] = {}
    for path, shape in unet.items():
        targets["lora_unet_" + path.replace(".", "_")] = shape
        name = _diffusers_name(path, inputs, outputs)
        if name is not None:
            targets["lora_unet_" + name.replace(".", "_")] = shape
    for key, shape in weights.items():
        if key.startswith(CLIP) and (m := _LAYER.match(key[len(CLIP) :])) and m.group(2) in _CLIP_MODULES:
            for prefix in ("lora_te_", "lora_te1_"):
                targets[f"{prefix}text_model_encoder_layers_{m.group(1)}_{_CLIP_MODULES[m.group(2)]}"] = shape
    return targets


# --- the LoRA: its modules, and whether each fits ---------------------------------------------------


def lora_modules(tensors: dict[str, Any]) -> dict[str, dict[str, Shape]]:
    """The LoRA's kohya-style modules: module name -> {tensor suffix: shape}."""
    modules: dict[str, dict[str, Shape]] = defaultdict(dict)
    for key, entry in tensors.items():
        if not key.startswith(KOHYA_PREFIXES) or "." not in key or not isinstance(entry, dict):
            continue
        module, suffix = key.split(".", 1)
        modules[module][suffix] = tuple(int(d) for d in entry.get("shape") or ())
    return dict(modules)


def _product_fits(parts: dict[str, Shape], weight: Shape) -> bool:
    """Whether up x down, flattened as ComfyUI multiplies them, reshapes to `weight`."""
    up, down = parts.get("lora_up.weight"), parts.get("lora_down.weight")
    if not up or not down:
        return True  # another adapter type (LoHa, a diff...): its name matched, its maths are not judged
    if math.prod(up[1:]) != down[0]:
        return False
    return up[0] * math.prod(down[1:]) == math.prod(weight)


def fit(targets: dict[str, Shape], modules: dict[str, dict[str, Shape]]) -> LoraFit:
    missing, misshapen = [], []
    for name in sorted(modules):
        weight = targets.get(name)
        if weight is None:
            missing.append(name)
        elif not _product_fits(modules[name], weight):
            misshapen.append(name)
    return LoraFit(modules=len(modules), missing=tuple(missing), misshapen=tuple(misshapen))


# --- cached per file, and the check validation runs ------------------------------------------------


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4)
def _checkpoint_targets(key: tuple[str, int, int]) -> dict[str, Shape]:
    return module_targets(read_header(Path(key[0]))[0])


@functools.lru_cache(maxsize=16)
def _lora_modules(key: tuple[str, int, int]) -> dict[str, dict[str, Shape]]:
    return lora_modules(read_header(Path(key[0]))[0])


@functools.lru_cache(maxsize=32)
def _lora_fit(checkpoint: tuple[str, int, int], lora: tuple[str, int, int]) -> LoraFit:
    return fit(_checkpoint_targets(checkpoint), _lora_modules(lora))


def lora_fit(checkpoint: Path, lora: Path) -> LoraFit:
    """How `lora` fits `checkpoint` (blocking; cached while neither file changes)."""
    return _lora_fit(_file_key(checkpoint), _file_key(lora))


def check_lora_fits(checkpoint: Path, lora: Path, field: str = "loraId") -> LoraFit:
    """Refuse (400 on `field`) a LoRA some of whose modules the checkpoint would not load."""
    try:
        result = lora_fit(checkpoint, lora)
    except (HeaderError, OSError) as exc:
        what = f"{lora.name!r} could not be matched against {checkpoint.name!r}: {exc}"
        raise invalid(field, what) from None
    if result.unloadable:
        reasons = []
        if result.missing:
            reasons.append(f"{len(result.missing)} name layers {checkpoint.name} does not have")
        if result.misshapen:
            reasons.append(f"{len(result.misshapen)} have other sizes than its layers")
        raise invalid(
            field,
            f"{lora.name!r} does not fit the checkpoint {checkpoint.name!r}: {result.unloadable} of its "
            f"{result.modules} modules would not load ({'; '.join(reasons)}). It was likely trained for "
            "another model (another architecture or depth): use a LoRA trained on this checkpoint's "
            "family, or pick the checkpoint it was trained on",
            {
                "modules": result.modules,
                "unloadable": result.unloadable,
                "missing": list(result.missing[:10]),
                "misshapen": list(result.misshapen[:10]),
            },
        )
    return result
