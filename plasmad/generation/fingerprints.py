"""Fingerprints: the SHA-256 of every file that made an image, in its log entry and in its PNG.

Which files: those the graph names through its template's slots, the checkpoint, the LoRA and the
ControlNet model (in COMFYUI_DIR/models/...) and the pose and init images (in COMFYUI_DIR/input/,
staged there under their content hash). They are found when the job is queued (`files_of`, in
the job's state), hashed from then on in the background (`Core.hasher`, cached by path, size,
mtime and inode), and awaited only when the image is published (`fingerprint`), after ComfyUI has
rendered it. Recorded, per role, as

    {"lora": {"file": "spyke_plasma_v1.safetensors", "sha256": "<64 hex>", "autov2": "<10 hex>",
              "bytes": 37861416, "node": "2", "input": "lora_name"}, ...}

under `fingerprints` in the page's generation-log entry and the job's result, and as JSON in the
PNG's `plasma_fingerprints` text chunk, beside ComfyUI's own `prompt` and `workflow`.
`autov2` is the short hash model sites show. A reproduction checks every file against it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plasmad.comfy.model_paths import Kind, check_name, model_folders
from plasmad.comfy.templates import Template
from plasmad.core import pngtext
from plasmad.core.config import Config
from plasmad.core.errors import invalid
from plasmad.core.filehash import FileHasher
from plasmad.core.jobs import FingerprintedFile

log = logging.getLogger(__name__)

PNG_KEY = "plasma_fingerprints"


@dataclass(frozen=True)
class Role:
    name: str  #: the key in `fingerprints`
    slot: str  #: the template slot that names the file
    kind: Kind | None  #: the model folders ComfyUI searches for it; None: its input/ folder
    model: bool  #: a model ComfyUI keeps loaded by its name (an image it re-reads by content)


ROLES = (
    Role("checkpoint", "checkpoint_name", "checkpoints", True),
    Role("lora", "lora_name", "loras", True),
    Role("controlnet", "controlnet_name", "controlnet", True),
    Role("poseImage", "pose_image", None, False),
    Role("initImage", "init_image", None, False),
)
BY_NAME = {role.name: role for role in ROLES}


def locate(cfg: Config, role: str, file: str) -> Path:
    """Where the file named `file` for `role` is now (blocking): the lookup a generation's
    validation uses (ComfyUI's folders, in its order; links followed), so the file hashed is the
    file ComfyUI loads. A 400 naming the role if it is not there."""
    check_name(file, role)
    kind = BY_NAME[role].kind
    if kind is None:  # an image plasmad staged in ComfyUI's input/ under its content hash
        path: Path | None = cfg.require_comfyui_dir() / "input" / file
        where = "ComfyUI's input/"
    else:
        path = model_folders(cfg).find(kind, file)
        where = f"ComfyUI's {kind} folders"
    if path is None or not path.is_file():
        raise invalid(role, f"{file!r} is not in {where}")
    return path


def files_of(template: Template, graph: dict[str, Any], cfg: Config) -> list[FingerprintedFile]:
    """The files `graph` (filled from `template`) names, found on disk (blocking)."""
    found = []
    for role in ROLES:
        targets = template.slots.get(role.slot)
        if not targets:
            continue
        node, input_name = targets[0]
        file = graph[node]["inputs"][input_name]
        if isinstance(file, str):
            path = locate(cfg, role.name, file)
            found.append(
                FingerprintedFile(role=role.name, node=node, input=input_name, file=file, path=str(path))
            )
    return found


def model_paths(files: list[FingerprintedFile]) -> list[Path]:
    """The files ComfyUI keeps loaded by name (so a replaced one must be reloaded)."""
    return [Path(f.path) for f in files if BY_NAME[f.role].model]


async def fingerprint(hasher: FileHasher, files: list[FingerprintedFile]) -> dict[str, Any]:
    """The `fingerprints` field: each file's hash (awaited: started when the job was queued).

    A file that cannot be read now (deleted after the render) gets `error` instead of a hash: the
    image is published all the same, and a reproduction will name that file as unverifiable."""
    out: dict[str, Any] = {}
    for f in files:
        record: dict[str, Any] = {"file": f.file, "node": f.node, "input": f.input}
        try:
            h = await hasher.sha256(Path(f.path))
        except OSError as exc:
            log.warning("cannot fingerprint %s %s: %s", f.role, f.path, exc)
            record["error"] = f"cannot be read: {exc.strerror or exc}"
        else:
            record.update(sha256=h.sha256, autov2=h.autov2, bytes=h.size)
        out[f.role] = record
    return out


def add_to_png(png: bytes, fingerprints: dict[str, Any]) -> bytes:
    """The PNG with its `plasma_fingerprints` text chunk (pixels untouched)."""
    if not fingerprints:
        return png
    try:
        return pngtext.add_text(png, PNG_KEY, json.dumps(fingerprints, sort_keys=True))
    except ValueError as exc:
        # Not a PNG we can read: left as it came; the image checks that follow say what is wrong.
        log.warning("cannot add fingerprints to the image: %s", exc)
        return png
