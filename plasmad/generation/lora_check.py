"""No page drawn without the character: with a managed ComfyUI, a LoRA that did not load fails
the job that used it.

ComfyUI applies a LoRA whose keys do not fit the checkpoint only partly and reports success;
only its output says so (`plasmad.comfy.comfy_log`). The job notes the log's size when it sends
its prompt and reads what ComfyUI appended when the prompt ends. ComfyUI keeps a loaded LoRA and
a patched model between prompts and then says nothing the second time, so a LoRA found bad is
remembered (for this checkpoint, until its file changes) and fails the next job that uses it too.
A ComfyUI the artist runs writes its output where plasmad cannot read it: there this check is off
(the submit-time check of the LoRA's keys still applies).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from plasmad.comfy import comfy_log
from plasmad.context import Core
from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.core.jobs import GenerationState
from plasmad.core.store import Job

log = logging.getLogger(__name__)

_LoraKey = tuple[str, str, int, int]  #: checkpoint, LoRA, the LoRA file's size and mtime


class LoraCheck:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._bad: dict[_LoraKey, str] = {}

    async def mark(self) -> int | None:
        """The managed ComfyUI's log size now (None when ComfyUI is not ours)."""
        process = self._core.process
        if process is None:
            return None
        return await asyncio.to_thread(comfy_log.size, process.log_path)

    async def check(self, job: Job, state: GenerationState) -> None:
        """Fail the job (ComfyUI's lines counted) if its LoRA did not load fully."""
        process, lora = self._core.process, job.request.get("loraId")
        if process is None or not isinstance(lora, str) or state.comfy_log_offset is None:
            return
        checkpoint = str(job.request.get("checkpoint"))
        key = (checkpoint, lora, *await asyncio.to_thread(_stat, self._lora_path(lora)))
        problems = await asyncio.to_thread(comfy_log.lora_problems, process.log_path, state.comfy_log_offset)
        if problems:
            counts = " and ".join(f"{n} {name!r} line{'s' if n != 1 else ''}" for name, n in problems.items())
            message = (
                f"ComfyUI could not apply the LoRA {lora} to {checkpoint}: its output has {counts} for this "
                "job, so the image would lack the character; it was not published. Use a LoRA trained on "
                f"this checkpoint's model (SD 1.5). ComfyUI's lines: {process.log_path} "
                "(`plasmactl logs comfyui`)"
            )
            self._bad[key] = message
        elif key in self._bad:
            message = self._bad[key] + " (found in an earlier job: ComfyUI kept that LoRA loaded since)"
        else:
            return
        log.warning("job %s: %s", job.id, message)
        raise PlasmaError(
            ErrorCode.COMFYUI_REJECTED,
            message,
            field="loraId",
            details={"comfyuiLog": str(process.log_path), "lines": problems},
        )

    def _lora_path(self, lora: str) -> Path | None:
        folder = self._core.cfg.comfyui_dir
        return folder / "models" / "loras" / lora if folder is not None else None


def _stat(path: Path | None) -> tuple[int, int]:
    try:
        st = path.stat() if path is not None else None
    except OSError:
        st = None
    return (st.st_size, st.st_mtime_ns) if st is not None else (0, 0)
