"""Wire models of the answers other than a job's or a training's (those are in `wire`), of the
error body, and of the live events: what `GET /openapi.json` describes and the daemon builds its
answers with.

The operations build their answers as dicts and pass them through `checked`, which validates them
against these models and gives back exactly the keys they had: a key the model does not know is a
bug (ValidationError, a 500 the tests see), and a key that is sometimes absent stays absent (the
model gives it a default, so the spec does not call it required). Answers that carry records other
programs or older versions wrote (a generation-log entry, a benchmark record) allow more keys.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, RootModel

from plasmad.core.errors import ErrorCode
from plasmad.core.jobs import StateModel
from plasmad.core.wire import JobView, TrainingView, ViewModel

V = TypeVar("V", bound=BaseModel)


def checked(model: type[V], data: Any) -> Any:
    """`data` (an answer, camelCase) validated against `model`, as JSON with the keys it had."""
    return model.model_validate(data).model_dump(mode="json", by_alias=True, exclude_unset=True)


class OpenView(ViewModel):
    """A record that may carry keys written by another program or an older plasmad."""

    model_config = ConfigDict(extra="allow")


# --- errors ----------------------------------------------------------------------------------------


class ErrorDetail(ViewModel):
    code: ErrorCode = Field(description="stable code, shared by the HTTP and the JSON-RPC API")
    name: str = Field(json_schema_extra={"enum": [c.label for c in ErrorCode]})
    message: str
    field: str | None = None  #: the request field at fault (`resolution.width`)
    details: Any = None  #: more, e.g. the valid choices: `{"choices": [...]}`


class ErrorBody(ViewModel):
    """Every refusal and failure of the HTTP API (`error.data` of a JSON-RPC error)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": 1001,
                        "name": "invalid_input",
                        "field": "resolution.width",
                        "message": "resolution.width: 1024 is over the hardware limit of 512 "
                        "(max 512x768 on an M1 Pro 16 GB)",
                    }
                }
            ]
        }
    )

    error: ErrorDetail


# --- jobs --------------------------------------------------------------------------------------------


class JobList(RootModel[list[JobView]]):
    """Recent jobs, newest first."""


class Workflow(RootModel[dict[str, Any]]):
    """A ComfyUI graph in API format (node id -> {class_type, inputs}), exactly as sent."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 20}}}]
        }
    )


class LogEntry(OpenView):
    """A page's entry in `output/ch-XX/generation-log.json` (PIPE-04); entries other tools wrote
    keep their own keys."""

    image_file: str | None = None
    prompt_file: str | None = None
    prompt_hash: str | None = None
    model: str | None = None
    timestamp: str | None = None
    version: int | None = None
    approved: bool | None = None
    generation_backend: str | None = None
    seed: int | None = None
    sampler: str | None = None
    scheduler: str | None = None
    steps: int | None = None
    cfg: float | None = None
    lora_id: str | None = None
    lora_strength: float | None = None
    controlnet_strength: float | None = None
    workflow_template: str | None = None
    width: int | None = None
    height: int | None = None
    workflow_file: str | None = None
    job_id: str | None = None


class RegJob(ViewModel):
    id: str
    index: int
    image: str
    new: bool  #: queued by this request (false: it was queued already)


class RegView(ViewModel):
    """The regularisation set of a dataset, as queued (DATA-03)."""

    dataset_dir: str
    reg_dir: str
    class_name: str
    count: int
    seed: int
    existing: int  #: images already there
    queued: list[str]  #: jobs queued now
    already_queued: list[str]
    jobs: list[RegJob]


# --- operating it ------------------------------------------------------------------------------------


class Device(ViewModel):
    name: str | None = None
    type: str | None = None  #: cpu | cuda | mps


class ProcessInfo(ViewModel):
    """The ComfyUI plasmad runs itself (COMFYUI_MANAGED=1), or `{"managed": false}`."""

    managed: bool
    state: str | None = None
    pid: int | None = None
    restarts: int | None = None
    restart_delay_s: float | None = None
    last_exit: int | None = None
    last_exit_reason: str | None = None
    last_exit_at: str | None = None
    started_at: str | None = None
    paused_for: str | None = None  #: stopped on purpose: what for (a kohya training)
    error: str | None = None
    argv: list[str] | None = None
    log: str | None = None


class ComfyInfo(ViewModel):
    url: str
    version: str | None = None
    pytorch: str | None = None
    devices: list[Device] | None = None
    argv: list[str] | None = None
    fp32_vae: bool | None = None  #: GEN-05: the VAE's precision is ComfyUI's launch flag
    force_fp16: bool | None = None
    error: str | None = None  #: why ComfyUI did not answer
    process: ProcessInfo
    # The monitor's view (plasmad.comfy.monitor): whether it answers, since when, and what it offered.
    answering: bool | None = None
    since: str | None = None  #: answering (or not) since then
    since_clock: str | None = None  #: the same, as HH:MM for people
    checked_seconds_ago: float | None = None  #: the last probe
    last_seen: str | None = None  #: when ComfyUI last answered
    catalogue: str | None = None  #: where the samplers and nodes a request is judged by come from


class UnetDtypeView(ViewModel):
    """GEN-05's UNet precision: the setting, what it gives here, and why."""

    setting: str  #: PLASMA_UNET_DTYPE: auto, fp16, fp32...
    value: str  #: what the graph gets
    why: str


