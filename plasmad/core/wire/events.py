"""The live events (GET /events): the JSON `data` of each Server-Sent Event."""

from __future__ import annotations

from typing import Literal

from pydantic import RootModel

from plasmad.core.wire.base import ViewModel
from plasmad.core.wire.errors import ErrorDetail


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
