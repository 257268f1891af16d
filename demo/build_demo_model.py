#!/usr/bin/env python3
"""Build the bundled demo models (and demo input images) into a ComfyUI install.

Usage (with the ComfyUI venv's python, since it needs ComfyUI's own classes and torch):

    python demo/build_demo_model.py MODELS_DIR [--comfyui DIR] [--input-dir DIR] [--force]

MODELS_DIR is ComfyUI's models folder. ComfyUI's source is looked for in MODELS_DIR/.. unless
--comfyui says otherwise; the demo PNGs go to MODELS_DIR/../input unless --input-dir says otherwise.

What it writes (random weights, so the images are noise, but real files that ComfyUI loads through
its ordinary paths with no missing/unexpected-key or "lora key not loaded" warnings):

- checkpoints/plasma-demo-sd15.safetensors: a tiny SD 1.5 checkpoint. ComfyUI detects the model
  family from state-dict shapes; model_channels 320 and context_dim 768 make it SD15 while the
  UNet depth is cut down (36.7M params). CLIP-L and the VAE stay full size: ComfyUI fixes their
  configs. fp16, like the usual SD 1.5 release files.
- loras/spyke_plasma_demo.safetensors: a kohya-style LoRA (rank 4) for that checkpoint, with the
  kohya metadata keys that tools look at (ss_base_model_version, modelspec.architecture).
- controlnet/plasma-demo-openpose.safetensors: an ldm-format SD15 ControlNet (control_model.*)
  matching the tiny UNet.
- input/plasma-demo-pose.png, input/plasma-demo-init.png: the images the stored img2img template
  names, so that graph runs as it is.

Deterministic: every tensor is filled from its own seed (a hash of its key), and the safetensors
files are written by hand with a sorted header, because the safetensors library writes several
metadata keys in an order that varies between runs. Idempotent and cheap on a rerun: a model file
whose header (key names, shapes, dtypes, offsets, build id) and size already match is kept; a PNG
is kept when its bytes match.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import struct
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

# Bump when the fill rules change: it is part of every header, so old files get rebuilt.
BUILD_ID = "plasma-demo-1"
BUILD_KEY = "plasma.demo_build"

CHECKPOINT_NAME = "plasma-demo-sd15.safetensors"
LORA_NAME = "spyke_plasma_demo.safetensors"
CONTROLNET_NAME = "plasma-demo-openpose.safetensors"
POSE_IMAGE_NAME = "plasma-demo-pose.png"
INIT_IMAGE_NAME = "plasma-demo-init.png"

# Small, so that the stored img2img template (whose size the init image sets) runs quickly on a
# CPU; a multiple of 64 in both directions, as ControlNet's hint block and the VAE like.
DEMO_IMAGE_SIZE = (128, 192)

LORA_RANK = 4
LORA_ALPHA = 4.0

# The config ComfyUI's detect_unet_config() reads back from the state dict, plus SD15's fixed
# extras (8 heads). Checked against ComfyUI's detection at build time, so a drift in ComfyUI shows
# up here and not as a silent SD 1.x misdetection later.
UNET_CONFIG: dict[str, Any] = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1, 1],
    "transformer_depth": [0, 1],
    "transformer_depth_output": [0, 0, 1, 1],
    "channel_mult": [1, 1],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
    "num_heads": 8,
    "num_head_channels": -1,
}

# ComfyUI's default SD1.x VAE (comfy/sd.py); embed_dim 4 gives the quant convs that real SD 1.5
# checkpoints carry, so ComfyUI takes its AutoencoderKL path.
VAE_DDCONFIG: dict[str, Any] = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}

# Where kohya's sd-scripts puts LoRA modules in the text encoder (CLIPAttention and CLIPMLP), named
# the way ComfyUI's comfy/lora.py maps them ("lora_te_text_model_encoder_layers_N_<name>").
CLIP_LORA_TARGETS = {
    "self_attn.q_proj": "self_attn_q_proj",
    "self_attn.k_proj": "self_attn_k_proj",
    "self_attn.v_proj": "self_attn_v_proj",
    "self_attn.out_proj": "self_attn_out_proj",
    "mlp.fc1": "mlp_fc1",
    "mlp.fc2": "mlp_fc2",
}
CLIP_LAYERS = 12

DType = Literal["F16", "F32"]
Fill = Literal["zeros", "ones", "uniform", "const"]

_NUMPY_DTYPE: dict[DType, str] = {"F16": "<f2", "F32": "<f4"}
_ITEMSIZE: dict[DType, int] = {"F16": 2, "F32": 4}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a file: where it goes and how its values are made."""

    name: str
    shape: tuple[int, ...]
    dtype: DType
    fill: Fill
    # Standard deviation for "uniform", the value for "const".
    scale: float = 0.0

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _ITEMSIZE[self.dtype]


