"""The one small interface behind which LoRA trainers sit: kohya's sd-scripts (`kohya.backend`) and
ComfyUI's own training nodes (`comfy_trainer.backend`).

A backend is asked two things: `prepare` at submission (seconds: can it train this here, with which
settings, and what should the artist be warned about) and `run` under the GPU lock (hours: train,
announcing progress and each checkpoint, until it ends or `stop` is set). It never raises for a
trainer that failed: it says how the run ended as an `Outcome`, the one vocabulary both backends
share (succeeded / no_data / out_of_memory / cancelled / failed). `abandon` cleans up after a daemon
that died mid-training (a trainer still running, staged files).

Checkpoints keep kohya's names in both backends (`<name>-step%08d.safetensors`, then
`<name>.safetensors`), so listing, sampling and promoting them is the same whichever trained.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias

from plasmad.core.errors import ErrorCode, PlasmaError

OutcomeKind: TypeAlias = Literal["succeeded", "no_data", "out_of_memory", "cancelled", "failed"]


@dataclass(frozen=True)
class Outcome:
    """How a run ended, for people: what happened, and what to do about it."""

    kind: OutcomeKind
    reason: str
    advice: str | None = None

    def as_error(self) -> PlasmaError | None:
        """The error to show for a training that ended without a LoRA; None when there is none."""
        if self.kind in ("succeeded", "cancelled"):
            return None
        code = ErrorCode.OUT_OF_MEMORY if self.kind == "out_of_memory" else ErrorCode.TRAINING_FAILED
        return PlasmaError(code, self.reason, details={"outcome": self.kind, "advice": self.advice})


@dataclass(frozen=True)
class TrainSpec:
    """One training, validated and resolved: everything a backend needs."""

    training_id: str
    output_name: str
    dataset_dir: Path
    image_dir: Path  #: the <repeats>_<trigger> folder
    reg_dir: Path | None
    checkpoint: str  #: its name in ComfyUI's checkpoints folder
    checkpoint_path: Path
    steps: int
    save_every: int
    resolution: int
    network_dim: int
    network_alpha: float
    learning_rate: float
    seed: int
    output_dir: Path  #: where the checkpoints go (the training's own folder)
    log_path: Path
    settings: dict[str, Any] = field(default_factory=dict)  #: what `prepare` decided (mixed precision...)


@dataclass(frozen=True)
class TrainProgress:
    step: int
    total: int
    loss: float | None = None
    sec_per_step: float | None = None
    eta_seconds: float | None = None


@dataclass(frozen=True)
class Prepared:
    """What `prepare` found: settings for `run` (stored with the job) and warnings for the status."""

    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class TrainEvents:
    """How a running backend reports. Each callback is awaited; none may raise into the trainer."""

    progress: Callable[[TrainProgress], Awaitable[None]]
    checkpoint: Callable[[int | None, Path], Awaitable[None]]  #: step (None: the final file), path
    #: Facts `abandon` needs after a crash (a prompt id, an output folder), stored with the job.
    started: Callable[[dict[str, Any]], Awaitable[None]]


class TrainerBackend(Protocol):
    name: str

    async def prepare(self, spec: TrainSpec) -> Prepared:
        """Seconds, at submission: refuse (PlasmaError) or say how it will run. Never trains."""

    async def run(self, spec: TrainSpec, events: TrainEvents, stop: asyncio.Event) -> Outcome:
        """Train until done or `stop` is set; checkpoints already written stay in every case."""

    async def abandon(self, spec: TrainSpec, state: dict[str, Any]) -> None:
        """After a restart: stop whatever the dead daemon's run left behind; remove staged files."""
