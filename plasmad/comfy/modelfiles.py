"""Model files in ComfyUI's models folder: finding them safely and telling SD 1.5 from the rest.

A model is judged by its safetensors header (8-byte length + JSON), never by unpickling: a `.ckpt`
or `.pt` can run code when loaded, so those are refused outright with a message saying so.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from plasmad.core.errors import invalid

MAX_HEADER_BYTES = 100 * 1024 * 1024  # real headers are < 1 MB; a bigger one is not safetensors
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

Family = Literal["sd15", "sd2", "sdxl", "unknown"]
Role = Literal["checkpoint", "lora", "controlnet", "unknown"]


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    role: Role
    family: Family
    tensors: int
    metadata: dict[str, str]


class HeaderError(ValueError):
    """The file is not a readable safetensors file."""


def read_raw_header(path: Path) -> tuple[int, dict[str, Any]]:
    """The header's length in bytes and its JSON object, `__metadata__` included (reads the header
    only). The one parser of the format: whoever needs a header reads it through here."""
    try:
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise HeaderError("file is shorter than a safetensors header")
            (length,) = struct.unpack("<Q", raw_len)
            if length > MAX_HEADER_BYTES:
                raise HeaderError("header length is implausible: not a safetensors file")
            blob = f.read(length)
    except OSError as exc:
        raise HeaderError(str(exc)) from exc
    if len(blob) != length:
        raise HeaderError("header is truncated")
    try:
        header = json.loads(blob)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HeaderError("header is not JSON: not a safetensors file") from exc
    if not isinstance(header, dict):
        raise HeaderError("header is not a JSON object")
    return length, header


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensor table and the `__metadata__` of a safetensors file (reads the header only)."""
    _, header = read_raw_header(path)
    metadata = header.pop("__metadata__", None) or {}
    return header, {str(k): str(v) for k, v in metadata.items()}


def safetensors_complete(path: Path) -> bool:
    """Whether a .safetensors file is whole: a process killed while saving leaves a short file.

    The header says where the last tensor ends; a whole file ends exactly there. Reads only the
    header (never the tensors). Touches the disk: call it through asyncio.to_thread.
    """
    try:
        length, header = read_raw_header(path)
        size = path.stat().st_size
    except (HeaderError, OSError):
        return False
    end = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(tensor["data_offsets"][1]))
        except (KeyError, IndexError, TypeError, ValueError):
            return False
    return size == 8 + length + end


def inspect(path: Path) -> ModelInfo:
    tensors, metadata = read_header(path)
    role, family = _classify(tensors, metadata)
    return ModelInfo(path=path, role=role, family=family, tensors=len(tensors), metadata=metadata)


def _shape(tensors: dict[str, Any], key: str) -> list[int] | None:
    entry = tensors.get(key)
    return list(entry["shape"]) if isinstance(entry, dict) and "shape" in entry else None


def _family_from_context(dim: int | None) -> Family:
    return {768: "sd15", 1024: "sd2", 2048: "sdxl"}.get(dim or 0, "unknown")  # type: ignore[return-value]


def _classify(tensors: dict[str, Any], metadata: dict[str, str]) -> tuple[Role, Family]:
    keys = tensors.keys()
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "checkpoint", "sdxl"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        # Cross-attention's key projection takes the text encoder's width: 768 is SD 1.x.
        dims = [s[1] for k in keys if k.endswith("attn2.to_k.weight") and (s := _shape(tensors, k))]
        return "checkpoint", _family_from_context(dims[0] if dims else None)
    if any(k.startswith("control_model.") for k in keys):
        dims = [s[1] for k in keys if k.endswith("attn2.to_k.weight") and (s := _shape(tensors, k))]
        return "controlnet", _family_from_context(dims[0] if dims else None)
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        base = metadata.get("ss_base_model_version", "")
        if base.startswith("sdxl") or any(k.startswith("lora_te2_") for k in keys):
            return "lora", "sdxl"
        dims = [s[1] for k in keys if k.endswith("attn2_to_k.lora_down.weight") and (s := _shape(tensors, k))]
        if dims:
            return "lora", _family_from_context(dims[0])
        return "lora", "sd15" if base.startswith("sd_v1") else "unknown"
    return "unknown", "unknown"


def resolve_in(folder: Path, name: str, field: str) -> Path:
    """`name` as a file inside `folder`; no absolute paths, `..` or symlinks leading out of it."""
    if not name or name.startswith(("/", "\\")) or "\x00" in name or ".." in Path(name).parts:
        raise invalid(field, f"{name!r} must be a file name inside {folder.name}/")
    try:
        root = folder.resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise invalid(field, f"{name!r} leads outside {folder.name}/")
        if not path.is_file():
            raise invalid(field, f"{name!r} is not in {folder}")
    except (OSError, ValueError) as exc:  # a name too long for the filesystem, say
        raise invalid(field, f"{name[:60]!r} cannot be looked up in {folder}: {exc}") from None
    return path


def check_model(folder: Path, name: str, field: str, role: Role) -> ModelInfo:
    """The named model, refused with a reason unless it is an SD 1.5 safetensors file of `role`."""
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise invalid(field, f"{name!r} is a pickle file; plasmad loads only .safetensors (convert it first)")
    path = resolve_in(folder, name, field)
    try:
        info = inspect(path)
    except HeaderError as exc:
        raise invalid(field, f"{name!r} is not a readable safetensors file: {exc}") from None
    if info.role != role:
        raise invalid(field, f"{name!r} is not a {role} (its tensors look like a {info.role})")
    if info.family != "sd15":
        what = {"sdxl": "an SDXL", "sd2": "an SD 2.x", "unknown": "an unrecognised"}[info.family]
        raise invalid(field, f"{name!r} is {what} {role}; only SD 1.5 fits in 16 GB (SD 1.5 only)")
    return info


def list_models(folder: Path, suffix: str = ".safetensors") -> list[str]:
    """File names (relative, subfolders included) ComfyUI would offer from `folder`."""
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(f"*{suffix}") if p.is_file())
