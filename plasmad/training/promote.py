"""Promoting a checkpoint (LORA-03): copy it into ComfyUI's loras folder under the LoRA's name.

Nothing there is ever replaced: the same file already there is fine (a second promote), another
file of that name is refused with a 409 naming it. The training records each promotion.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from plasmad.comfy import model_paths
from plasmad.context import Core
from plasmad.core.config import Config
from plasmad.core.errors import ErrorCode, PlasmaError, invalid
from plasmad.core.fsutil import copy_new, same_file_content
from plasmad.core.states import JobStatus
from plasmad.core.store import now
from plasmad.core.wire import PromoteRequest, PromoteView, checked, parse
from plasmad.training.checkpoints import Checkpoint, list_checkpoints
from plasmad.training.state import Promotion, TrainingState, find_training, spec_of
from plasmad.training.validation import check_output_name

log = logging.getLogger(__name__)


class PromoteOps:
    """`promote` of TrainingOps."""

    def __init__(self, core: Core, lock: asyncio.Lock) -> None:
        self._core = core
        self._lock = lock  #: TrainingOps' lock: one change to a training's state at a time

    async def promote(self, training_id: Any, body: Any = None) -> dict[str, Any]:
        """Copy one checkpoint into ComfyUI's loras folder under the LoRA's name (LORA-03)."""
        job = await find_training(self._core, training_id)
        req = parse(PromoteRequest, body or {})
        spec = spec_of(job)
        checkpoints = await asyncio.to_thread(list_checkpoints, spec.output_dir, spec.output_name)
        chosen = _pick(checkpoints, req.step, spec.steps)
        if not chosen.complete:
            raise PlasmaError(ErrorCode.CONFLICT, f"{chosen.file} is incomplete (cut off while being saved)")
        name = req.name or spec.output_name
        if name.lower().endswith(".safetensors"):
            name = name[: -len(".safetensors")]
        check_output_name(name, "name")
        target = await asyncio.to_thread(_target, self._core.cfg, f"{name}.safetensors")
        copied = await asyncio.to_thread(_copy_new_or_same, chosen.path, target)
        listed, warning = await self._listed(target)
        record = Promotion(
            step=chosen.step, file=chosen.file, lora_id=target.name, path=str(target), copied=copied, at=now()
        )
        await self._record(job.id, record)
        log.info("training %s: %s promoted to %s", job.id, chosen.file, target)
        answer = {
            "training": job.id,
            **record.dump(),
            "alreadyThere": not copied,
            "listed": listed,
            "warning": warning,
        }
        return dict(checked(PromoteView, answer))

    async def _listed(self, target: Path) -> tuple[bool | None, str | None]:
        """Whether ComfyUI lists the promoted file now (None: could not ask), and a warning if not."""
        try:
            self._core.comfy.forget_object_info()  # ComfyUI's list is re-read, not our cached copy
            listed = target.name in await self._core.comfy.input_choices("LoraLoader", "lora_name")
        except PlasmaError as exc:
            return None, f"could not ask ComfyUI whether it lists {target.name}: {exc.message}"
        if not listed:
            return False, f"ComfyUI does not list {target.name} yet; check its loras folder settings"
        return True, None

    async def _record(self, training_id: str, record: Promotion) -> None:
        async with self._lock:
            fresh = await find_training(self._core, training_id)
            state = TrainingState.of(fresh)
            state.promoted = [*state.promoted, record]
            if fresh.status == JobStatus.RUNNING and fresh.result is not None:
                state.store_in(fresh)  # the live state: persisted with it
            else:
                await self._core.store.update(training_id, result=state.dump())


def _target(cfg: Config, file_name: str) -> Path:
    """Where the promoted LoRA goes: ComfyUI's own loras folder, unless a file of that name is
    already in one of the folders ComfyUI searches (extra_model_paths.yaml, a link): ComfyUI loads
    the first it finds, so that file is the one to compare with, never to shadow (blocking)."""
    folders = model_paths.model_folders(cfg)
    existing = folders.find("loras", file_name)
    return existing if existing is not None else folders.models_dir / "loras" / file_name


def _copy_new_or_same(source: Path, target: Path) -> bool:
    """Copy `source` to `target` unless something is there: True if copied, False if the same file
    was there already; a 409 if another file is (blocking)."""
    copied = copy_new(source, target)
    if not copied and not same_file_content(source, target):
        raise PlasmaError(
            ErrorCode.CONFLICT,
            f"{target.name} is already in ComfyUI's loras folders ({target.parent}) and is another "
            'file; it is not replaced: choose another name (--as NAME / "name")',
            field="name",
            details={"path": str(target)},
        )
    return copied


def _pick(checkpoints: list[Checkpoint], step: int | None, total: int) -> Checkpoint:
    final = next((c for c in checkpoints if c.step is None), None)
    if step is None:
        if final is None:
            raise invalid(
                "step", "this training has no final LoRA: give the step of a checkpoint", _steps(checkpoints)
            )
        return final
    found = next((c for c in checkpoints if c.step == step), None)
    if found is None and step == total and final is not None:
        return final
    if found is None:
        raise invalid("step", f"no checkpoint at step {step}", _steps(checkpoints))
    return found


def _steps(checkpoints: list[Checkpoint]) -> dict[str, Any]:
    return {"checkpoints": [c.step if c.step is not None else "final" for c in checkpoints]}
