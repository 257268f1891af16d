"""The model files' checks (INFRA-02, INFRA-05): an SD 1.5 checkpoint and the OpenPose ControlNet.

Each file is judged by its header (`modelfiles`, `controlnet.check_model`), never loaded; when
ComfyUI answers, it must also list the file (else COMFYUI_DIR is not the folder it uses).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from plasmad.comfy import modelfiles
from plasmad.core.errors import PlasmaError
from plasmad.generation import controlnet
from plasmad.operations.doctor.report import Report

_CHECKPOINT = ("models.checkpoint", "INFRA-02", "SD 1.5 checkpoint")
_CONTROLNET = ("models.controlnet", "INFRA-05", "ControlNet OpenPose model")
_NOT_LISTED_FIX = "COMFYUI_DIR must be the folder the running ComfyUI uses (or restart ComfyUI)"


async def check_models(report: Report) -> None:
    if report.cfg.comfyui_dir is None:
        fix = "export COMFYUI_DIR=~/tools/ComfyUI (ComfyUI's folder, the one with models/)"
        for id, req, title in (_CHECKPOINT, _CONTROLNET):
            report.add(id, req, title, "fail", "COMFYUI_DIR is not set: the models cannot be checked", fix)
        return
    models = report.cfg.comfyui_dir / "models"
    await _checkpoint(report, models / "checkpoints")
    await _controlnet(report, models / "controlnet")


async def _offered(report: Report, node: str, field: str) -> list[str] | None:
    """The files the running ComfyUI offers in a loader's field; None when it cannot be asked."""
    if report.stats is None:
        return None
    try:
        return await report.comfy.input_choices(node, field)
    except PlasmaError:
        return None


async def _checkpoint(report: Report, folder: Path) -> None:
    found, pickles = await asyncio.to_thread(_sd15_checkpoints, folder)
    offered = await _offered(report, "CheckpointLoaderSimple", "ckpt_name")
    name = report.cfg.checkpoint
    if name:
        await _named_checkpoint(report, folder, name, found, offered)
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
            f"download Anything V5 (SD 1.5) as .safetensors into {folder}, then set PLASMA_CHECKPOINT",
        )


async def _named_checkpoint(
    report: Report, folder: Path, name: str, found: list[str], offered: list[str] | None
) -> None:
    """PLASMA_CHECKPOINT: an SD 1.5 safetensors in `folder`, which the running ComfyUI lists."""
    try:
        await asyncio.to_thread(modelfiles.check_model, folder, name, "PLASMA_CHECKPOINT", "checkpoint")
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
            f"{name} is an SD 1.5 checkpoint in {folder}, but the running ComfyUI does not list it",
            _NOT_LISTED_FIX,
        )
        return
    report.add(*_CHECKPOINT, "ok", f"{name} (SD 1.5, by its header) in {folder}")


async def _controlnet(report: Report, folder: Path) -> None:
    name = str(getattr(report.cfg, "controlnet", None) or "control_v11p_sd15_openpose.pth")
    exists = await asyncio.to_thread((folder / name).is_file)
    if not exists:
        report.add(
            *_CONTROLNET,
            "warn",
            f"{name} is not in {folder}: ControlNet pose jobs (CTRL) are refused until it is",
            f"download {name} from https://huggingface.co/lllyasviel/ControlNet-v1-1 into {folder}, "
            "or set PLASMA_CONTROLNET to the OpenPose model you have",
        )
        return
    try:
        await asyncio.to_thread(controlnet.check_model, folder, name, "PLASMA_CONTROLNET")
    except PlasmaError as exc:
        report.add(*_CONTROLNET, "fail", exc.message, f"download {name} again into {folder}")
        return
    offered = await _offered(report, "ControlNetLoader", "control_net_name")
    if offered is not None and name not in offered:
        report.add(
            *_CONTROLNET,
            "warn",
            f"{name} is in {folder}, but the running ComfyUI does not list it",
            _NOT_LISTED_FIX,
        )
        return
    kind = "SD 1.5, by its header" if name.lower().endswith(".safetensors") else "a PyTorch file"
    report.add(*_CONTROLNET, "ok", f"{name} ({kind}) in {folder}")


def _sd15_checkpoints(folder: Path) -> tuple[list[str], list[str]]:
    """SD 1.5 checkpoints by header, and the pickle files we will not load. Blocking: run it in a thread."""
    found: list[str] = []
    for name in modelfiles.list_models(folder):
        try:
            info = modelfiles.inspect(folder / name)
        except modelfiles.HeaderError:
            continue
        if info.role == "checkpoint" and info.family == "sd15":
            found.append(name)
    pickles = (
        sorted(
            p.name
            for p in folder.glob("*")
            if p.is_file() and p.name.lower().endswith(modelfiles.PICKLE_SUFFIXES)
        )
        if folder.is_dir()
        else []
    )
    return found, pickles