class GpuView(ViewModel):
    held_by: str | None  #: the job that holds the GPU lock


class QueueView(ViewModel):
    queued: int
    running: str | None


class BenchRecord(OpenView):
    """A benchmark (INFRA-04): queued (`event: started`), then its result."""

    event: Literal["started", "result"]
    id: str
    job_id: str
    queued_at: str
    width: int
    height: int
    steps: int
    sampler: str | None = None
    scheduler: str | None = None
    checkpoint: str | None = None
    seed: int | None = None
    bar_seconds: float | None = None
    bar_applies: bool | None = None
    note: str | None = None
    status: str | None = None
    at: str | None = None
    error: str | None = None
    seconds_per_image: float | None = None
    comfyui_seconds: float | None = None
    it_per_sec: float | None = None
    passed: bool | None = None
    outputs: list[str] | None = None
    versions: dict[str, str | None] | None = None
    host: dict[str, str] | None = None
    unet_dtype: str | None = None
    device: Device | None = None
    comfyui_args: list[str] | None = None
    comfyui_error: str | None = None
    job: JobView | None = None  #: in the answer to POST /bench


class BenchResults(ViewModel):
    last: BenchRecord | None
    results: list[BenchRecord]  #: newest first
    running: list[BenchRecord]


class BenchResultsAnswer(RootModel[BenchResults | BenchRecord]):
    """GET /bench: the recent results, or (`?id=`) one benchmark."""


class HealthView(ViewModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "comfyui": True,
                    "mps": True,
                    "comfyuiInfo": {
                        "url": "http://127.0.0.1:8188",
                        "version": "0.3.75",
                        "fp32Vae": True,
                        "process": {"managed": False},
                    },
                    "unetDtype": {"setting": "auto", "value": "fp16", "why": "ComfyUI runs on mps"},
                    "gpu": {"heldBy": None},
                    "queue": {"queued": 0, "running": None},
                    "accepting": True,
                    "warnings": [],
                    "bench": None,
                }
            ]
        }
    )

    status: Literal["ok"]  #: plasmad answers; `comfyui` says whether ComfyUI does
    comfyui: bool
    mps: bool  #: ComfyUI reports an Apple GPU
    comfyui_info: ComfyInfo
    unet_dtype: UnetDtypeView
    gpu: GpuView
    queue: QueueView
    accepting: bool  #: false while plasmad is stopping
    warnings: list[str]
    bench: BenchRecord | None  #: the last benchmark's result


class DoctorCheck(ViewModel):
    id: str
    requirement: str
    title: str
    status: Literal["ok", "warn", "fail"]
    detail: str
    fix: str | None


class DoctorView(ViewModel):
    ok: bool  #: no check failed
    counts: dict[str, int]  #: ok, warn, fail
    plasmad: str  #: its version
    checks: list[DoctorCheck]


