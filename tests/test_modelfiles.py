"""plasmad.comfy.modelfiles: telling SD 1.5 from the rest by the safetensors header (finding the files
and what a request may name: tests/test_model_paths.py).

Every model here is a FAKE: a safetensors header written by `write_safetensors`
(tests/support/modelfiles.py) with zero-length tensors, so the files are a few hundred bytes but
carry the key names and shapes real SD 1.5 / SD 2 / SDXL checkpoints and kohya LoRAs have.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from plasmad.comfy import modelfiles
from plasmad.comfy.modelfiles import HeaderError, inspect, read_header
from tests.support.modelfiles import (
    LORA_TO_K,
    SD2_CHECKPOINT,
    SD15_CHECKPOINT,
    SD15_CONTROLNET,
    SD15_LORA,
    SDXL_CHECKPOINT,
    SDXL_LORA,
    make_models_dir,
    write_safetensors,
)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return make_models_dir(tmp_path / "ComfyUI")


@pytest.fixture
def checkpoints(models: Path) -> Path:
    return models / "checkpoints"


# --- classification ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tensors", "metadata", "role", "family"),
    [
        (SD15_CHECKPOINT, None, "checkpoint", "sd15"),
        (SD2_CHECKPOINT, None, "checkpoint", "sd2"),
        (SDXL_CHECKPOINT, None, "checkpoint", "sdxl"),
        ({"model.diffusion_model.out.0.weight": [320]}, None, "checkpoint", "unknown"),
        (SD15_LORA, None, "lora", "sd15"),
        (SD15_LORA, {"ss_base_model_version": "sd_v1"}, "lora", "sd15"),
        (SDXL_LORA, None, "lora", "sdxl"),
        # An SDXL LoRA trained on the UNet alone has no lora_te2_ key: the metadata tells.
        ({LORA_TO_K: [4, 2048]}, {"ss_base_model_version": "sdxl_base_v1-0"}, "lora", "sdxl"),
        ({LORA_TO_K: [4, 1024]}, None, "lora", "sd2"),
        # No cross-attention key at all: only kohya's metadata can say it is SD 1.x.
        ({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [4, 768]},
         {"ss_base_model_version": "sd_v1"}, "lora", "sd15"),
        ({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [4, 768]}, None, "lora", "unknown"),
        (SD15_CONTROLNET, None, "controlnet", "sd15"),
        ({"vae.decoder.conv_in.weight": [512, 4, 3, 3]}, None, "unknown", "unknown"),
        ({}, None, "unknown", "unknown"),
    ],
)
def test_classification_by_header(
    tmp_path: Path, tensors: dict[str, list[int]], metadata: dict[str, str] | None, role: str, family: str
) -> None:
    info = inspect(write_safetensors(tmp_path / "m.safetensors", tensors, metadata))
    assert (info.role, info.family) == (role, family)
    assert info.tensors == len(tensors)  # __metadata__ is not a tensor


def test_metadata_is_read_as_strings(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", SD15_LORA, {"ss_network_dim": "4"})
    tensors, metadata = read_header(path)
    assert metadata == {"ss_network_dim": "4"}
    assert "__metadata__" not in tensors and set(tensors) == set(SD15_LORA)


# --- broken and hostile files -----------------------------------------------------------------------


class _SpyFile:
    """Wraps a binary file and records every read size, to prove a refusal reads nothing more."""

    def __init__(self, f: Any, reads: list[int]) -> None:
        self._f, self._reads = f, reads

    def read(self, n: int = -1) -> bytes:
        self._reads.append(n)
        return bytes(self._f.read(n))

    def __enter__(self) -> _SpyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


@pytest.mark.parametrize("length", [2**60, 2**64 - 1, modelfiles.MAX_HEADER_BYTES + 1])
def test_header_length_bomb_is_refused_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, length: int
) -> None:
    path = tmp_path / "bomb.safetensors"
    path.write_bytes(struct.pack("<Q", length) + b"{}")
    reads: list[int] = []
    real_open = Path.open

    def spy_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        return _SpyFile(real_open(self, *args, **kwargs), reads)

    monkeypatch.setattr(Path, "open", spy_open)
    with pytest.raises(HeaderError, match="implausible"):
        read_header(path)
    assert reads == [8]  # the length field, and nothing after it


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "shorter than a safetensors header"),
        (b"\x10\x00\x00", "shorter than a safetensors header"),
        (struct.pack("<Q", 64) + b'{"a": ', "truncated"),
        (struct.pack("<Q", 4) + b"\xff\xfe\x00\x01", "not JSON"),
        (struct.pack("<Q", 9) + b"not json!", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (struct.pack("<Q", 4) + b"null", "not a JSON object"),
    ],
)
def test_broken_headers_are_header_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(HeaderError, match=message):
        read_header(path)


def test_unreadable_path_is_a_header_error(tmp_path: Path) -> None:
    with pytest.raises(HeaderError):
        read_header(tmp_path)  # a folder: open() fails with an OSError
