"""The free-space checks (INFRA-02): plasmad's state folder, and ComfyUI's models folder."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from plasmad.operations.doctor.report import Report, Status

#: Free space below which a folder warns / fails: a checkpoint is 2-4 GB, ControlNet 1.4 GB; a
#: training writes a LoRA (~40 MB at dim 32) every 200 steps plus its logs and samples.
COMFYUI_DISK_WARN_GB = 10.0
COMFYUI_DISK_FAIL_GB = 2.0
STATE_DISK_WARN_GB = 5.0
STATE_DISK_FAIL_GB = 1.0


async def check_disk(report: Report) -> None:
    cfg = report.cfg
    places: list[tuple[str, str, Path, float, float]] = [
        ("disk.state", "state dir", cfg.state_dir, STATE_DISK_WARN_GB, STATE_DISK_FAIL_GB),
    ]
    if cfg.comfyui_dir is not None:
        places.append(
            (
                "disk.comfyui",
                "ComfyUI's models",
                cfg.comfyui_dir / "models",
                COMFYUI_DISK_WARN_GB,
                COMFYUI_DISK_FAIL_GB,
            )
        )
    for id, what, path, warn_gb, fail_gb in places:
        await _free_space(report, id, what, path, warn_gb, fail_gb)


async def _free_space(report: Report, id: str, what: str, path: Path, warn_gb: float, fail_gb: float) -> None:
    free = await asyncio.to_thread(_free_bytes, path)
    if free is None:
        report.add(id, "INFRA-02", f"disk: {what}", "warn", f"cannot tell the free space at {path}")
        return
    status: Status = "ok"
    if free < fail_gb * 1e9:
        status = "fail"
    elif free < warn_gb * 1e9:
        status = "warn"
    report.add(
        id,
        "INFRA-02",
        f"disk: {what}",
        status,
        f"{_gb(free)} free at {path}",
        None
        if status == "ok"
        else f"free some space: {warn_gb:.0f} GB or more is comfortable "
        "(a checkpoint is 2-4 GB, each training keeps a LoRA every 200 steps)",
    )


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the file system that holds `path`. Blocking: run it in a thread."""
    for candidate in (path, *path.parents):  # the folder may not exist yet
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None
