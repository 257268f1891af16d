"""plasmad.comfy.modelfiles: telling SD 1.5 from the rest by the safetensors header, and finding files safely.

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
from plasmad.comfy.modelfiles import HeaderError, check_model, inspect, list_models, read_header, resolve_in
from plasmad.core.errors import ErrorCode, PlasmaError
from tests.support.modelfiles import (
    CHECKPOINT_CKPT,
    CHECKPOINT_ESCAPE,
    CHECKPOINT_JUNK,
    CHECKPOINT_SD2,
    CHECKPOINT_SD15,
    CHECKPOINT_SDXL,
    LORA_SD15,
    LORA_SDXL,
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


# --- check_model: what validation refuses, and why --------------------------------------------------


def _refusal(folder: Path, name: str, field: str, role: modelfiles.Role) -> PlasmaError:
    with pytest.raises(PlasmaError) as err:
        check_model(folder, name, field, role)
    assert err.value.code == ErrorCode.INVALID_INPUT
    assert err.value.field == field
    return err.value


def test_sd15_checkpoint_and_lora_pass(models: Path) -> None:
    assert check_model(models / "checkpoints", CHECKPOINT_SD15, "checkpoint", "checkpoint").family == "sd15"
    assert check_model(models / "loras", LORA_SD15, "loraId", "lora").role == "lora"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (CHECKPOINT_SDXL, "SDXL"),
        (CHECKPOINT_SD2, "SD 2.x"),
        (CHECKPOINT_CKPT, "pickle"),
        (CHECKPOINT_JUNK, "not a readable safetensors"),
        (CHECKPOINT_ESCAPE, "outside"),
        ("missing.safetensors", "is not in"),
    ],
)
def test_checkpoints_that_are_refused(checkpoints: Path, name: str, reason: str) -> None:
    assert reason in _refusal(checkpoints, name, "checkpoint", "checkpoint").message


def test_a_pickle_is_refused_by_name_before_it_is_opened(checkpoints: Path) -> None:
    # The refusal must not depend on the file: nothing of a pickle is ever read.
    assert "pickle" in _refusal(checkpoints, "nowhere/Model.PT", "checkpoint", "checkpoint").message


def test_role_mismatch_is_refused(models: Path) -> None:
    err = _refusal(models / "loras", LORA_SD15, "checkpoint", "checkpoint")
    assert "not a checkpoint" in err.message and "lora" in err.message
    err = _refusal(models / "loras", LORA_SDXL, "loraId", "lora")
    assert "SDXL" in err.message


# --- resolve_in: names stay inside the folder -------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../x.safetensors", "sub/../../x.safetensors", "..", "/etc/passwd", "\\x.safetensors", "", "a\x00b"],
)
def test_resolve_in_refuses_names_leading_out(checkpoints: Path, name: str) -> None:
    with pytest.raises(PlasmaError) as err:
        resolve_in(checkpoints, name, "checkpoint")
    assert err.value.field == "checkpoint" and err.value.code == ErrorCode.INVALID_INPUT


def test_resolve_in_refuses_an_absolute_path_to_a_real_model(checkpoints: Path) -> None:
    with pytest.raises(PlasmaError, match="must be a file name inside"):
        resolve_in(checkpoints, str(checkpoints / CHECKPOINT_SD15), "checkpoint")


def test_resolve_in_refuses_symlinks_escaping(checkpoints: Path, tmp_path: Path) -> None:
    with pytest.raises(PlasmaError, match="leads outside"):
        resolve_in(checkpoints, CHECKPOINT_ESCAPE, "checkpoint")
    # A linked folder is no way out either.
    outside = tmp_path / "outside-dir"
    write_safetensors(outside / "m.safetensors", SD15_CHECKPOINT)
    (checkpoints / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PlasmaError, match="leads outside"):
        resolve_in(checkpoints, "linked/m.safetensors", "checkpoint")


def test_resolve_in_allows_subfolders_and_links_inside(checkpoints: Path) -> None:
    nested = write_safetensors(checkpoints / "sd15" / "nested.safetensors", SD15_CHECKPOINT)
    assert resolve_in(checkpoints, "sd15/nested.safetensors", "checkpoint") == nested.resolve()
    target = checkpoints / CHECKPOINT_SD15
    (checkpoints / "alias.safetensors").symlink_to(target)
    assert resolve_in(checkpoints, "alias.safetensors", "checkpoint") == target.resolve()


def test_resolve_in_refuses_a_folder(checkpoints: Path) -> None:
    (checkpoints / "dir.safetensors").mkdir()
    with pytest.raises(PlasmaError, match="is not in"):
        resolve_in(checkpoints, "dir.safetensors", "checkpoint")


def test_list_models_offers_safetensors_only(models: Path, tmp_path: Path) -> None:
    names = list_models(models / "checkpoints")
    assert CHECKPOINT_SD15 in names and CHECKPOINT_JUNK in names
    assert CHECKPOINT_CKPT not in names
    assert list_models(tmp_path / "missing") == []
