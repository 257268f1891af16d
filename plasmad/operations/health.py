"""`health`: is ComfyUI up, on which device and with which precision flags, what holds the GPU.

Read from the ComfyUI monitor's cached state (`plasmad.comfy.monitor`), asked again only when its
last answer is older than a couple of seconds and never waited for longer than a second: a
ComfyUI that hangs must not hang the question whether it is up.
"""

from __future__ import annotations

from typing import Any

from plasmad.context import Core
from plasmad.core.states import JobStatus
from plasmad.core.wire import HealthView, checked


async def health(core: Core, last_bench: dict[str, Any] | None) -> dict[str, Any]:
    monitor = core.monitor
    await monitor.fresh()
    ok = monitor.up is True
    comfy: dict[str, Any] = {"url": core.comfy.base_url, **monitor.describe()}
    stats = monitor.stats or {}
    devices = [d for d in stats.get("devices", []) if isinstance(d, dict)]
    mps = ok and any(d.get("type") == "mps" for d in devices)
    if stats:
        system = stats.get("system", {})
        argv = [str(a) for a in system.get("argv", [])]
        comfy.update(
            version=system.get("comfyui_version"),
            pytorch=system.get("pytorch_version"),
            devices=[{"name": d.get("name"), "type": d.get("type")} for d in devices],
            argv=argv,
            fp32Vae="--fp32-vae" in argv,  # GEN-05: the VAE's precision is a launch flag
            forceFp16="--force-fp16" in argv,
        )
    if not ok:
        paused = core.process is not None and core.process.paused
        comfy["error"] = monitor.blocks() if paused else _away(monitor.error, monitor.blocks())
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
        "unetDtype": {"setting": core.cfg.unet_dtype, **monitor.unet_dtype(core.cfg.unet_dtype).to_json()},
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


def _away(error: str | None, blocks: str | None) -> str:
    """Why ComfyUI is not answering, and since when ("… did not answer: … (not answering since 21:04)")."""
    if blocks is None:
        return error or "not asked yet"
    return f"{error or 'does not answer'} ({blocks})"
