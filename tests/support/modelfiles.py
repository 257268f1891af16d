"""FAKE model files: safetensors headers with zero-length tensors, and a ComfyUI models/ of them.

`write_safetensors` writes a real header (8-byte little-endian length + JSON) whose tensors are all
zero-length, so the files are a few hundred bytes but carry the key names and shapes real SD 1.5 /
SD 2 / SDXL checkpoints and kohya LoRAs have. `make_models_dir` lays out one of each kind of file
the validation has to tell apart.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

# Key names as they appear in real checkpoints; the width of attn2.to_k's input is the text
# encoder's (768 SD 1.x, 1024 SD 2.x, 2048 SDXL), which is what the classifier reads.
UNET_TO_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
LORA_TO_K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"

SD15_CHECKPOINT: dict[str, list[int]] = {
    UNET_TO_K: [320, 768],
    "model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
    "first_stage_model.decoder.conv_in.weight": [512, 4, 3, 3],
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
    # The weight SD15_LORA's text-encoder module patches (the LoRA's fit is checked at submit).
    "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight": [3072, 768],
}
SD2_CHECKPOINT: dict[str, list[int]] = {
    UNET_TO_K: [320, 1024],
    "cond_stage_model.model.token_embedding.weight": [49408, 1024],
}
SDXL_CHECKPOINT: dict[str, list[int]] = {
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
    "conditioner.embedders.1.model.token_embedding.weight": [49408, 1280],
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": [640, 2048],
}
SD15_LORA: dict[str, list[int]] = {
    LORA_TO_K: [4, 768],
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": [320, 4],
    "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [4, 768],
    "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": [3072, 4],
}
SDXL_LORA: dict[str, list[int]] = {
    "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [4, 768],
    "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [4, 1280],
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, 2048],
}
SD15_CONTROLNET: dict[str, list[int]] = {
    "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, 768],
    "control_model.input_hint_block.0.weight": [16, 3, 3, 3],
}

CHECKPOINT_SD15 = "sd15.safetensors"
CHECKPOINT_SD2 = "sd2.safetensors"
CHECKPOINT_SDXL = "sdxl.safetensors"
CHECKPOINT_CKPT = "old.ckpt"
CHECKPOINT_JUNK = "junk.safetensors"
CHECKPOINT_LINKED = "linked.safetensors"  #: a symlink to an SD 1.5 file outside the folder
LORA_SD15 = "spyke_sd15.safetensors"
LORA_SDXL = "style_sdxl.safetensors"


def write_safetensors(
    path: Path, tensors: dict[str, list[int]], metadata: dict[str, str] | None = None
) -> Path:
    """A FAKE safetensors file: a real header whose tensors are all zero-length (offsets [0, 0])."""
    header: dict[str, Any] = {
        name: {"dtype": "F16", "shape": shape, "data_offsets": [0, 0]} for name, shape in tensors.items()
    }
    if metadata is not None:
        header["__metadata__"] = metadata
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes with spaces
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)
    return path


def make_models_dir(comfyui_dir: Path) -> Path:
    """ComfyUI's models/ with one of each kind of file the validation has to tell apart."""
    checkpoints = comfyui_dir / "models" / "checkpoints"
    loras = comfyui_dir / "models" / "loras"
    write_safetensors(checkpoints / CHECKPOINT_SD15, SD15_CHECKPOINT, {"format": "pt"})
    write_safetensors(checkpoints / CHECKPOINT_SD2, SD2_CHECKPOINT)
    write_safetensors(checkpoints / CHECKPOINT_SDXL, SDXL_CHECKPOINT)
    (checkpoints / CHECKPOINT_CKPT).write_bytes(b"PK\x03\x04 a pickle archive, never opened")
    (checkpoints / CHECKPOINT_JUNK).write_bytes(b"this is not a safetensors file at all\n")
    outside = write_safetensors(comfyui_dir / "elsewhere" / "outside.safetensors", SD15_CHECKPOINT)
    (checkpoints / CHECKPOINT_LINKED).symlink_to(outside)  # followed, as ComfyUI follows it
    write_safetensors(
        loras / LORA_SD15, SD15_LORA, {"ss_base_model_version": "sd_v1", "ss_network_dim": "4"}
    )
    write_safetensors(loras / LORA_SDXL, SDXL_LORA, {"ss_base_model_version": "sdxl_base_v1-0"})
    return comfyui_dir / "models"
