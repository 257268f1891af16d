"""Wire models: every request and response body of both APIs, in one place.

Requests are parsed here (types, unknown fields refused); the hardware limits and everything that
needs ComfyUI or the disk are checked in `plasmad.generation.validation`. The wire speaks camelCase, the
requirements' own spelling (loraId, negativePrompt); Python code uses snake_case attributes.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Any, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from plasmad.core import limits
from plasmad.core.errors import PlasmaError, invalid
from plasmad.core.states import JobKind, JobStatus

# --- bounds on what a request may carry (issue 10): found by fuzzing, each a 400 naming its field ----

MAX_BODY_BYTES = 1024 * 1024  #: a request body (HTTP) or line (JSON-RPC); past it: 413 / PAYLOAD_TOO_LARGE
MAX_NAME = 255  #: a file name in a models folder, a sampler: NAME_MAX
MAX_PATH = 1024  #: an absolute path: PATH_MAX on macOS, the artist's system
MAX_ID = 100  #: a job, training or benchmark id (ours are 14 characters)
MAX_CHAPTER = 999
MAX_PAGE = 999

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
PathText = Annotated[str, Field(min_length=1, max_length=MAX_PATH)]
PromptText = Annotated[str, Field(max_length=8000)]


def check_text(value: Any, field: str = "body") -> None:
    """Refuse a NUL byte or a lone surrogate anywhere in a request, keys included (a 400 naming the
    field). Either breaks what the text meets later: file names, SQLite, ComfyUI's JSON. Both APIs
    run this on everything they are sent, before any operation sees it."""
    stack: list[tuple[str, Any]] = [(field, value)]
    while stack:  # iterative: a body may nest as deep as the JSON decoder allows
        where, item = stack.pop()
        if isinstance(item, str):
            _check_string(item, where)
        elif isinstance(item, dict):
            for key, inner in item.items():
                label = str(key) or '""'  # an empty key still names a field
                name = label if where == "body" else f"{where}.{label}"
                _check_string(str(key), name)
                stack.append((name, inner))
        elif isinstance(item, list):
            stack.extend((f"{where}.{i}", inner) for i, inner in enumerate(item))


def _check_string(text: str, field: str) -> None:
    if "\x00" in text:
        raise invalid(field, "contains a NUL byte")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(field, "is not valid Unicode (it holds a lone surrogate)") from None


def check_id(value: Any, field: str = "id") -> str:
    """A job, training or benchmark id as sent (path, query or params): a short printable text."""
    if not isinstance(value, str) or not value:
        raise invalid(field, "must be an id")
    if len(value) > MAX_ID or not (value.isascii() and value.isprintable()):
        raise invalid(field, f"{value[:40]!r} is not an id")
    return value


def _not_the_root(value: str | None) -> str | None:
    if value is not None and PurePosixPath(value) == PurePosixPath(value).parent:
        raise ValueError("must be a folder of its own, not the filesystem root")
    return value


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

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "prompt": "spyke_plasma_v1, full body, rooftop",
                    "negativePrompt": "blurry",
                    "loraId": "spyke_plasma_v1.safetensors",
                    "seed": 42,
                    "steps": 20,
                    "resolution": {"width": 512, "height": 768},
                    "chapter": 1,
                    "page": 1,
                }
            ]
        }
    )

    prompt: str = Field(min_length=1, max_length=8000)
    negative_prompt: str = Field(default="", max_length=8000)
    lora_id: Name | None = None  #: a file in ComfyUI's models/loras, or None for the base model
    lora_strength: float = Field(
        default=limits.DEFAULT_LORA_STRENGTH, ge=-limits.MAX_LORA_STRENGTH, le=limits.MAX_LORA_STRENGTH
    )
    checkpoint: Name | None = None  #: default: PLASMA_CHECKPOINT
    seed: int | None = Field(default=None, ge=0, le=limits.MAX_SEED)  #: drawn and recorded when absent
    steps: int = Field(default=limits.DEFAULT_STEPS, ge=1, le=limits.MAX_STEPS)
    cfg: float = Field(default=limits.DEFAULT_CFG, ge=0.0, le=limits.MAX_CFG)
    sampler: Name = limits.DEFAULT_SAMPLER
    scheduler: Name = limits.DEFAULT_SCHEDULER
    resolution: Resolution = Resolution()
    # Not a real choice (GEN-03): accepted only so that a client sending it gets a clear 400.
    batch_size: int = Field(
        default=limits.BATCH_SIZE,
        validation_alias=AliasChoices("batch_size", "batchSize"),
        serialization_alias="batchSize",
    )
    chapter: int | None = Field(default=None, ge=1, le=MAX_CHAPTER)
    page: int | None = Field(default=None, ge=1, le=MAX_PAGE)
    prompt_file: PathText | None = None  #: recorded in the generation log (plasmactl generate sets it)
    # ControlNet OpenPose (CTRL-01..03): a pose image selects img2img-lora-controlnet.json.
    pose_image_path: PathText | None = None
    pose_is_skeleton: bool = True  #: False: run the OpenPose preprocessor on a reference panel
    controlnet_strength: float | None = None
    # The ControlNet model file (default PLASMA_CONTROLNET). A list is accepted only so that asking
    # for several gets a clear 400: one ControlNet at a time fits in 16 GB.
    controlnet: list[Name] | None = None
    init_image_path: PathText | None = None
    denoise: float | None = Field(default=None, gt=0.0, le=1.0)

    @field_validator("controlnet", mode="before")
    @classmethod
    def _controlnet_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return value
        raise ValueError("must be a ControlNet model file name")


class PageRequest(GenerateRequest):
    """POST /pages, JSON-RPC `generate_page`: a page from its prompt file
    (`prompts/ch-XX/pNNN.txt`); any other field of a generation overrides the defaults."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"chapter": 1, "page": 1, "seed": 42}]})

    prompt: str | None = Field(default=None, min_length=1, max_length=8000)  # type: ignore[assignment]
    chapter: int = Field(ge=1, le=999)
    page: int = Field(ge=1, le=999)


