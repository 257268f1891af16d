"""Job states and kinds. Imports nothing from the project, so every module can use it."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"  #: stored, waiting for the worker (and the GPU lock)
    RUNNING = "running"  #: the worker holds the GPU lock for it
    SUCCEEDED = "succeeded"  #: finished; its outputs are written
    FAILED = "failed"  #: finished with an error, kept in `error`
    CANCELLED = "cancelled"  #: removed from the queue or interrupted on request
    INTERRUPTED = "interrupted"  #: a training that was running when the daemon died; its checkpoints are kept


FINISHED_STATES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.INTERRUPTED}
)
ACTIVE_STATES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


class JobKind(StrEnum):
    GENERATE = "generate"  #: one image through ComfyUI
    TRAIN = "train"  #: a LoRA training (kohya, or ComfyUI's own trainer)
