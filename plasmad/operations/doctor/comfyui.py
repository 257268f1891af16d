"""ComfyUI's checks (INFRA-01, GEN-04, GEN-05): it answers, has the templates' nodes, runs as the Mac wants.

Asking ComfyUI comes first in a doctor run: its answer (`Report.stats`) tells the later checks
whether a running ComfyUI can be asked at all.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlparse

from plasmad.comfy.catalogue import template_classes
from plasmad.comfy.precision import resolve_unet_dtype
from plasmad.comfy.process import BASE_FLAGS
from plasmad.core.errors import PlasmaError
from plasmad.generation import controlnet
from plasmad.operations.doctor.report import Report, Status

#: The checks that need a running ComfyUI: each says "not checked" when it does not answer.
_NEED_COMFYUI = (
    ("comfyui.version", "INFRA-01", "ComfyUI version"),
    ("comfyui.fp16_unet", "INFRA-01", "UNet precision"),
    ("comfyui.fp32_vae", "GEN-05", "fp32 VAE"),
    ("comfyui.device", "INFRA-01", "ComfyUI device"),
)


async def check_comfyui(report: Report) -> None:
    stats = await _reachable(report)
    if stats is None:
        return
    system = stats.get("system", {})
    argv = [str(a) for a in system.get("argv", [])]
    devices = [d for d in stats.get("devices", []) if isinstance(d, dict)]
    types = [str(d.get("type")) for d in devices]
    await _version(report, system)
    mps = "mps" in types
    verdict = _unet_verdict(report.cfg.unet_dtype, argv, types)
    report.add("comfyui.fp16_unet", "GEN-05", "UNet precision", *verdict)
    _fp32_vae(report, argv, mps)
    _device(report, devices, mps)


def _start_fix(report: Report) -> str:
    port = urlparse(report.cfg.comfyui_url).port or 8188
    if report.process is not None:
        return f"see {report.process.log_path} (`plasmactl logs comfyui`); plasmad restarts it with backoff"
    where = report.cfg.comfyui_dir or "~/tools/ComfyUI"
    return (
        f"start it: cd {where} && python main.py {' '.join(BASE_FLAGS)} --port {port}; or let plasmad "
        "run it: COMFYUI_MANAGED=1 COMFYUI_PYTHON=<ComfyUI's venv>/bin/python"
    )


async def _reachable(report: Report) -> dict[str, Any] | None:
    """ComfyUI's /system_stats (kept in `report.stats`), or None when it does not answer."""
    process = report.process
    mode = "managed by plasmad" if process is not None else "attached"
    try:
        report.stats = await report.comfy.system_stats()
    except PlasmaError as exc:
        report.comfy_error = exc.message
        state = f" (managed: {process.state})" if process is not None else ""
        report.add(
            "comfyui.reachable",
            "INFRA-01",
            "ComfyUI reachable",
            "fail",
            f"{exc.message}{state}",
            _start_fix(report),
        )
        for id, req, title in _NEED_COMFYUI:
            report.not_checked(id, req, title)
        return None
    pid = f", pid {process.pid}, {process.restarts} restarts" if process is not None else ""
    report.add(
        "comfyui.reachable", "INFRA-01", "ComfyUI reachable", "ok", f"{report.cfg.comfyui_url} ({mode}{pid})"
    )
    return report.stats


async def _version(report: Report, system: dict[str, Any]) -> None:
    version = system.get("comfyui_version")
    torch = system.get("pytorch_version")
    missing = await _missing_template_nodes(report)
    if missing:
        report.add(
            "comfyui.version",
            "GEN-04",
            "ComfyUI version",
            "fail",
            f"ComfyUI {version or '?'} lacks nodes the workflow templates use: {', '.join(missing)}",
            "update ComfyUI (git pull in its folder, then restart it)",
        )
    elif not version:
        report.add(
            "comfyui.version",
            "INFRA-01",
            "ComfyUI version",
            "warn",
            f"ComfyUI does not report its version (PyTorch {torch}); the templates' nodes are there",
            "a ComfyUI of 2025 or later (0.3.x) reports it; 0.3.75 is tested",
        )
    else:
        report.add(
            "comfyui.version",
            "INFRA-01",
            "ComfyUI version",
            "ok",
            f"ComfyUI {version}, PyTorch {torch}; has every node the templates use",
        )


