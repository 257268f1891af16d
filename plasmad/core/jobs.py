"""What a generation job carries between the side that queues it and the worker that runs it.

A job row stores its request (`GenerateRequest`, as validated: seed and checkpoint filled in) and
its state (`GenerationState`) as JSON. Whoever queues a generation writes a `GenerationState`;
the worker reads it back as one, adds what it learns (the reserved page name, the timing, the
files written) and stores it again. Several features queue generations (a page, a reg image, a
training's samples, a benchmark) and read their results, so the model lives here, below them all.
A training's own state is `plasmad.training.state.TrainingState`: only the training reads it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class StateModel(BaseModel):
    """A job's stored state: camelCase JSON (what the wire shows as `result`), read back as a model.

    Unknown keys are ignored, so a row written by an older plasmad still reads."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class Destination(StateModel):
    """A file a generation is written to instead of a page (a regularisation image).

    Checked by the feature that queues it; the worker creates the caption, then the image, each
    only where nothing is, so a finished item is never written twice and nothing is replaced."""

    kind: str  #: what it is, for people ("regImage")
    image: str  #: absolute path of the PNG
    caption: str | None = None  #: absolute path of a caption file written first
    caption_text: str | None = None
    details: dict[str, Any] = {}  #: what the feature wants to show about it (dataset, index, seed)
    #: Clear ComfyUI's cache before the render and check after it that everything ran: a
    #: reproduction or a consistency run compares renders, and one served from the cache proves nothing.
    fresh: bool = False


# --- fingerprints (issue 12) ---------------------------------------------------------------------


class FingerprintedFile(StateModel):
    """A file the graph names whose SHA-256 goes into the image's log entry and PNG
    (plasmad.generation.fingerprints): found when the job is queued, hashed by the time it publishes."""

    role: str  #: checkpoint | lora | controlnet | poseImage | initImage
    node: str  #: the graph node whose input names it
    input: str
    file: str  #: the name as the graph has it (relative to its ComfyUI folder)
    path: str  #: where it was found when the job was queued


# --------------------------------------------------------------------------------------------------


class Attempt(StateModel):
    """One run of a job in ComfyUI that ComfyUI did not finish (it went away, restarted, hung)."""

    at: str  #: when it ended
    reason: str  #: what happened, for people
    prompt_id: str | None = None


class GenerationState(StateModel):
    """`job.result` of a generation job."""

    template: str  #: the workflow template's name (templates/<name>.json)
    graph: dict[str, Any]  #: the exact graph sent to ComfyUI
    width: int | None = None
    height: int | None = None
    destination: Destination | None = None  #: absent: a page (chapter + page) or state/images/<id>.png
    controlnet_strength: float | None = None
    log_extra: dict[str, Any] = {}  #: more fields for the page's generation-log entry (ControlNet's)
    reserved: str | None = None  #: the page name taken for it (chXX_pNNN_vN): a retry reuses it
    timing: dict[str, Any] | None = None  #: the sampler's rate (plasmad.generation.timing)
    outputs: list[str] = []  #: the files written
    comfy_image: str | None = None  #: the image's name in ComfyUI's output folder
    files: list[FingerprintedFile] = []  #: hashed while the job waits and renders (issue 12)
    fingerprints: dict[str, Any] | None = None  #: their hashes, as the log entry and the PNG carry them
    #: The UNet's precision in the graph, and why (PLASMA_UNET_DTYPE; `auto` follows the device).
    unet_dtype: str | None = None
    unet_dtype_why: str | None = None
    #: `auto` before any ComfyUI was seen: decided again when the job starts.
    unet_dtype_pending: bool = False
    #: The runs ComfyUI did not finish; the job fails after MAX_ATTEMPTS of them.
    attempts: list[Attempt] = []
    #: A managed ComfyUI's log size when the prompt was sent: what it wrote after is this job's.
    comfy_log_offset: int | None = None