@dataclass(frozen=True)
class Comfy:
    """The few ComfyUI modules the builder needs, imported from the given ComfyUI directory."""

    torch: Any
    ops: Any
    sd1_clip: Any
    model_detection: Any
    unet_cls: Any
    controlnet_cls: Any
    vae_cls: Any


def import_comfy(comfy_dir: Path) -> Comfy:
    """Import ComfyUI's model classes from its source tree (it is not an installed package)."""
    if not (comfy_dir / "comfy" / "model_detection.py").is_file():
        raise SystemExit(f"error: no ComfyUI source in {comfy_dir} (use --comfyui DIR)")
    sys.path.insert(0, str(comfy_dir))
    import comfy.cli_args

    # comfy.ops pulls in comfy.model_management, which probes for a GPU on import unless told this
    # is a CPU run; the builder only needs shapes, never a device.
    comfy.cli_args.args.cpu = True
    import comfy.cldm.cldm
    import comfy.model_detection
    import comfy.ops
    import comfy.sd1_clip
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return Comfy(
        torch=torch,
        ops=comfy.ops,
        sd1_clip=comfy.sd1_clip,
        model_detection=comfy.model_detection,
        unet_cls=UNetModel,
        controlnet_cls=comfy.cldm.cldm.ControlNet,
        vae_cls=AutoencoderKL,
    )


