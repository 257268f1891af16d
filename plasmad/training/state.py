"""What a training job carries: its request (`TrainRequest`) and its state (`TrainingState`).

A TRAIN job's row stores the wire request as validated (paths made absolute) and, as `result`,
the training's state: where its files are, what the trainer decided at submission, how far it got,
how it ended, its checkpoints, samples and promotions. The operations (submission, status,
samples, promote) and the queue's handler both read it back as a `TrainingState` and write it
back as JSON, in the same camelCase keys the wire shows (`result` of GET /jobs/:id).

A key is stored once it has been set, as the rows always were: a queued training's row has no
progress in it yet, and the time left goes once it ended.

Everything about one training is in `<state>/trainings/<id>/`: `train.log` (the trainer's output)
and `output/` (its checkpoints, kohya's names whichever backend), `samples/` (contact sheets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeAlias

from pydantic import Field

from plasmad.context import Core
from plasmad.core.config import Config
from plasmad.core.errors import invalid
from plasmad.core.jobs import StateModel
from plasmad.core.states import JobKind
from plasmad.core.store import Job
from plasmad.core.wire import TrainRequest
from plasmad.training.backend import OutcomeKind, TrainSpec
from plasmad.training.checkpoints import Checkpoint

LOG_NAME = "train.log"
OUTPUT_SUBDIR = "output"
SAMPLES_SUBDIR = "samples"

#: How a training ended: a backend's outcome, or `interrupted` (plasmad stopped during it).
EndKind: TypeAlias = OutcomeKind | Literal["interrupted"]


def training_dir(cfg: Config, training_id: str) -> Path:
    return cfg.trainings_dir / training_id


class Announced(StateModel):
    """A checkpoint the trainer said it saved, when it said so."""

    step: int | None  #: None: the final file
    path: str


class SampleRow(StateModel):
    """One row of the contact sheet: a checkpoint (or the base model) and its sample jobs."""

    label: str
    step: int | None
    lora_id: str | None  #: None: the base model, without the LoRA
    #: One generation job per prompt, in the prompts' order.
    jobs: list[str] = Field(default_factory=list)


class SampleSet(StateModel):
    """The samples of a training's checkpoints (LORA-02): the same prompts and seeds for each."""

    set_id: str = Field(alias="set")  #: a hash of the prompts, the settings and the checkpoints
    prompts: list[str]
    seeds: list[int]
    request: dict[str, Any]  #: the samples request, less its prompts (wire spelling)
    rows: list[SampleRow]
    sheet: str | None = None  #: the contact sheet, once every job has ended
    created_at: str

    def summary(self) -> dict[str, Any]:
        """What a training's status shows of its samples."""
        return {
            "set": self.set_id,
            "sheet": self.sheet,
            "rows": [r.label for r in self.rows],
            "jobs": sum(len(r.jobs) for r in self.rows),
        }


class Promotion(StateModel):
    """A checkpoint copied into ComfyUI's loras folder (LORA-03)."""

    step: int | None
    file: str  #: the checkpoint's file name in the training's output folder
    lora_id: str  #: its name in ComfyUI's loras folder
    path: str
    copied: bool  #: False: the same file was there already
    at: str


class TrainingState(StateModel):
    """`job.result` of a TRAIN job."""

    # Written at submission.
    trainer: str | None = None  #: kohya | comfyui
    dir: Path | None = None  #: the training's folder
    output_dir: Path  #: its checkpoints
    log_file: Path  #: the trainer's output
    image_dir: Path  #: the dataset's <repeats>_<trigger> folder
    reg_dir: Path | None = None
    images: int | None = None  #: originals and mirrored copies
    checkpoint: str  #: the base checkpoint's name in ComfyUI's checkpoints folder
    checkpoint_path: Path
    #: From the dataset check and the trainer's preflight.
    warnings: list[str] = Field(default_factory=list)
    #: What the backend's `prepare` decided (mixed precision...): the backend's own model dumped
    #: (KohyaSettings, ComfyTrainerSettings), read back by it; shown as it is.
    settings: dict[str, Any] = Field(default_factory=dict)
    # Written while it runs.
    total: int | None = None
    step: int | None = None
    loss: float | None = None
    sec_per_step: float | None = None
    eta_seconds: float | None = None
    announced: list[Announced] = Field(default_factory=list)
    #: Facts the backend's `abandon` needs after a crash (an output folder, a prompt id): the
    #: backend's own model (comfy_trainer.RunFacts), read back by it.
    run: dict[str, Any] = Field(default_factory=dict)
    # Written when it ends, and after.
    outcome: EndKind | None = None
    reason: str | None = None
    advice: str | None = None
    checkpoints: list[Checkpoint] = Field(default_factory=list)
    samples: SampleSet | None = None
    promoted: list[Promotion] = Field(default_factory=list)

    @classmethod
    def of(cls, job: Job) -> TrainingState:
        return cls.model_validate(job.result or {})

    def dump(self) -> dict[str, Any]:
        # Only the keys set so far (see the module's docstring): the rows keep their shape.
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    def store_in(self, job: Job) -> dict[str, Any]:
        """Make this the job's state (the queue's live job is what status reads while it runs)."""
        job.result = self.dump()
        return job.result

    def warn(self, warning: str) -> None:
        self.warnings = [*self.warnings, warning]

    def forget_eta(self) -> None:
        """A training that ended has no time left: the key goes, as it always did."""
        self.eta_seconds = None
        self.model_fields_set.discard("eta_seconds")


def spec_of(job: Job, state: TrainingState | None = None) -> TrainSpec:
    """The backend's view of a stored training (job.request is the wire request, job.result ours)."""
    req = TrainRequest.model_validate(job.request)
    res = state if state is not None else TrainingState.of(job)
    return TrainSpec(
        training_id=job.id,
        output_name=req.output_name,
        dataset_dir=Path(req.dataset_dir),
        image_dir=res.image_dir,
        reg_dir=res.reg_dir,
        checkpoint=res.checkpoint,
        checkpoint_path=res.checkpoint_path,
        steps=req.steps,
        save_every=req.save_every_steps,
        resolution=req.resolution,
        network_dim=req.network_dim,
        network_alpha=req.network_alpha,
        learning_rate=req.learning_rate,
        seed=req.seed,
        output_dir=res.output_dir,
        log_path=res.log_file,
        settings=dict(res.settings),
    )


async def find_training(core: Core, training_id: object) -> Job:
    """A stored training by id (404 if there is none). The running one is the queue's live object:
    its state holds loss, speed and time left."""
    if not isinstance(training_id, str) or not training_id:
        raise invalid("id", "must be a training id")
    return await core.job(training_id, JobKind.TRAIN)
