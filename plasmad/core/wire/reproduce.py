"""Reproductions and consistency checks (issue 12): the requests, and the record each keeps
(record.json), answered as it is."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from plasmad.core.jobs import StateModel
from plasmad.core.wire.base import WireModel
from plasmad.core.wire.generation import GenerateRequest

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


# --- the record: stored as record.json, answered as it is ------------------------------------------

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
