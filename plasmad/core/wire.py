"""Wire models: every request and response body of both APIs, in one place.

Requests are parsed here (types, unknown fields refused); the hardware limits and everything that
needs ComfyUI or the disk are checked in `plasmad.generation.validation`. The wire speaks camelCase, the
requirements' own spelling (loraId, negativePrompt); Python code uses snake_case attributes.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from plasmad.core import limits
from plasmad.core.errors import PlasmaError, invalid
from plasmad.core.states import JobKind, JobStatus


class WireModel(BaseModel):
    """Request bodies: strict JSON types (`"steps": true` or `"5"` is refused, not coerced)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=False, extra="forbid", frozen=True, strict=True
    )


class QueryParams(WireModel):
    """Parameters that may come from a URL query string, where every value is text."""

    model_config = ConfigDict(strict=False)


class Resolution(WireModel):
    width: int = limits.DEFAULT_WIDTH
    height: int = limits.DEFAULT_HEIGHT


class GenerateRequest(WireModel):
    """POST /jobs, JSON-RPC `submit`."""

    prompt: str = Field(min_length=1, max_length=8000)
    negative_prompt: str = Field(default="", max_length=8000)
    lora_id: str | None = None  #: a file in ComfyUI's models/loras, or None for the base model
    lora_strength: float = Field(
        default=limits.DEFAULT_LORA_STRENGTH, ge=-limits.MAX_LORA_STRENGTH, le=limits.MAX_LORA_STRENGTH
    )
    checkpoint: str | None = None  #: default: PLASMA_CHECKPOINT
    seed: int | None = Field(default=None, ge=0, le=limits.MAX_SEED)  #: drawn and recorded when absent
    steps: int = Field(default=limits.DEFAULT_STEPS, ge=1, le=limits.MAX_STEPS)
    cfg: float = Field(default=limits.DEFAULT_CFG, ge=0.0, le=limits.MAX_CFG)
    sampler: str = limits.DEFAULT_SAMPLER
    scheduler: str = limits.DEFAULT_SCHEDULER
    resolution: Resolution = Resolution()
    # Not a real choice (GEN-03): accepted only so that a client sending it gets a clear 400.
    batch_size: int = Field(
        default=limits.BATCH_SIZE,
        validation_alias=AliasChoices("batch_size", "batchSize"),
        serialization_alias="batchSize",
    )
    chapter: int | None = Field(default=None, ge=1, le=999)
    page: int | None = Field(default=None, ge=1, le=999)
    prompt_file: str | None = None  #: recorded in the generation log (plasmactl generate sets it)
    # ControlNet OpenPose (CTRL-01..03): a pose image selects img2img-lora-controlnet.json.
    pose_image_path: str | None = None
    pose_is_skeleton: bool = True  #: False: run the OpenPose preprocessor on a reference panel
    controlnet_strength: float | None = None
    # The ControlNet model file (default PLASMA_CONTROLNET). A list is accepted only so that asking
    # for several gets a clear 400: one ControlNet at a time fits in 16 GB.
    controlnet: list[str] | None = None
    init_image_path: str | None = None
    denoise: float | None = Field(default=None, gt=0.0, le=1.0)

    @field_validator("controlnet", mode="before")
    @classmethod
    def _controlnet_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return value
        raise ValueError("must be a ControlNet model file name")


class DatasetRegRequest(WireModel):
    """POST /datasets/reg, JSON-RPC `dataset_reg`: the regularisation set of a dataset (DATA-03)."""

    dataset_dir: str = Field(min_length=1)  #: absolute; the images go to `<dataset>-reg/1_<class>/`
    count: int = 150
    class_name: str | None = None  #: default "character" (plasmad.dataset.REG_DEFAULT_CLASS)
    seed: int | None = Field(default=None, ge=0, le=limits.MAX_SEED)  #: item i gets seed + i; default 1000
    width: int = limits.DATASET_IMAGE_SIZE
    height: int = limits.DATASET_IMAGE_SIZE
    steps: int = Field(default=limits.DEFAULT_STEPS, ge=1, le=limits.MAX_STEPS)
    checkpoint: str | None = None  #: the base checkpoint; default PLASMA_CHECKPOINT (never a LoRA)
    allow_small: bool = False  #: permit fewer than REG_MIN_IMAGES (tests, demos)


