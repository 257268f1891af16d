"""Jobs: a job's view (what GET /jobs/:id answers), the queries that list and long-poll them, and a
job's workflow."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, RootModel

from plasmad.core.states import JobKind, JobStatus
from plasmad.core.wire.base import FullView, QueryParams


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


class JobList(RootModel[list[JobView]]):
    """Recent jobs, newest first."""


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


class ListJobsParams(QueryParams):
    status: JobStatus | None = None
    kind: JobKind | None = None
    limit: int = Field(default=50, ge=1, le=1000)


class Workflow(RootModel[dict[str, Any]]):
    """A ComfyUI graph in API format (node id -> {class_type, inputs}), exactly as sent."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 20}}}]
        }
    )
