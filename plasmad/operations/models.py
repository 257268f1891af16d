"""The model listing (`GET /models`, JSON-RPC `models`, `plasmactl models`): every checkpoint, LoRA
and ControlNet ComfyUI lists, where it was found, its size, and whether a request may name it
(SD 1.5 by its header) or why not.

The files are found as ComfyUI finds them (`model_paths`) and judged as every request is judged
(`model_catalog`), so the listing and the refusals can never disagree. The running ComfyUI is asked
what it lists too: a file it does not list means it searches other folders than COMFYUI_DIR says.
plasmad's own LoRA copies (samples, ComfyUI trainer chunks) are counted, not listed.
"""

from __future__ import annotations

import asyncio
from typing import Final

from plasmad.comfy import model_catalog, model_paths
from plasmad.comfy.client import ComfyClient
from plasmad.comfy.model_catalog import Entry
from plasmad.comfy.model_paths import Kind, ModelFolders
from plasmad.core.config import Config
from plasmad.core.errors import PlasmaError
from plasmad.core.wire import ModelsView, ModelView, dump
from plasmad.training.comfy_trainer.staging import OWN_FOLDER
from plasmad.training.samples import SAMPLES_LORA_FOLDER

#: The loader node and input whose choices are what the running ComfyUI lists, per kind.
_LOADERS: Final[dict[Kind, tuple[str, str]]] = {
    "checkpoints": ("CheckpointLoaderSimple", "ckpt_name"),
    "loras": ("LoraLoader", "lora_name"),
    "controlnet": ("ControlNetLoader", "control_net_name"),
}
_OWN: Final = (f"{SAMPLES_LORA_FOLDER}/", f"{OWN_FOLDER}/")


async def list_models(cfg: Config, comfy: ComfyClient) -> dict[str, object]:
    folders = await asyncio.to_thread(model_paths.model_folders, cfg)
    catalogs = await asyncio.to_thread(_catalogs, folders)
    listed, comfy_error = await _comfyui_lists(comfy)
    views = {
        kind: [_view(e, listed.get(kind)) for e in entries if not e.name.startswith(_OWN)]
        for kind, entries in catalogs.items()
    }
    return dump(
        ModelsView(
            checkpoints=views["checkpoints"],
            loras=views["loras"],
            controlnets=views["controlnet"],
            folders={kind: [str(f) for f in folders.search(kind)] for kind in model_paths.KINDS},
            config_files=[str(f) for f in folders.config_files],
            problems=list(folders.problems),
            default_checkpoint=cfg.checkpoint,
            default_controlnet=cfg.controlnet,
            plasma_copies=sum(1 for e in catalogs["loras"] if e.name.startswith(_OWN)),
            comfyui_error=comfy_error,
        )
    )


def _catalogs(folders: ModelFolders) -> dict[Kind, list[Entry]]:
    return {kind: model_catalog.catalog(folders, kind) for kind in model_paths.KINDS}


async def _comfyui_lists(comfy: ComfyClient) -> tuple[dict[Kind, set[str]], str | None]:
    """What the running ComfyUI lists per kind (a kind whose loader it lacks: not known); empty and
    why when it cannot be asked."""
    listed: dict[Kind, set[str]] = {}
    try:
        comfy.forget_object_info()  # a file added a moment ago must show up now
        for kind, (node, field) in _LOADERS.items():
            if await comfy.object_info(node):
                listed[kind] = set(await comfy.input_choices(node, field))
    except PlasmaError as exc:
        return {}, exc.message
    return listed, None


def _view(entry: Entry, listed: set[str] | None) -> ModelView:
    j = entry.judgement
    return ModelView(
        name=entry.name,
        folder=str(entry.folder),
        path=str(entry.path),
        bytes=entry.bytes,
        link=entry.link,
        family=j.family,
        sd15=None if j.family is None else j.family == "sd15",
        usable=j.usable,
        why_not=j.reason,
        shadows=[str(f) for f in entry.shadows],
        comfyui=None if listed is None else entry.name in listed,
    )
