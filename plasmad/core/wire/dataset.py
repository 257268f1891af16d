"""A dataset's regularisation set (DATA-03): POST /datasets/reg, JSON-RPC `dataset_reg`."""

from __future__ import annotations

from pydantic import Field, field_validator

from plasmad.core import limits
from plasmad.core.wire.base import Name, PathText, ViewModel, WireModel, not_the_root


class DatasetRegRequest(WireModel):
    """POST /datasets/reg, JSON-RPC `dataset_reg`: the regularisation set of a dataset (DATA-03)."""

    dataset_dir: PathText  #: absolute; the images go to `<dataset>-reg/1_<class>/`
    count: int = limits.REG_DEFAULT_IMAGES
    class_name: Name | None = None  #: default "character" (plasmad.dataset.REG_DEFAULT_CLASS)
    seed: int | None = Field(default=None, ge=0, le=limits.MAX_SEED)  #: item i gets seed + i; default 1000
    width: int = limits.DATASET_IMAGE_SIZE
    height: int = limits.DATASET_IMAGE_SIZE
    steps: int = Field(default=limits.DEFAULT_STEPS, ge=1, le=limits.MAX_STEPS)
    checkpoint: Name | None = None  #: the base checkpoint; default PLASMA_CHECKPOINT (never a LoRA)
    allow_small: bool = False  #: permit fewer than REG_MIN_IMAGES (tests, demos)

    check_dataset_dir = field_validator("dataset_dir")(not_the_root)


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
