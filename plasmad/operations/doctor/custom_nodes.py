"""The custom nodes' checks (INFRA-05): ControlNet-Aux's OpenPose preprocessor, and ComfyUI-Manager."""

from __future__ import annotations

import asyncio
from pathlib import Path

from plasmad.core.errors import PlasmaError
from plasmad.generation import controlnet
from plasmad.operations.doctor.report import Report

MANAGER_URL = "https://github.com/ltdrdata/ComfyUI-Manager"

_AUX = ("nodes.controlnet_aux", "INFRA-05", "ControlNet-Aux custom nodes")
_MANAGER = ("nodes.manager", "INFRA-05", "ComfyUI-Manager")


async def check_custom_nodes(report: Report) -> None:
    await _controlnet_aux(report)
    await _manager(report)


async def _controlnet_aux(report: Report) -> None:
    """ControlNet-Aux adds a node class: ask the running ComfyUI for it."""
    if report.stats is None:
        report.not_checked(*_AUX)
        return
    try:
        info = await report.comfy.object_info(controlnet.PREPROCESSOR_NODE)
    except PlasmaError:
        info = {}
    if info:
        report.add(*_AUX, "ok", f"ComfyUI has {controlnet.PREPROCESSOR_NODE}")
        return
    where = report.cfg.comfyui_dir / "custom_nodes" if report.cfg.comfyui_dir else "custom_nodes"
    report.add(
        *_AUX,
        "warn",
        f"ComfyUI has no {controlnet.PREPROCESSOR_NODE}: reference panels (not skeletons) "
        "are refused as pose images",
        f"cd {where} && git clone {controlnet.PREPROCESSOR_URL}, install its requirements.txt "
        "with ComfyUI's Python, restart ComfyUI",
    )


async def _manager(report: Report) -> None:
    """ComfyUI-Manager adds no node class: look for its folder."""
    if report.cfg.comfyui_dir is None:
        report.add(
            *_MANAGER, "warn", "not checked: COMFYUI_DIR is not set", "export COMFYUI_DIR=~/tools/ComfyUI"
        )
        return
    custom = report.cfg.comfyui_dir / "custom_nodes"
    found = await asyncio.to_thread(_find_manager, custom)
    if found is not None:
        report.add(*_MANAGER, "ok", f"{found}")
        return
    report.add(
        *_MANAGER,
        "warn",
        f"no ComfyUI-Manager in {custom} (plasmad does not need it; it eases installing nodes)",
        f"cd {custom} && git clone {MANAGER_URL}, then restart ComfyUI",
    )


def _find_manager(custom_nodes: Path) -> Path | None:
    """ComfyUI-Manager's folder under custom_nodes/, by its name. Blocking: run it in a thread."""
    if not custom_nodes.is_dir():
        return None
    for entry in custom_nodes.iterdir():
        if entry.is_dir() and entry.name.lower().replace("_", "-") == "comfyui-manager":
            return entry
    return None