def meta_shapes(module: Any, prefix: str) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of a module's state dict, under the checkpoint's prefix."""
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def unet_shapes(c: Comfy) -> dict[str, tuple[int, ...]]:
    # The meta device gives names and shapes without allocating or initialising 37M weights.
    unet = c.unet_cls(**UNET_CONFIG, device="meta", operations=c.ops.disable_weight_init)
    return meta_shapes(unet, "model.diffusion_model.")


def clip_shapes(c: Comfy) -> dict[str, tuple[int, ...]]:
    clip = c.sd1_clip.SD1ClipModel(device="meta")
    shapes = meta_shapes(clip, "")
    # What ComfyUI's SD15.process_clip_state_dict_for_saving drops and renames: SD 1.5 checkpoints
    # carry neither the projection nor logit_scale, and ComfyUI fills them in without a warning.
    shapes.pop("clip_l.transformer.text_projection.weight", None)
    shapes.pop("clip_l.logit_scale", None)
    return {"cond_stage_model." + k[len("clip_l.") :]: v for k, v in shapes.items()}


def vae_shapes(c: Comfy) -> dict[str, tuple[int, ...]]:
    with c.torch.device("meta"):
        vae = c.vae_cls(ddconfig=dict(VAE_DDCONFIG), embed_dim=VAE_DDCONFIG["z_channels"])
    return meta_shapes(vae, "first_stage_model.")


def controlnet_shapes(c: Comfy) -> dict[str, tuple[int, ...]]:
    config = {k: v for k, v in UNET_CONFIG.items() if k != "out_channels"}
    cnet = c.controlnet_cls(**config, hint_channels=3, device="meta", operations=c.ops.disable_weight_init)
    return meta_shapes(cnet, "control_model.")


def check_detection(
    c: Comfy, shapes: Mapping[str, tuple[int, ...]], prefix: str, ignore: Iterable[str] = ()
) -> None:
    """Fail the build unless ComfyUI reads this UNet back as SD15 with our config."""
    sd = {k: c.torch.empty(v, device="meta") for k, v in shapes.items()}
    model_config = c.model_detection.model_config_from_unet(sd, prefix)
    name = type(model_config).__name__ if model_config is not None else None
    if name != "SD15":
        raise SystemExit(f"error: ComfyUI detects the demo UNet ({prefix}) as {name}, not SD15")
    detected = model_config.unet_config
    skip = {"out_channels", *ignore}
    drift = {
        k: (v, detected.get(k)) for k, v in UNET_CONFIG.items() if k not in skip and detected.get(k) != v
    }
    if drift:
        raise SystemExit(f"error: ComfyUI reads a different UNet config ({prefix}): {drift}")


def fan_in(shape: tuple[int, ...]) -> int:
    return math.prod(shape[1:]) if len(shape) > 1 else shape[0]


def weight_spec(name: str, shape: tuple[int, ...], dtype: DType, gain: float = 1.0) -> TensorSpec:
    """The fill rule for a model weight.

    1-D weights are the norm layers' scales (GroupNorm/LayerNorm): ones, as trained models have
    them near one. Biases are zero. Matrices and kernels get std gain/sqrt(fan_in) (LeCun scale),
    which keeps activations around unit size through the residual stacks, so the fp16 UNet neither
    overflows nor collapses to a constant, and the decoded image is finite and varies with the
    seed. The usual zero-init of output layers is not copied: zeroed residual branches would make
    the UNet ignore the prompt, and then neither the LoRA nor the ControlNet could change a pixel.
    """
    if name.endswith(".bias"):
        return TensorSpec(name, shape, dtype, "zeros")
    if len(shape) == 1:
        return TensorSpec(name, shape, dtype, "ones")
    return TensorSpec(name, shape, dtype, "uniform", gain / math.sqrt(fan_in(shape)))


def checkpoint_specs(c: Comfy) -> list[TensorSpec]:
    unet = unet_shapes(c)
    check_detection(c, unet, "model.diffusion_model.")
    shapes = {**unet, **clip_shapes(c), **vae_shapes(c)}
    gains = {
        # A softer decoder output keeps most pixels inside [-1, 1] instead of clipping to pure
        # black/white patches.
        "first_stage_model.decoder.conv_out.weight": 0.5,
    }
    return [weight_spec(k, v, "F16", gains.get(k, 1.0)) for k, v in sorted(shapes.items())]


def is_unet_lora_target(key: str, shape: tuple[int, ...]) -> bool:
    """kohya's default LoRA targets in the UNet: the Transformer2D blocks' linear/1x1 layers."""
    if len(shape) < 2:
        return False
    return ".transformer_blocks." in key or key.endswith((".proj_in.weight", ".proj_out.weight"))


def lora_module_specs(module: str, weight_shape: tuple[int, ...]) -> list[TensorSpec]:
    """down/up/alpha for one module; conv 1x1 layers keep their kernel dims as kohya does."""
    out_dim, in_dim, *kernel = weight_shape
    down = (LORA_RANK, in_dim, *kernel)
    up = (out_dim, LORA_RANK, *([1] * len(kernel)))
    # With alpha == rank the scale is 1, and up ~ 1/sqrt(rank) makes up @ down about as large as
    # the base weight: strength 0 vs 1 changes the picture clearly. (kohya zero-inits lora_up, which
    # would make strength a no-op.)
    return [
        TensorSpec(f"{module}.alpha", (), "F32", "const", LORA_ALPHA),
        TensorSpec(f"{module}.lora_down.weight", down, "F32", "uniform", 1 / math.sqrt(fan_in(down))),
        TensorSpec(f"{module}.lora_up.weight", up, "F32", "uniform", 1 / math.sqrt(LORA_RANK)),
    ]


def lora_specs(c: Comfy) -> list[TensorSpec]:
    specs: list[TensorSpec] = []
    prefix = "model.diffusion_model."
    for key, shape in unet_shapes(c).items():
        if is_unet_lora_target(key, shape):
            module = "lora_unet_" + key[len(prefix) : -len(".weight")].replace(".", "_")
            specs += lora_module_specs(module, shape)
    clip = clip_shapes(c)
    for layer in range(CLIP_LAYERS):
        for ldm_name, lora_name in CLIP_LORA_TARGETS.items():
            key = f"cond_stage_model.transformer.text_model.encoder.layers.{layer}.{ldm_name}.weight"
            module = f"lora_te_text_model_encoder_layers_{layer}_{lora_name}"
            specs += lora_module_specs(module, clip[key])
    return sorted(specs, key=lambda s: s.name)


def lora_metadata() -> dict[str, str]:
    # The kohya keys that loaders and model managers read to tell what a LoRA is for; the values
    # are what sd-scripts writes for an SD 1.x LoRA (see a real header in the kohya fixtures).
    return {
        BUILD_KEY: BUILD_ID,
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.prediction_type": "epsilon",
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.title": Path(LORA_NAME).stem,
        "ss_base_model_version": "sd_v1",
        "ss_network_alpha": str(LORA_ALPHA),
        "ss_network_dim": str(LORA_RANK),
        "ss_network_module": "networks.lora",
        "ss_output_name": Path(LORA_NAME).stem,
        "ss_sd_model_name": CHECKPOINT_NAME,
        "ss_v2": "False",
    }


def controlnet_specs(c: Comfy) -> list[TensorSpec]:
    shapes = controlnet_shapes(c)
    # A ControlNet has no output blocks, so ComfyUI reads no output depths from it.
    check_detection(c, shapes, "control_model.", ignore={"transformer_depth_output"})
    return [weight_spec(k, v, "F16") for k, v in sorted(shapes.items())]


def seed_for(file_tag: str, name: str) -> int:
    digest = hashlib.sha256(f"{BUILD_ID}/{file_tag}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def tensor_bytes(spec: TensorSpec, file_tag: str) -> bytes:
    """The tensor's little-endian bytes. Uniform noise from PCG64 is bit-exact on every platform
    (no transcendental functions involved, unlike a normal distribution)."""
    n = math.prod(spec.shape)
    if spec.fill == "zeros":
        values = np.zeros(n, dtype=np.float32)
    elif spec.fill == "ones":
        values = np.ones(n, dtype=np.float32)
    elif spec.fill == "const":
        values = np.full(n, spec.scale, dtype=np.float32)
    else:
        rng = np.random.Generator(np.random.PCG64(seed_for(file_tag, spec.name)))
        half_width = np.float32(spec.scale * math.sqrt(3.0))
        values = rng.random(n, dtype=np.float32)
        values *= np.float32(2.0)
        values -= np.float32(1.0)
        values *= half_width
    data: bytes = values.astype(_NUMPY_DTYPE[spec.dtype]).tobytes()
    return data


def safetensors_header(specs: Iterable[TensorSpec], metadata: Mapping[str, str]) -> tuple[bytes, int]:
    """The file's first bytes (length prefix + JSON header) and the length of the data after it."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for spec in specs:
        header[spec.name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    # The reference writer pads the header with spaces to 8 bytes so the data is aligned.
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, offset


def existing_header(path: Path) -> tuple[bytes, int] | None:
    try:
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) != 8:
                return None
            (length,) = struct.unpack("<Q", prefix)
            if length > 100_000_000:
                return None
            return prefix + f.read(length), os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return None