class DatasetRegRequest(WireModel):
    """POST /datasets/reg, JSON-RPC `dataset_reg`: the regularisation set of a dataset (DATA-03)."""

    dataset_dir: PathText  #: absolute; the images go to `<dataset>-reg/1_<class>/`
    count: int = 150
    class_name: Name | None = None  #: default "character" (plasmad.dataset.REG_DEFAULT_CLASS)
    seed: int | None = Field(default=None, ge=0, le=limits.MAX_SEED)  #: item i gets seed + i; default 1000
    width: int = limits.DATASET_IMAGE_SIZE
    height: int = limits.DATASET_IMAGE_SIZE
    steps: int = Field(default=limits.DEFAULT_STEPS, ge=1, le=limits.MAX_STEPS)
    checkpoint: Name | None = None  #: the base checkpoint; default PLASMA_CHECKPOINT (never a LoRA)
    allow_small: bool = False  #: permit fewer than REG_MIN_IMAGES (tests, demos)

    check_dataset_dir = field_validator("dataset_dir")(_not_the_root)


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
    resolution: int = Field(default=limits.TRAIN_MAX_RESOLUTION, ge=64)
    batch_size: int = Field(
        default=limits.BATCH_SIZE,
        validation_alias=AliasChoices("batch_size", "batchSize"),
        serialization_alias="batchSize",
    )
    save_every_steps: int = Field(default=limits.TRAIN_DEFAULT_SAVE_EVERY, ge=1, le=limits.TRAIN_MAX_STEPS)
    reg_dataset_dir: PathText | None = None
    learning_rate: float = Field(default=limits.TRAIN_DEFAULT_LEARNING_RATE, gt=0, le=1)
    network_dim: int = Field(default=limits.TRAIN_DEFAULT_NETWORK_DIM, ge=1, le=256)
    network_alpha: float = Field(default=limits.TRAIN_DEFAULT_NETWORK_ALPHA, gt=0, le=256)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)

    check_folders = field_validator("dataset_dir", "reg_dataset_dir")(_not_the_root)


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


# --- reproductions and consistency checks (issue 12) ---------------------------------------------

#: Runs of one reproduction or consistency check: each is a full render (ComfyUI's cache cleared).
MAX_COMPARE_RUNS = 10


class ReproduceBody(WireModel):
    """POST /images/:name/reproduce's body."""

    runs: int = Field(default=1, ge=1, le=MAX_COMPARE_RUNS)
    force: bool = False  #: run even though a fingerprinted file changed (or none was recorded)


class ReproduceRequest(ReproduceBody):
    """JSON-RPC `reproduce`: the page's name (`image`) and the body of POST /images/:name/reproduce."""

    image: str = Field(min_length=1)  #: chXX_pNNN_vN (with or without .png)


class Crop(WireModel):
    """A region of the image (pixels from the top-left corner): a detail such as the right bracer."""

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(ge=8)  #: SSIM's window is 7 px
    height: int = Field(ge=8)


class ConsistencyOptions(WireModel):
    """POST /consistency, JSON-RPC `consistency`: these, plus a generation request's fields (the
    prompt, the seed...), which are validated as any generation's."""

    runs: int = Field(default=3, ge=2, le=MAX_COMPARE_RUNS)  #: acceptance criterion 2: three runs
    crop: Crop | None = None  #: score this region alone