class LogsView(ViewModel):
    source: Literal["daemon", "comfyui", "job", "training"]
    job: str | None
    path: str
    exists: bool
    lines: list[str]
    offset: int  #: bytes read so far: pass it back to follow the log
    rotated: bool  #: the file shrank since `offset` (rotated): read from its start
    note: str | None = None


class ShutdownView(ViewModel):
    stopping: bool


class OpenApiDocument(RootModel[dict[str, Any]]):
    """This document."""


# --- trainings ---------------------------------------------------------------------------------------


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


# --- live events (GET /events) -------------------------------------------------------------------------


class EventBase(ViewModel):
    id: str  #: `<boot>-<n>`: send it back as Last-Event-ID to miss nothing
    type: str
    at: str


class JobEvent(EventBase):
    """job.queued / started / progress / succeeded / failed / cancelled."""

    type: Literal["job.queued", "job.started", "job.progress", "job.succeeded", "job.failed", "job.cancelled"]
    job: str
    kind: str  #: generate | train
    attempt: int | None = None  #: job.started
    step: int | None = None  #: job.progress
    total: int | None = None
    status: str | None = None  #: the ends
    error: ErrorDetail | None = None  #: job.failed, job.cancelled


class TrainingProgressEvent(EventBase):
    type: Literal["training.progress"]
    training: str
    step: int
    total: int
    loss: float | None
    sec_per_step: float | None
    eta_seconds: float | None


class TrainingCheckpointEvent(EventBase):
    type: Literal["training.checkpoint"]
    training: str
    step: int | None  #: null: the final file
    file: str
    path: str


class ComfyEvent(EventBase):
    """comfyui.up / comfyui.down: ComfyUI started or stopped answering (plasmad.comfy.monitor)."""

    type: Literal["comfyui.up", "comfyui.down"]
    url: str
    version: str | None = None  #: comfyui.up
    reason: str | None = None  #: comfyui.down: why it is taken as away


class PlasmaEvent(RootModel[JobEvent | TrainingProgressEvent | TrainingCheckpointEvent | ComfyEvent]):
    """The JSON `data` of one Server-Sent Event; the SSE `event` field is its `type`."""


# --- reproductions and consistency checks (issue 12): stored as record.json, answered as it is -----

Status = Literal["same", "changed", "missing", "unrecorded"]


class FileCheck(StateModel):
    """One fingerprinted file of a page, as it is now."""

    role: str
    file: str
    path: str | None = None  #: where it is now (None: not found)
    recorded: str | None = None  #: the SHA-256 the page's log entry holds
    now: str | None = None  #: the SHA-256 of the file now
    status: Status


class RunResult(StateModel):
    """One run, compared with the reference (the page; in a consistency check, run 1)."""

    run: int
    job: str
    status: str  #: the job's: succeeded, failed, cancelled
    image: str | None = None
    identical: bool | None = None  #: every pixel the same
    max_diff: int | None = None  #: the largest difference of one channel of one pixel, 0-255
    ssim: float | None = None  #: structural similarity, 1.0 = the same picture
    note: str | None = None  #: why it was not compared (the job failed, the size differs)
    sampler_steps: int | None = None  #: the steps ComfyUI reported: proof the sampler ran


class Record(StateModel):
    id: str
    kind: Literal["reproduce", "consistency"]
    state: Literal["running", "done"] = "running"
    folder: str
    jobs: list[str]
    runs: int
    created_at: str
    # A reproduction
    page: str | None = None  #: chXX_pNNN_vN
    original: str | None = None  #: the page's image
    workflow: str | None = None  #: the page's stored graph, which each run renders as it is
    force: bool = False
    files: list[FileCheck] = Field(default_factory=list)
    # A consistency check
    request: dict[str, Any] | None = None  #: the generation, as validated (seed filled in)
    seed: int | None = None
    crop: dict[str, int] | None = None
    # Once every run has ended
    results: list[RunResult] = Field(default_factory=list)
    matrix: list[list[float | None]] | None = None  #: SSIM of every run against every run
    identical: bool | None = None  #: every run pixel-identical to the reference
    min_ssim: float | None = None
    sheet: str | None = None


class ReproductionView(Record):
    """GET /reproductions/:id (and the answer of starting one): the record, and how far its runs are."""

    done: int  #: runs ended
    total: int
