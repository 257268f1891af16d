"""A generation's request: POST /jobs (JSON-RPC `submit`) and POST /pages (`generate_page`)."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, ConfigDict, Field, field_validator

from plasmad.core import limits
from plasmad.core.wire.base import MAX_CHAPTER, MAX_PAGE, Name, PathText, WireModel


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