class ConsistencyRequest(GenerateRequest):
    """POST /consistency's body, as the spec shows it: a generation request and the options."""

    runs: int = Field(default=3, ge=2, le=MAX_COMPARE_RUNS)
    crop: Crop | None = None


# --------------------------------------------------------------------------------------------------


class ViewModel(BaseModel):
    """Responses: built in Python by field name, sent in camelCase."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class FullView(ViewModel):
    """A response always sent whole (`dump`): every key is there, null or not, so the spec marks
    each one required (generated clients need not test for absent keys)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class Progress(FullView):
    step: int
    total: int


class JobView(FullView):
    """What GET /jobs/:id answers."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "j_3f2a9c1b7d4e",
                    "kind": "generate",
                    "status": "succeeded",
                    "progress": {"step": 20, "total": 20},
                    "createdAt": "2026-03-01T10:00:00.000Z",
                    "startedAt": "2026-03-01T10:00:00.100Z",
                    "finishedAt": "2026-03-01T10:00:45.000Z",
                    "waitingFor": None,
                    "error": None,
                    "outputs": ["/Users/me/manga/pipeline/output/ch-01/raw/ch01_p001_v1.png"],
                    "seed": 42,
                    "request": {"prompt": "spyke_plasma_v1, full body, rooftop", "seed": 42},
                    "result": {"template": "txt2img-lora", "width": 512, "height": 768},
                }
            ]
        }
    )

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


#: The longest long poll (GET /jobs/:id?wait=): below common HTTP client timeouts.
MAX_WAIT_S = 60.0


class JobWaitParams(QueryParams):
    """GET /jobs/:id's query: a long poll."""

    #: Seconds to wait for the job to end (at most MAX_WAIT_S); absent: answer now.
    wait: float | None = Field(default=None, ge=0, le=MAX_WAIT_S, allow_inf_nan=False)
    #: The progress step the caller last saw (-1: it saw the job queued): answer as soon as it moves.
    step: int | None = Field(default=None, ge=-1)


class IdParams(QueryParams):
    """JSON-RPC methods on one job or training: `{id}`."""

    id: str


class StatusParams(JobWaitParams):
    """JSON-RPC `status`: a job, now or after a long poll."""

    id: str


# --- model listings (GET /models, JSON-RPC `models`): plasmad.operations.models ---------------------


class ModelView(ViewModel):
    """One checkpoint, LoRA or ControlNet file as ComfyUI lists it."""

    name: str  #: what a request names (checkpoint, loraId, controlnet)
    folder: str  #: the folder ComfyUI searches that holds it
    path: str
    bytes: int
    link: str | None = None  #: where a symlink leads
    family: str | None = None  #: sd15 | sd2 | sdxl | unknown, by its header; None: not read
    sd15: bool | None = None  #: None: not read (a .pth ControlNet is loaded by ComfyUI alone)
    usable: bool  #: a request may name it
    why_not: str | None = None  #: why a request may not name it
    shadows: list[str] = []  #: later folders with a file of that name, which ComfyUI never loads
    comfyui: bool | None = None  #: the running ComfyUI lists it; None: it could not be asked


class ModelsView(ViewModel):
    checkpoints: list[ModelView]
    loras: list[ModelView]
    controlnets: list[ModelView]
    folders: dict[str, list[str]]  #: per kind, in ComfyUI's search order
    config_files: list[str]  #: the extra_model_paths.yaml files read
    problems: list[str]  #: what in them could not be used
    default_checkpoint: str | None
    default_controlnet: str
    plasma_copies: int  #: plasmad's own LoRA copies (samples, trainer chunks), not listed
    comfyui_error: str | None = None


class ListJobsParams(QueryParams):
    status: JobStatus | None = None
    kind: JobKind | None = None
    limit: int = Field(default=50, ge=1, le=1000)


class ApproveBody(WireModel):
    """POST /images/:name/approve (the name is in the path)."""

    approved: bool = True


class ApproveParams(ApproveBody):
    """JSON-RPC `approve`."""

    image: str = Field(min_length=1)  #: chXX_pNNN_vN (with or without .png)


class BenchRequest(WireModel):
    """POST /bench, JSON-RPC `bench` (INFRA-04). The bar is defined for the defaults only."""

    resolution: Resolution = Resolution(width=512, height=512)
    steps: int = Field(default=20, ge=1, le=limits.MAX_STEPS)
    checkpoint: Name | None = None  #: default: PLASMA_CHECKPOINT


