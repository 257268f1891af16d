"""`health`: is ComfyUI up, on which device and with which precision flags, what holds the GPU."""

from __future__ import annotations

from typing import Any

from plasmad.context import Core
from plasmad.core.errors import PlasmaError
from plasmad.core.states import JobStatus
from plasmad.core.wire_views import HealthView, checked


async def health(core: Core, last_bench: dict[str, Any] | None) -> dict[str, Any]:
    comfy: dict[str, Any] = {"url": core.comfy.base_url}
    ok, mps = False, False
    try:
        stats = await core.comfy.system_stats()
        ok = True
        system = stats.get("system", {})
        devices = stats.get("devices", [])
        argv = [str(a) for a in system.get("argv", [])]
        mps = any(d.get("type") == "mps" for d in devices)
        comfy.update(
            version=system.get("comfyui_version"),
            pytorch=system.get("pytorch_version"),
            devices=[{"name": d.get("name"), "type": d.get("type")} for d in devices],
            argv=argv,
            fp32Vae="--fp32-vae" in argv,  # GEN-05: the VAE's precision is a launch flag
            forceFp16="--force-fp16" in argv,
        )
    except PlasmaError as exc:
        comfy["error"] = exc.message
    warnings = []
    if ok and not comfy.get("fp32Vae"):
        warnings.append("ComfyUI was started without --fp32-vae: the VAE may wash out colours (GEN-05)")
    if ok and not mps:
        warnings.append("ComfyUI reports no mps device: generation runs without Apple GPU acceleration")
    comfy["process"] = core.process.info() if core.process else {"managed": False}
    current = core.queue.current
    answer = {
        "status": "ok",
        "comfyui": ok,
        "mps": mps,
        "comfyuiInfo": comfy,
        "gpu": {"heldBy": core.gpu.holder},
        "queue": {
            "queued": await core.store.count(JobStatus.QUEUED),
            "running": current.id if current else None,
        },
        "accepting": core.accepting,
        "warnings": warnings,
        "bench": last_bench,
    }
    return dict(checked(HealthView, answer))
