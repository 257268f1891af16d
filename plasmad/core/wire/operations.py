"""Operating plasmad: health, doctor, the benchmark (INFRA-04), the logs, the model listing, shutdown
and the OpenAPI document itself."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, RootModel

from plasmad.core import limits
from plasmad.core.wire.base import MAX_ID, Name, OpenView, QueryParams, ViewModel, WireModel
from plasmad.core.wire.generation import Resolution
from plasmad.core.wire.jobs import JobView


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


# --- the benchmark (INFRA-04) ---------------------------------------------------------------------


class BenchRequest(WireModel):
    """POST /bench, JSON-RPC `bench` (INFRA-04). The bar is defined for the defaults only."""

    resolution: Resolution = Resolution(width=limits.BENCH_WIDTH, height=limits.BENCH_HEIGHT)
    steps: int = Field(default=limits.BENCH_STEPS, ge=1, le=limits.MAX_STEPS)
    checkpoint: Name | None = None  #: default: PLASMA_CHECKPOINT


class BenchResultsParams(QueryParams):
    """GET /bench, JSON-RPC `bench_results`."""

    id: str | None = Field(default=None, max_length=MAX_ID)  #: one benchmark (b_...), or the recent ones
    limit: int = Field(default=10, ge=1, le=1000)


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


# --- logs ------------------------------------------------------------------------------------------


class JobLogParams(QueryParams):
    """GET /jobs/{id}/log."""

    lines: int = Field(default=100, ge=0, le=10000)
    offset: int | None = Field(default=None, ge=0)  #: following: bytes already read


class LogsParams(JobLogParams):
    """GET /logs, JSON-RPC `logs`."""

    #: A job or training id, `comfyui` (a managed ComfyUI), or none: the daemon's.
    job: str | None = Field(default=None, max_length=MAX_ID)


class LogsView(ViewModel):
    source: Literal["daemon", "comfyui", "job", "training"]
    job: str | None
    path: str
    exists: bool
    lines: list[str]
    offset: int  #: bytes read so far: pass it back to follow the log
    rotated: bool  #: the file shrank since `offset` (rotated): read from its start
    note: str | None = None


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


# --- the daemon itself ---------------------------------------------------------------------------


class ShutdownView(ViewModel):
    stopping: bool


class OpenApiDocument(RootModel[dict[str, Any]]):
    """This document."""