def atomic_write(path: Path, chunks: Iterable[bytes]) -> None:
    """Write to a temp name beside the target and rename, so a crash never leaves half a file
    under the name ComfyUI loads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_safetensors(path: Path, specs: list[TensorSpec], metadata: Mapping[str, str], force: bool) -> str:
    header, data_len = safetensors_header(specs, metadata)
    if not force and existing_header(path) == (header, len(header) + data_len):
        return "kept"
    tag = path.name

    def chunks() -> Iterator[bytes]:
        yield header
        for spec in specs:
            yield tensor_bytes(spec, tag)

    atomic_write(path, chunks())
    return "built"


def pose_keypoints(width: int, height: int) -> list[tuple[float, float]]:
    """OpenPose's 18 body keypoints for a person standing, arms slightly out."""
    rel = [
        (0.50, 0.12),  # 0 nose
        (0.50, 0.22),  # 1 neck
        (0.38, 0.23),  # 2 right shoulder
        (0.31, 0.38),  # 3 right elbow
        (0.27, 0.52),  # 4 right wrist
        (0.62, 0.23),  # 5 left shoulder
        (0.69, 0.38),  # 6 left elbow
        (0.73, 0.52),  # 7 left wrist
        (0.43, 0.52),  # 8 right hip
        (0.42, 0.71),  # 9 right knee
        (0.41, 0.90),  # 10 right ankle
        (0.57, 0.52),  # 11 left hip
        (0.58, 0.71),  # 12 left knee
        (0.59, 0.90),  # 13 left ankle
        (0.47, 0.10),  # 14 right eye
        (0.53, 0.10),  # 15 left eye
        (0.44, 0.11),  # 16 right ear
        (0.56, 0.11),  # 17 left ear
    ]
    return [(x * width, y * height) for x, y in rel]


