"""The model files' checks (INFRA-02, INFRA-05): an SD 1.5 checkpoint and the OpenPose ControlNet.

Each file is judged by its header (`model_catalog`), never loaded, and found where ComfyUI finds
it (`model_paths`: its models/ folders, links followed, then extra_model_paths.yaml); when ComfyUI
answers, it must also list the file (else COMFYUI_DIR is not the folder it uses).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from plasmad.comfy import model_catalog, model_paths
from plasmad.comfy.model_paths import ModelFolders
from plasmad.core.errors import PlasmaError
from plasmad.operations.doctor.report import Report

_CHECKPOINT = ("models.checkpoint", "INFRA-02", "SD 1.5 checkpoint")
_CONTROLNET = ("models.controlnet", "INFRA-05", "ControlNet OpenPose model")
_PATHS = ("models.paths", "INFRA-02", "extra_model_paths.yaml")
_NOT_LISTED_FIX = "COMFYUI_DIR must be the folder the running ComfyUI uses (or restart ComfyUI)"


async def check_models(report: Report) -> None:
    if report.cfg.comfyui_dir is None:
        fix = "export COMFYUI_DIR=~/tools/ComfyUI (ComfyUI's folder, the one with models/)"
        for id, req, title in (_CHECKPOINT, _CONTROLNET):
            report.add(id, req, title, "fail", "COMFYUI_DIR is not set: the models cannot be checked", fix)
        return
    folders = await asyncio.to_thread(model_paths.model_folders, report.cfg)
    _paths(report, folders)
    await _checkpoint(report, folders)
    await _controlnet(report, folders)


def _paths(report: Report, folders: ModelFolders) -> None:
    """The extra folders ComfyUI searches, when it has any; what in its YAML files cannot be used."""
    if not folders.config_files and not folders.problems:
        return
    extra = {
        kind: [str(f) for f in folders.search(kind) if not f.is_relative_to(folders.models_dir)]
        for kind in model_paths.KINDS
    }
    found = "; ".join(f"{kind} also in {', '.join(paths)}" for kind, paths in extra.items() if paths)
    read = ", ".join(str(f) for f in folders.config_files) or "no file"
    if folders.problems:
        report.add(
            *_PATHS,
            "warn",
            f"{'; '.join(folders.problems)} (read: {read})",
            "fix the file as utils/extra_config.py reads it (extra_model_paths.yaml.example), then "
            "restart ComfyUI",
        )
        return
    report.add(*_PATHS, "ok", f"{read}: {found or 'no checkpoint, LoRA or ControlNet folder'}")


def _where(folders: ModelFolders, kind: model_paths.Kind) -> str:
    return ", ".join(str(f) for f in folders.search(kind))


async def _offered(report: Report, node: str, field: str) -> list[str] | None:
    """The files the running ComfyUI offers in a loader's field; None when it cannot be asked."""
    if report.stats is None:
        return None
    try:
        return await report.comfy.input_choices(node, field)
    except PlasmaError:
        return None


async def _checkpoint(report: Report, folders: ModelFolders) -> None:
    found, pickles = await asyncio.to_thread(_sd15_checkpoints, folders)
    folder = _where(folders, "checkpoints")
    offered = await _offered(report, "CheckpointLoaderSimple", "ckpt_name")
    name = report.cfg.checkpoint
    if name:
        await _named_checkpoint(report, folders, name, found, offered)
    elif found:
        report.add(
            *_CHECKPOINT,
            "warn",
            f"SD 1.5 checkpoints in {folder}: {', '.join(found)}; but PLASMA_CHECKPOINT is not set, "
            "so every request must name one",
            f"export PLASMA_CHECKPOINT={found[0]}",
        )
    else:
        extra = f"; {', '.join(pickles)} must be converted to .safetensors first" if pickles else ""
        report.add(
            *_CHECKPOINT,
            "fail",
            f"no SD 1.5 .safetensors checkpoint in {folder}{extra}",
            f"download Anything V5 (SD 1.5) as .safetensors into {folders.search('checkpoints')[0]} (or link "
            "it there), then set PLASMA_CHECKPOINT",
        )


async def _named_checkpoint(
    report: Report, folders: ModelFolders, name: str, found: list[str], offered: list[str] | None
) -> None:
    """PLASMA_CHECKPOINT: an SD 1.5 safetensors where ComfyUI looks, which the running ComfyUI lists."""
    folder = _where(folders, "checkpoints")
    try:
        path = await asyncio.to_thread(
            model_catalog.check_model, folders, "checkpoints", name, "PLASMA_CHECKPOINT"
        )
    except PlasmaError as exc:
        report.add(
            *_CHECKPOINT,
            "fail",
            exc.message,
            f"set PLASMA_CHECKPOINT to an SD 1.5 .safetensors in {folder}"
            + (f" (found: {', '.join(found)})" if found else ""),
        )
        return
    if offered is not None and name not in offered:
        report.add(
            *_CHECKPOINT,
            "warn",
            f"{name} is an SD 1.5 checkpoint ({path}), but the running ComfyUI does not list it",
            _NOT_LISTED_FIX,
        )
        return
    shown = await asyncio.to_thread(_shown, path)
    report.add(*_CHECKPOINT, "ok", f"{name} (SD 1.5, by its header): {shown}")


async def _controlnet(report: Report, folders: ModelFolders) -> None:
    name = str(getattr(report.cfg, "controlnet", None) or "control_v11p_sd15_openpose.pth")
    folder = _where(folders, "controlnet")
    exists = await asyncio.to_thread(folders.find, "controlnet", name)
    if exists is None:
        report.add(
            *_CONTROLNET,
            "warn",
            f"{name} is not in {folder}: ControlNet pose jobs (CTRL) are refused until it is",
            f"download {name} from https://huggingface.co/lllyasviel/ControlNet-v1-1 into "
            f"{folders.search('controlnet')[0]}, "
            "or set PLASMA_CONTROLNET to the OpenPose model you have",
        )
        return
    try:
        path = await asyncio.to_thread(
            model_catalog.check_model, folders, "controlnet", name, "PLASMA_CONTROLNET"
        )
    except PlasmaError as exc:
        report.add(*_CONTROLNET, "fail", exc.message, f"download {name} again ({exists})")
        return
    offered = await _offered(report, "ControlNetLoader", "control_net_name")
    if offered is not None and name not in offered:
        report.add(
            *_CONTROLNET,
            "warn",
            f"{name} is there ({path}), but the running ComfyUI does not list it",
            _NOT_LISTED_FIX,
        )
        return
    kind = "SD 1.5, by its header" if name.lower().endswith(".safetensors") else "a PyTorch file"
    shown = await asyncio.to_thread(_shown, path)
    report.add(*_CONTROLNET, "ok", f"{name} ({kind}): {shown}")


def _shown(path: Path) -> str:
    """The file, and where a link leads (an artist's shared models folder). Blocking."""
    return f"{path} -> {path.resolve()}" if path.is_symlink() else str(path)


def _sd15_checkpoints(folders: ModelFolders) -> tuple[list[str], list[str]]:
    """SD 1.5 checkpoints by header, and the pickle files we will not load. Blocking: run it in a thread."""
    entries = model_catalog.catalog(folders, "checkpoints")
    found = [e.name for e in entries if e.judgement.usable]
    pickles = [e.name for e in entries if e.judgement.reason and "pickle" in e.judgement.reason]
    return found, pickles