class TrainRequest(WireModel):
    """POST /loras/train, JSON-RPC `train`."""

    dataset_dir: str = Field(min_length=1)
    output_name: str = Field(min_length=1, max_length=100)
    steps: int = Field(default=limits.TRAIN_DEFAULT_STEPS, ge=1, le=limits.TRAIN_MAX_STEPS)
    resolution: int = Field(default=limits.TRAIN_MAX_RESOLUTION, ge=64)
    batch_size: int = Field(
        default=limits.BATCH_SIZE,
        validation_alias=AliasChoices("batch_size", "batchSize"),
        serialization_alias="batchSize",
    )
    save_every_steps: int = Field(default=limits.TRAIN_DEFAULT_SAVE_EVERY, ge=1)
    reg_dataset_dir: str | None = None
    learning_rate: float = Field(default=limits.TRAIN_DEFAULT_LEARNING_RATE, gt=0, le=1)
    network_dim: int = Field(default=limits.TRAIN_DEFAULT_NETWORK_DIM, ge=1, le=256)
    network_alpha: float = Field(default=limits.TRAIN_DEFAULT_NETWORK_ALPHA, gt=0, le=256)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)


class TrainSamplesRequest(WireModel):
    """POST /loras/:id/samples, JSON-RPC `lora_samples` (LORA-02): the same prompts, with the same
    seeds, for every checkpoint of a training; one contact sheet."""

    prompts: list[str] | None = Field(default=None, min_length=1, max_length=8)  #: default: three
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

    step: int | None = Field(default=None, ge=1)  #: the checkpoint of this step; none: the final file
    name: str | None = Field(default=None, min_length=1, max_length=100)  #: default: the outputName


class ViewModel(BaseModel):
    """Responses: built in Python by field name, sent in camelCase."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Progress(ViewModel):
    step: int
    total: int


class JobView(ViewModel):
    """What GET /jobs/:id answers."""

    id: str
    kind: JobKind
    status: JobStatus
    progress: Progress | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    #: Why a queued job has not started (ComfyUI away, the GPU held by ...), or what a running job
    #: waits for between two attempts (ComfyUI to come back).
    waiting_for: str | None = None
    error: dict[str, Any] | None = None
    outputs: list[str] = []  #: image files written (the pipeline's files when chapter+page were given)
    seed: int | None = None
    request: dict[str, Any]
    result: dict[str, Any] | None = None


class CheckpointView(ViewModel):
    step: int | None  #: None: the final file
    file: str
    path: str
    bytes: int
    complete: bool  #: the safetensors file is whole (a kill while saving leaves a short one)


class TrainingView(ViewModel):
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


class ListJobsParams(QueryParams):
    status: JobStatus | None = None
    kind: JobKind | None = None
    limit: int = Field(default=50, ge=1, le=1000)


class ApproveParams(WireModel):
    image: str = Field(min_length=1)  #: chXX_pNNN_vN (with or without .png)
    approved: bool = True


class BenchRequest(WireModel):
    """POST /bench, JSON-RPC `bench` (INFRA-04). The bar is defined for the defaults only."""

    resolution: Resolution = Resolution(width=512, height=512)
    steps: int = Field(default=20, ge=1, le=limits.MAX_STEPS)
    checkpoint: str | None = None  #: default: PLASMA_CHECKPOINT


class BenchResultsParams(QueryParams):
    """GET /bench, JSON-RPC `bench_results`."""

    id: str | None = None  #: one benchmark (b_...), or the recent ones
    limit: int = Field(default=10, ge=1, le=1000)


class LogsParams(QueryParams):
    """GET /logs and /jobs/{id}/log, JSON-RPC `logs`."""

    job: str | None = None  #: a job or training id, `comfyui` (a managed ComfyUI), or none: the daemon's
    lines: int = Field(default=100, ge=0, le=10000)
    offset: int | None = Field(default=None, ge=0)  #: following: bytes already read


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: Any) -> M:
    """Parse a request body; the first problem becomes a 400 naming the field."""
    if not isinstance(data, dict):
        raise invalid("body", "must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _to_plasma_error(exc) from None


def _to_plasma_error(exc: ValidationError) -> PlasmaError:
    problems = exc.errors(include_url=False, include_input=False)
    first = problems[0]
    loc = ".".join(str(p) for p in first["loc"]) or "body"
    message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
    details = [{"field": ".".join(str(p) for p in p["loc"]), "message": p["msg"]} for p in problems]
    return invalid(loc, message, details if len(details) > 1 else None)


def dump(model: BaseModel) -> dict[str, Any]:
    """A model as the wire carries it (camelCase, JSON types)."""
    return model.model_dump(mode="json", by_alias=True)