# OpenPose's limb list and colours, as its renderer (and ControlNet's annotator) draws them.
# fmt: off
POSE_LIMBS = [
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
]
POSE_COLORS = [
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
]
# fmt: on


def png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    # No text chunks or timestamps: the same drawing gives the same bytes.
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def pose_png() -> bytes:
    from PIL import Image, ImageDraw

    w, h = DEMO_IMAGE_SIZE
    image = Image.new("RGB", (w, h), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    points = pose_keypoints(w, h)
    width = max(2, w // 40)
    for i, (a, b) in enumerate(POSE_LIMBS):
        draw.line([points[a], points[b]], fill=POSE_COLORS[i % len(POSE_COLORS)], width=width)
    r = max(2, w // 64)
    for i, (x, y) in enumerate(points):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=POSE_COLORS[i])
    return png_bytes(image)


def init_png() -> bytes:
    """A rough painted start for img2img: a sky-to-floor gradient and a figure in the pose."""
    from PIL import Image, ImageDraw

    w, h = DEMO_IMAGE_SIZE
    image = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(image)
    for y in range(h):
        t = y / (h - 1)
        draw.line([(0, y), (w, y)], fill=(int(90 + 80 * t), int(120 + 40 * t), int(200 - 120 * t)))
    points = pose_keypoints(w, h)
    body = max(4, w // 12)
    for a, b in POSE_LIMBS[:12]:
        draw.line([points[a], points[b]], fill=(200, 70, 60), width=body)
    hx, hy = points[0]
    r = w // 12
    draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=(235, 190, 160))
    return png_bytes(image)


def write_if_changed(path: Path, data: bytes, force: bool) -> str:
    if not force and path.is_file() and path.read_bytes() == data:
        return "kept"
    atomic_write(path, [data])
    return "built"


def human_size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models_dir", type=Path, help="ComfyUI's models folder")
    parser.add_argument("--comfyui", type=Path, help="ComfyUI's source folder (default MODELS_DIR/..)")
    parser.add_argument("--input-dir", type=Path, help="ComfyUI's input folder (default MODELS_DIR/../input)")
    parser.add_argument("--force", action="store_true", help="rebuild even files that look current")
    args = parser.parse_args(argv)

    models: Path = args.models_dir.resolve()
    comfy_dir: Path = (args.comfyui or models.parent).resolve()
    input_dir: Path = (args.input_dir or models.parent / "input").resolve()
    start = time.monotonic()
    c = import_comfy(comfy_dir)

    jobs: list[tuple[Path, list[TensorSpec], dict[str, str]]] = [
        (models / "checkpoints" / CHECKPOINT_NAME, checkpoint_specs(c), {BUILD_KEY: BUILD_ID}),
        (models / "loras" / LORA_NAME, lora_specs(c), lora_metadata()),
        (models / "controlnet" / CONTROLNET_NAME, controlnet_specs(c), {BUILD_KEY: BUILD_ID}),
    ]
    for path, specs, metadata in jobs:
        status = write_safetensors(path, specs, metadata, args.force)
        shown = path.relative_to(models)
        print(f"{status} {shown} ({human_size(path.stat().st_size)}, {len(specs)} tensors)")

    for name, data in ((POSE_IMAGE_NAME, pose_png()), (INIT_IMAGE_NAME, init_png())):
        path = input_dir / name
        status = write_if_changed(path, data, args.force)
        print(f"{status} input/{name} ({human_size(len(data))})")

    print(f"demo models ready in {time.monotonic() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