async def _missing_template_nodes(report: Report) -> list[str]:
    classes = set(await asyncio.to_thread(template_classes, report.cfg.templates_dir))
    classes.discard(controlnet.PREPROCESSOR_NODE)  # a custom node: its own check (custom_nodes)
    report.comfy.forget_object_info()  # fresh: nodes may have been installed since
    missing = []
    for cls in sorted(classes):
        try:
            if not await report.comfy.object_info(cls):
                missing.append(cls)
        except PlasmaError:
            missing.append(cls)
    return missing


def _unet_verdict(setting: str, argv: list[str], types: list[str]) -> tuple[Status, str, str | None]:
    """The UNet's precision: fp16 on a GPU (with --force-fp16), fp32 on a CPU-only host."""
    dtype = resolve_unet_dtype(setting, types)
    cpu_only = bool(types) and all(t == "cpu" for t in types)
    forced = "--force-fp16" in argv
    if "mps" in types or not cpu_only:
        if dtype.value != "fp16":
            return (
                "warn",
                f"the UNet runs at {dtype.value} ({dtype.why}): slower, and twice the memory of fp16",
                "unset PLASMA_UNET_DTYPE (auto: fp16 on the Mac's GPU)",
            )
        detail = f"the graph sets the UNet to fp16 ({dtype.why})" + (
            ", ComfyUI runs with --force-fp16" if forced else "; ComfyUI was started without --force-fp16"
        )
        if forced:
            return "ok", detail, None
        return "warn", detail, "add --force-fp16 to ComfyUI's launch (INFRA-01; managed mode adds it)"
    if dtype.value == "fp16":
        return (
            "warn",
            f"fp16 UNet on a CPU ({dtype.why}): about 100x slower than fp32 there",
            "on a CPU-only host unset PLASMA_UNET_DTYPE (auto: fp32 there) or set it to fp32",
        )
    return "ok", f"UNet at {dtype.value} ({dtype.why}; fp16 is for the Apple GPU)", None


def _fp32_vae(report: Report, argv: list[str], mps: bool) -> None:
    if "--fp32-vae" in argv:
        report.add("comfyui.fp32_vae", "GEN-05", "fp32 VAE", "ok", "ComfyUI runs with --fp32-vae")
        return
    report.add(
        "comfyui.fp32_vae",
        "GEN-05",
        "fp32 VAE",
        "fail" if mps else "warn",
        "ComfyUI was started without --fp32-vae: on the Apple GPU an fp16 VAE washes out colours",
        "add --fp32-vae to ComfyUI's launch (managed mode adds it)",
    )


def _device(report: Report, devices: list[dict[str, Any]], mps: bool) -> None:
    names = ", ".join(f"{d.get('name')} ({d.get('type')})" for d in devices) or "none reported"
    if mps:
        report.add("comfyui.device", "INFRA-01", "ComfyUI device", "ok", f"Apple GPU: {names}")
        return
    fix = (
        "start ComfyUI without --cpu, from a Python whose torch sees the GPU: "
        "python -c 'import torch; print(torch.backends.mps.is_available())' must print True"
    )
    if report.on_mac:
        report.add(
            "comfyui.device",
            "INFRA-01",
            "ComfyUI device",
            "fail",
            f"ComfyUI does not use the Apple GPU (mps): {names}",
            fix,
        )
    else:
        report.add(
            "comfyui.device",
            "INFRA-01",
            "ComfyUI device",
            "warn",
            f"no Apple GPU (mps) on this machine: {names}; generation works, slowly",
            "on the Mac: " + fix,
        )
