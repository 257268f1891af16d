"""A LoRA's fit to the checkpoint, judged from the two headers (plasmad.comfy.lora_fit).

The headers are real: kohya's own LoRA header (tests/fixtures/kohya/success), a full-size SD 1.5
checkpoint's (tests/fixtures/sd15, from ComfyUI's classes) and, where `.demo/` is set up, the tiny
demo checkpoint and its LoRA. The figures for a full-size LoRA on the tiny checkpoint are the ones
ComfyUI 0.3.75 itself logged for that pair (504 "lora key not loaded" lines, three per module,
and 24 "shape ... is invalid"); tests/test_faults_comfyui.py checks them against a running one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from plasmad.comfy import lora_fit, modelfiles
from plasmad.core.errors import PlasmaError
from tests.support.app import Api, expect_error
from tests.support.modelfiles import CHECKPOINT_SD15, write_safetensors
from tests.support.processes import COMFY_DIR, DEMO_CHECKPOINT, DEMO_LORA

FIXTURES = Path(__file__).parent / "fixtures"
DEMO_MODELS = COMFY_DIR / "models"
needs_demo = pytest.mark.skipif(
    not (DEMO_MODELS / "checkpoints" / DEMO_CHECKPOINT).exists(), reason="the demo model is not set up"
)


def header(path: Path) -> dict[str, Any]:
    return {k: v for k, v in json.loads(path.read_text()).items() if k != "__metadata__"}


def full_sd15() -> dict[str, Any]:
    return header(FIXTURES / "sd15" / "checkpoint_header.json")


def kohya_lora() -> dict[str, Any]:
    return header(FIXTURES / "kohya" / "success" / "lora_header.json")


def shapes(tensors: dict[str, Any]) -> dict[str, list[int]]:
    return {k: v["shape"] for k, v in tensors.items()}


def fit_of(checkpoint: dict[str, Any], lora: dict[str, Any]) -> lora_fit.LoraFit:
    return lora_fit.fit(lora_fit.module_targets(checkpoint), lora_fit.lora_modules(lora))


def test_kohyas_own_lora_fits_a_full_size_sd15_checkpoint() -> None:
    # sd-scripts names UNet modules the diffusers way (down_blocks_0_attentions_0_proj_in...).
    result = fit_of(full_sd15(), kohya_lora())
    assert (result.modules, result.unloadable) == (264, 0)


def test_ldm_names_fit_too_and_a_wrong_rank_does_not() -> None:
    checkpoint = full_sd15()
    # What ComfyUI's trainer (converted) and the demo builder write: the checkpoint's own paths.
    lora = {
        "lora_unet_input_blocks_1_1_proj_in.lora_down.weight": {"shape": [4, 320, 1, 1]},
        "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": {"shape": [320, 4, 1, 1]},
        "lora_unet_output_blocks_11_1_transformer_blocks_0_attn2_to_k.lora_down.weight": {"shape": [4, 768]},
        "lora_unet_output_blocks_11_1_transformer_blocks_0_attn2_to_k.lora_up.weight": {"shape": [320, 4]},
        "lora_unet_middle_block_1_proj_out.alpha": {"shape": []},
        "lora_unet_middle_block_1_proj_out.lora_down.weight": {"shape": [4, 1280, 1, 1]},
        "lora_unet_middle_block_1_proj_out.lora_up.weight": {"shape": [1280, 8, 1, 1]},  # rank 8 != 4
    }
    result = fit_of(checkpoint, lora)
    assert result.modules == 3 and result.missing == ()
    assert result.misshapen == ("lora_unet_middle_block_1_proj_out",)


def test_a_lora_for_a_deeper_unet_does_not_fit_a_shallower_one() -> None:
    # Keep only the first level of the full UNet: a cut-down model like the demo's.
    shallow = {
        k: v
        for k, v in full_sd15().items()
        if not k.startswith(lora_fit.UNET)
        or k.startswith((f"{lora_fit.UNET}input_blocks.0.", f"{lora_fit.UNET}input_blocks.1."))
    }
    result = fit_of(shallow, kohya_lora())
    assert result.modules == 264
    # Only the text encoder's 72 modules and down_blocks.0.attentions.0's 12 load.
    assert result.unloadable == 264 - 72 - 12
    assert "lora_unet_mid_block_attentions_0_proj_in" in result.missing


@needs_demo
def test_the_demo_pair_fits_and_a_full_size_lora_on_the_tiny_checkpoint_does_not() -> None:
    tiny, _ = modelfiles.read_header(DEMO_MODELS / "checkpoints" / DEMO_CHECKPOINT)
    demo_lora, _ = modelfiles.read_header(DEMO_MODELS / "loras" / DEMO_LORA)
    assert fit_of(tiny, demo_lora).unloadable == 0
    result = fit_of(tiny, kohya_lora())
    # What ComfyUI logged for this pair: 504 / 3 keys not loaded, 24 shapes invalid.
    assert (result.modules, len(result.missing), len(result.misshapen)) == (264, 168, 24)
    # And the other way round: the tiny model's LoRA names blocks a full UNet has elsewhere.
    assert fit_of(full_sd15(), demo_lora).unloadable > 0


def test_the_check_names_the_count_and_is_cached_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = write_safetensors(tmp_path / "base.safetensors", shapes(full_sd15()))
    lora = write_safetensors(tmp_path / "deep.safetensors", shapes(kohya_lora()))
    reads: list[Path] = []
    real = lora_fit.read_header

    def counting(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(lora_fit, "read_header", counting)
    assert lora_fit.check_lora_fits(checkpoint, lora).modules == 264
    assert lora_fit.check_lora_fits(checkpoint, lora).modules == 264
    assert reads == [checkpoint, lora]  # once each

    # Without input_blocks.1 (down_blocks.0.attentions.0): its 12 modules have nowhere to go.
    small = {k: v for k, v in shapes(full_sd15()).items() if "input_blocks.1." not in k}
    write_safetensors(checkpoint, small)
    os.utime(checkpoint, ns=(1, 1))  # another mtime (and size): read again
    with pytest.raises(PlasmaError) as refused:
        lora_fit.check_lora_fits(checkpoint, lora)
    assert refused.value.field == "loraId"
    assert "12 of its 264 modules would not load" in refused.value.message
    assert "trained for another model" in refused.value.message
    assert refused.value.details["unloadable"] == 12 and len(refused.value.details["missing"]) == 10
    assert reads[2:] == [checkpoint]  # the LoRA's header was not read again


async def test_submit_refuses_a_lora_that_does_not_fit(api: Api) -> None:
    loras = api.cfg.comfyui_dir / "models" / "loras"  # type: ignore[operator]
    metadata = {"ss_base_model_version": "sd_v1"}
    write_safetensors(loras / "full_size.safetensors", shapes(kohya_lora()), metadata)
    resp = await api.post("/jobs", {"prompt": "spyke", "loraId": "full_size.safetensors"})
    error = await expect_error(resp, 400, "loraId")
    # The FAKE checkpoint has one attention layer and one text-encoder layer this LoRA patches.
    assert f"does not fit the checkpoint '{CHECKPOINT_SD15}'" in error["message"]
    assert "262 of its 264 modules would not load" in error["message"]
    assert error["details"]["modules"] == 264 and not api.fake.prompts
