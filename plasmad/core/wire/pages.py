"""The pipeline's pages: a version's generation-log entry and its approval, and the review board
(issue 14): the pages and their versions, their thumbnails, new versions of one."""

from __future__ import annotations

from pydantic import Field, field_validator

from plasmad.core import limits
from plasmad.core.wire.base import OpenView, QueryParams, ViewModel, WireModel


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


class ApproveBody(WireModel):
    """POST /images/:name/approve (the name is in the path)."""

    approved: bool = True


class ApproveParams(ApproveBody):
    """JSON-RPC `approve`."""

    image: str = Field(min_length=1)  #: chXX_pNNN_vN (with or without .png)


# --- the review board (issue 14): pages and their versions, images, variations -----------------------

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


class RerollParams(RerollRequest):
    """JSON-RPC `reroll`: the version's name (`image`, chXX_pNNN_vN)."""

    image: str


class VaryParams(VaryRequest):
    """JSON-RPC `vary`: the version's name (`image`) and the body of POST /images/:name/vary."""

    image: str


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
