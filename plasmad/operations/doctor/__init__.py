"""`plasmactl doctor`: every INFRA requirement checked on this machine, each with what to do about it.

The checks run in the daemon, which has the configuration and ComfyUI's client (GET /doctor,
JSON-RPC `doctor`: `run_doctor`); plasmactl only renders them, and runs them itself from the
shell's settings when no daemon answers (`standalone`). Each check is one line (`Check`):

- ok: as the requirements want;
- warn: works, but not as the requirements want (slower, more memory) or a feature is unavailable
  (ControlNet poses, kohya training) until it is fixed;
- fail: fix it before relying on plasmad here (the report's `ok` is false, plasmactl exits 9).

Nothing here loads a model: checkpoints are judged by their safetensors header (`modelfiles`),
kohya's environment by a probe in its own Python (`kohya.preflight`). Blocking file work runs in
threads.

One module per thing checked, in the order a report lists them: comfyui (reachable, version,
precision, device), models (checkpoint, ControlNet), custom_nodes, kohya, disk; report holds the
Check line and the Report they are added to. This module runs them: the entry points are here.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiohttp

from plasmad.comfy.client import ComfyClient
from plasmad.comfy.process import ManagedComfyUI
from plasmad.core.config import Config
from plasmad.operations.doctor.comfyui import check_comfyui
from plasmad.operations.doctor.custom_nodes import check_custom_nodes
from plasmad.operations.doctor.disk import check_disk
from plasmad.operations.doctor.kohya import check_kohya, kohya_preflight, read_accelerate_config
from plasmad.operations.doctor.models import check_models
from plasmad.operations.doctor.report import Check, Report, Status

__all__ = ["Check", "Doctor", "Report", "Status", "run_doctor", "standalone"]


class Doctor:
    def __init__(
        self,
        cfg: Config,
        comfy: ComfyClient,
        process: ManagedComfyUI | None = None,
        platform: str = sys.platform,
    ) -> None:
        self.report = Report(cfg, comfy, process, on_mac=platform == "darwin")

    async def run(self) -> dict[str, Any]:
        report = self.report
        # kohya's probe (seconds: it imports torch) runs while ComfyUI is asked.
        preflight = asyncio.create_task(kohya_preflight(report.cfg))
        await check_comfyui(report)
        await check_models(report)
        await check_custom_nodes(report)
        check_kohya(report, await preflight, await asyncio.to_thread(read_accelerate_config))
        await check_disk(report)
        return report.summary()


# --- entry points -----------------------------------------------------------------------------------------


async def run_doctor(
    cfg: Config, comfy: ComfyClient, process: ManagedComfyUI | None = None
) -> dict[str, Any]:
    """The `doctor` operation."""
    return await Doctor(cfg, comfy, process).run()


async def standalone(cfg: Config, prepend: list[Check] | None = None) -> dict[str, Any]:
    """The same checks from plasmactl's own process, when no daemon answers."""
    async with aiohttp.ClientSession() as session:
        doctor = Doctor(cfg, ComfyClient(cfg.comfyui_url, session, cfg.history_poll_s))
        doctor.report.checks.extend(prepend or [])
        return await doctor.run()
