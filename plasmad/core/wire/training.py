"""LoRA trainings: the request, a training's view, its samples (LORA-02), promoting a checkpoint
(LORA-03), the trainings and LoRAs listed, and the loss log."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, ConfigDict, Field, field_validator

from plasmad.core import limits
from plasmad.core.states import JobStatus
from plasmad.core.wire.base import (
    FullView,
    PathText,
    PromptText,
    QueryParams,
    ViewModel,
    WireModel,
    not_the_root,
)
from plasmad.core.wire.generation import Resolution


class TrainRequest(WireModel):
    """POST /loras/train, JSON-RPC `train`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"datasetDir": "/Users/me/datasets/spyke", "outputName": "spyke_plasma_v1"}]
        }
    )

    dataset_dir: PathText
    output_name: str = Field(min_length=1, max_length=100)
    steps: int = Field(default=limits.TRAIN_DEFAULT_STEPS, ge=1, le=limits.TRAIN_MAX_STEPS)
    resolution: int = Field(default=limits.TRAIN_MAX_RESOLUTION, ge=limits.MIN_SIZE)
    batch_size: int = Field(
        default=limits.BATCH_SIZE,
        validation_alias=AliasChoices("batch_size", "batchSize"),
        serialization_alias="batchSize",
    )
    save_every_steps: int = Field(default=limits.TRAIN_DEFAULT_SAVE_EVERY, ge=1, le=limits.TRAIN_MAX_STEPS)
    reg_dataset_dir: PathText | None = None
    learning_rate: float = Field(default=limits.TRAIN_DEFAULT_LEARNING_RATE, gt=0, le=1)
    network_dim: int = Field(default=limits.TRAIN_DEFAULT_NETWORK_DIM, ge=1, le=limits.TRAIN_MAX_NETWORK_DIM)
    network_alpha: float = Field(
        default=limits.TRAIN_DEFAULT_NETWORK_ALPHA, gt=0, le=limits.TRAIN_MAX_NETWORK_DIM
    )
    seed: int = Field(default=42, ge=0, le=2**32 - 1)

    check_folders = field_validator("dataset_dir", "reg_dataset_dir")(not_the_root)


class TrainSamplesRequest(WireModel):
    """POST /loras/:id/samples, JSON-RPC `lora_samples` (LORA-02): the same prompts, with the same
    seeds, for every checkpoint of a training; one contact sheet."""

    prompts: list[PromptText] | None = Field(default=None, min_length=1, max_length=8)  #: default: three
    negative_prompt: str = Field(default="", max_length=8000)
    seed: int = Field(default=1234, ge=0, le=2**32 - 8)  #: prompt j is drawn with seed + j
    steps: int = Field(default=limits.DEFAULT_STEPS, ge=1, le=limits.MAX_STEPS)
    resolution: Resolution = Resolution()
    lora_strength: float = Field(
        default=limits.DEFAULT_LORA_STRENGTH, ge=-limits.MAX_LORA_STRENGTH, le=limits.MAX_LORA_STRENGTH
    )
    include_base: bool = False  #: one more row without the LoRA, to compare against


class PromoteRequest(WireModel):
    """POST /loras/:id/promote, JSON-RPC `lora_promote` (LORA-03)."""

    step: int | None = Field(default=None, ge=1, le=limits.TRAIN_MAX_STEPS)  #: none: the final file
    name: str | None = Field(default=None, min_length=1, max_length=100)  #: default: the outputName


class TrainSamplesParams(TrainSamplesRequest):
    """JSON-RPC `lora_samples`: the training's `id` and the body of POST /loras/:id/samples."""

    id: str


class PromoteParams(PromoteRequest):
    """JSON-RPC `lora_promote`: the training's `id` and the body of POST /loras/:id/promote."""

    id: str


class CheckpointView(FullView):
    step: int | None  #: None: the final file
    file: str
    path: str
    bytes: int
    complete: bool  #: the safetensors file is whole (a kill while saving leaves a short one)


class TrainingView(FullView):
    """What GET /loras/:id/status answers."""

    id: str
    status: JobStatus
    trainer: str  #: kohya | comfyui
    output_name: str
    dataset_dir: str
    step: int = 0
    total: int
    loss: float | None = None  #: the trainer's running average (kohya only)
    sec_per_step: float | None = None
    eta_seconds: float | None = None
    checkpoints: list[CheckpointView] = []
    log_tail: list[str] = []
    log_file: str
    output_dir: str
    outcome: str | None = None  #: succeeded | no_data | out_of_memory | cancelled | failed | interrupted
    reason: str | None = None  #: why it did not succeed, for people
    advice: str | None = None  #: what to do about it
    warnings: list[str] = []  #: from the preflight and the dataset check
    waiting_for: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    request: dict[str, Any]
    samples: dict[str, Any] | None = None


class LoraFile(ViewModel):
    name: str
    in_folder: bool  #: in ComfyUI's models/loras
    comfyui: bool | None  #: ComfyUI lists it (null: it did not answer)


class LorasView(ViewModel):
    trainings: list[TrainingView]  #: newest first
    loras: list[LoraFile]
    comfyui_error: str | None
    sample_copies: int  #: plasmad's own copies for samples, not listed


class SampleFailure(ViewModel):
    job: str
    error: str | None


class SampleRowView(ViewModel):
    label: str
    step: int | None
    lora_id: str | None
    jobs: list[str]


class SamplesView(ViewModel):
    """A training's samples (LORA-02): the same prompts and seeds for every checkpoint."""

    training: str
    set_id: str = Field(alias="set")
    state: Literal["drawing", "done"]
    done: int
    total: int
    failed: list[SampleFailure]
    prompts: list[str]
    seeds: list[int]
    rows: list[SampleRowView]
    sheet: str | None  #: the contact sheet, once every job has ended


class PromoteView(ViewModel):
    """A checkpoint copied into ComfyUI's loras folder (LORA-03)."""

    training: str
    step: int | None
    file: str
    lora_id: str
    path: str
    copied: bool
    at: str
    already_there: bool
    listed: bool | None  #: ComfyUI lists it now (null: could not ask)
    warning: str | None


# --- the loss log (the review board's chart) -------------------------------------------------------


class LossParams(QueryParams):
    """GET /loras/:id/loss."""

    after: int | None = Field(default=None, ge=0)  #: only the steps after this one


class TrainingLossParams(LossParams):
    """JSON-RPC `training_loss`: the training's `id` and GET /loras/:id/loss's query."""

    id: str


class LossPoint(ViewModel):
    step: int
    loss: float


class LossView(ViewModel):
    """A training's loss log: the trainer's running average at each step (kohya's avr_loss)."""

    training: str
    points: list[LossPoint]