class BenchResultsParams(QueryParams):
    """GET /bench, JSON-RPC `bench_results`."""

    id: str | None = Field(default=None, max_length=MAX_ID)  #: one benchmark (b_...), or the recent ones
    limit: int = Field(default=10, ge=1, le=1000)


class JobLogParams(QueryParams):
    """GET /jobs/{id}/log."""

    lines: int = Field(default=100, ge=0, le=10000)
    offset: int | None = Field(default=None, ge=0)  #: following: bytes already read


class LogsParams(JobLogParams):
    """GET /logs, JSON-RPC `logs`."""

    #: A job or training id, `comfyui` (a managed ComfyUI), or none: the daemon's.
    job: str | None = Field(default=None, max_length=MAX_ID)


# --- the review board (issue 14): pages and their versions, images, variations, the loss log -------

THUMBNAIL_SIZES = (128, 256, 384)  #: px, the longer side; a few sizes keep the cache small


class PagesParams(QueryParams):
    """GET /pages, JSON-RPC `pages`: the pages and versions in the pipeline's generation logs."""

    chapter: int | None = Field(default=None, ge=1, le=999)  #: one chapter; none: all of them


class ThumbnailParams(QueryParams):
    """GET /images/:name/thumbnail, GET /jobs/:id/thumbnail."""

    size: int = 256

    @field_validator("size")
    @classmethod
    def _known_size(cls, value: int) -> int:
        if value not in THUMBNAIL_SIZES:
            raise ValueError(f"must be one of {', '.join(map(str, THUMBNAIL_SIZES))}")
        return value


class RerollRequest(WireModel):
    """POST /images/:name/reroll, JSON-RPC `reroll`: the version's settings with a new seed.

    Nothing to choose: the body is empty (the image's name is in the path)."""


class VaryRequest(WireModel):
    """POST /images/:name/vary, JSON-RPC `vary`: the version's settings and seed, another strength."""

    lora_strength: float | None = Field(
        default=None, ge=-limits.MAX_LORA_STRENGTH, le=limits.MAX_LORA_STRENGTH
    )
    controlnet_strength: float | None = None  #: within CTRL-02's range, checked with the request


class LossParams(QueryParams):
    """GET /loras/:id/loss."""

    after: int | None = Field(default=None, ge=0)  #: only the steps after this one


class RerollParams(RerollRequest):
    """JSON-RPC `reroll`: the version's name (`image`, chXX_pNNN_vN)."""

    image: str


class VaryParams(VaryRequest):
    """JSON-RPC `vary`: the version's name (`image`) and the body of POST /images/:name/vary."""

    image: str


class TrainingLossParams(LossParams):
    """JSON-RPC `training_loss`: the training's `id` and GET /loras/:id/loss's query."""

    id: str


class VersionView(ViewModel):
    """One version of a page: its generation-log entry as the board shows it. A field the entry
    lacks (an entry another tool wrote) is None."""

    name: str  #: chXX_pNNN_vN
    chapter: int
    page: int
    version: int
    image_file: str
    has_image: bool  #: the PNG is in raw/
    has_workflow: bool  #: the workflow JSON is beside it
    approved: bool
    seed: int | None = None
    lora_id: str | None = None
    lora_strength: float | None = None
    controlnet_strength: float | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    scheduler: str | None = None
    model: str | None = None  #: the checkpoint
    model_fingerprint: str | None = None  #: shown where the entry records one
    width: int | None = None
    height: int | None = None
    timestamp: str | None = None
    job_id: str | None = None
    workflow_template: str | None = None
    generation_backend: str | None = None
    prompt_file: str | None = None


class PageView(ViewModel):
    name: str  #: chXX_pNNN
    chapter: int
    page: int
    versions: list[VersionView]
    approved: list[str]  #: the names of its approved versions


class ChapterView(ViewModel):
    chapter: int
    name: str  #: ch-XX, the folder under output/
    pages: list[PageView] = []
    error: str | None = None  #: its generation log could not be read (nothing of it is listed)


class PagesView(ViewModel):
    chapters: list[ChapterView]


class LossPoint(ViewModel):
    step: int
    loss: float


class LossView(ViewModel):
    """A training's loss log: the trainer's running average at each step (kohya's avr_loss)."""

    training: str
    points: list[LossPoint]


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
    message = message.removeprefix("Value error, ")  # our own validators' words, as they are
    details = [{"field": ".".join(str(p) for p in p["loc"]), "message": p["msg"]} for p in problems]
    return invalid(loc, message, details if len(details) > 1 else None)


def dump(model: BaseModel) -> dict[str, Any]:
    """A model as the wire carries it (camelCase, JSON types)."""
    return model.model_dump(mode="json", by_alias=True)
