"""What a request may name: every checkpoint, LoRA and ControlNet ComfyUI lists, judged by its
header (`modelfiles`), never loaded, and the one check every entry point runs on a named model.

A file is usable when it is a safetensors file of the right role and SD 1.5 (a ControlNet may also
be a `.pth`, which ComfyUI loads and plasmad only checks for PyTorch's magic bytes). A refusal says
why, and for a name no folder holds lists the nearest usable names.

Everything here touches the disk: call it through asyncio.to_thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from plasmad.comfy import modelfiles
from plasmad.comfy.model_paths import Kind, ModelFolders, check_name, not_found
from plasmad.comfy.modelfiles import Family, Role
from plasmad.core.errors import invalid

ROLE: Final[dict[Kind, Role]] = {"checkpoints": "checkpoint", "loras": "lora", "controlnet": "controlnet"}
SAFETENSORS_SUFFIXES: Final = (".safetensors", ".sft")  # .sft: ComfyUI's other spelling of it
# A .pth is loaded by ComfyUI, never by us (unpickling runs code). What we can check without
# loading it: torch.save writes a zip archive (PK) since torch 1.6, a bare pickle (0x80) before.
# Anything else, typically an HTML page saved by a failed download, is refused.
_PYTORCH_MAGICS: Final = (b"PK\x03\x04", b"\x80")
_FAMILY_WORDS: Final[dict[Family, str]] = {
    "sdxl": "an SDXL",
    "sd2": "an SD 2.x",
    "unknown": "an unrecognised",
    "sd15": "an SD 1.5",
}


@dataclass(frozen=True)
class Judgement:
    usable: bool
    family: Family | None  #: None: not read (a .pth ControlNet, a pickle)
    reason: str | None  #: why it may not be named (completes "<name> ...")


@dataclass(frozen=True)
class Entry:
    """One model file as ComfyUI lists it, and whether a request may name it."""

    kind: Kind
    name: str
    folder: Path  #: the search folder it was found in
    path: Path
    bytes: int
    link: str | None  #: where a symlink leads
    judgement: Judgement
    shadows: tuple[Path, ...] = ()  #: later folders with a file of the same name (never loaded)


def judge(kind: Kind, name: str, path: Path) -> Judgement:
    """Whether `path` (the file of `name`) may be named as a model of `kind`, and if not why."""
    role = ROLE[kind]
    lowered = name.lower()
    if kind == "controlnet" and lowered.endswith(".pth"):
        return _judge_pth(path)
    if not lowered.endswith(SAFETENSORS_SUFFIXES):
        if kind == "controlnet":
            return Judgement(False, None, "is not a .safetensors or .pth file, what a ControlNet model is")
        return Judgement(False, None, "is a pickle file; plasmad loads only .safetensors (convert it first)")
    try:
        info = modelfiles.inspect(path)
    except modelfiles.HeaderError as exc:
        return Judgement(False, None, f"is not a readable safetensors file: {exc}")
    if info.role != role:
        return Judgement(False, info.family, f"is not a {role} (its tensors look like a {info.role})")
    if info.family != "sd15":
        what = _FAMILY_WORDS[info.family]
        return Judgement(False, info.family, f"is {what} {role}; only SD 1.5 fits in 16 GB (SD 1.5 only)")
    return Judgement(True, "sd15", None)


def _judge_pth(path: Path) -> Judgement:
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        return Judgement(False, None, f"cannot be read ({exc.strerror or exc})")
    if not head.startswith(_PYTORCH_MAGICS):
        return Judgement(False, None, "is not a PyTorch file (an interrupted or failed download?)")
    return Judgement(True, None, None)


def catalog(folders: ModelFolders, kind: Kind) -> list[Entry]:
    """Every model file ComfyUI lists for `kind`, judged, by name."""
    entries = []
    for name, path in folders.files(kind):
        try:
            size = path.stat().st_size
        except OSError:
            continue  # gone since the walk
        folder = path.parents[name.count("/")]
        link = os.readlink(path) if path.is_symlink() else None
        entries.append(
            Entry(
                kind=kind,
                name=name,
                folder=folder,
                path=path,
                bytes=size,
                link=link,
                judgement=judge(kind, name, path),
                shadows=tuple(folders.shadowed(kind, name)),
            )
        )
    return sorted(entries, key=lambda e: e.name)


def usable_names(folders: ModelFolders, kind: Kind) -> list[str]:
    return [e.name for e in catalog(folders, kind) if e.judgement.usable]


def check_model(folders: ModelFolders, kind: Kind, name: str, field: str) -> Path:
    """The file of the named model, refused with the reason unless a request may name it.

    A pickle checkpoint or LoRA is refused by its name before anything is opened; a name no folder
    holds is refused with the nearest usable names (in the message and in `details.nearest`).
    """
    check_name(name, field)
    if kind != "controlnet" and name.lower().endswith(modelfiles.PICKLE_SUFFIXES):
        raise invalid(field, f"{name!r} is a pickle file; plasmad loads only .safetensors (convert it first)")
    path = folders.find(kind, name)
    if path is None:
        raise not_found(folders, kind, name, field, usable_names(folders, kind))
    judgement = judge(kind, name, path)
    if not judgement.usable:
        raise invalid(field, f"{name!r} {judgement.reason}")
    return path
