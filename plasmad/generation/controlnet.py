"""The ControlNet OpenPose path (CTRL-01..03): its model file, its pose source, its templates, its records.

A request with `poseImagePath` runs one of four static templates (GEN-04: slots are filled, no
graph is assembled): with or without the LoRA, and with or without the OpenPose preprocessor node.

- The pose image is an OpenPose skeleton (the default): it goes to ControlNet as is.
- It is a reference panel (`poseIsSkeleton: false`): the `OpenposePreprocessor` node of the
  ComfyUI-ControlNet-Aux custom nodes turns it into a skeleton first. Only if ComfyUI has that node
  (`/object_info`); otherwise the request is refused, saying what to install.
- No LoRA: a `base` template without LoraLoader, as txt2img has (June and Draster have no LoRA in
  v2.0 but still need posed panels).

The size is the request's `resolution` (the page's), else the init image's (which defaults to
the pose image), fitted to the hardware limits (`limits.fit_size`). Both images are scaled and
cropped to it, centred, inside the graph (ComfyUI's `ImageScale`, crop "center"): the files copied
into ComfyUI's input/ stay the user's bytes, so a pose or init image of any size is usable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plasmad.comfy import inputs as comfy_inputs
from plasmad.comfy.inputs import SourceImage
from plasmad.comfy.templates import (
    IMG2IMG_CONTROLNET,
    IMG2IMG_CONTROLNET_BASE,
    IMG2IMG_CONTROLNET_BASE_PREPROCESS,
    IMG2IMG_CONTROLNET_PREPROCESS,
    Template,
)
from plasmad.core.errors import invalid

PREPROCESSOR_NODE = "OpenposePreprocessor"
PREPROCESSOR_PACK = "comfyui_controlnet_aux"
PREPROCESSOR_URL = "https://github.com/Fannovel16/comfyui_controlnet_aux"
# The inputs our preprocess templates set; an installed node lacking one would fail the job later.
PREPROCESSOR_INPUTS = ("image", "detect_hand", "detect_body", "detect_face", "resolution")
_TEMPLATES = {
    (True, False): IMG2IMG_CONTROLNET,
    (False, False): IMG2IMG_CONTROLNET_BASE,
    (True, True): IMG2IMG_CONTROLNET_PREPROCESS,
    (False, True): IMG2IMG_CONTROLNET_BASE_PREPROCESS,
}


def template_name(*, lora: bool, preprocess: bool) -> str:
    return _TEMPLATES[(lora, preprocess)]


def check_preprocessor(info: dict[str, Any]) -> None:
    """Refuse unless ComfyUI's `/object_info` answer says the preprocessor is installed, in a
    version that takes the inputs our templates set (else a clear 400 now, not a failed job later).
    """
    if not info:
        raise invalid(
            "poseIsSkeleton",
            f"a reference panel needs the {PREPROCESSOR_NODE} node, which this ComfyUI lacks: install "
            f"the {PREPROCESSOR_PACK} custom nodes (ComfyUI-ControlNet-Aux, {PREPROCESSOR_URL}) and "
            "restart ComfyUI, or send an OpenPose skeleton image",
        )
    spec = info.get("input", {})
    known = {*spec.get("required", {}), *spec.get("optional", {})}
    if missing := [name for name in PREPROCESSOR_INPUTS if name not in known]:
        raise invalid(
            "poseIsSkeleton",
            f"the installed {PREPROCESSOR_NODE} has no input {', '.join(missing)}: "
            f"update the {PREPROCESSOR_PACK} custom nodes",
        )


@dataclass(frozen=True)
class ControlNetPlan:
    """The validated ControlNet part of a generation request."""

    model: str  #: file name in COMFYUI_DIR/models/controlnet: one model per job (CTRL limit)
    strength: float
    denoise: float | None  #: None: the template's own value
    preprocess: bool  #: run the OpenPose preprocessor on a reference panel
    pose: SourceImage
    init: SourceImage  #: the pose image itself unless initImagePath was given
    width: int  #: the generation's size: both images are scaled and centre-cropped to it in the graph
    height: int

    def slots(self) -> dict[str, Any]:
        slots: dict[str, Any] = {
            "width": self.width,
            "height": self.height,
            "pose_image": self.pose.name,
            "init_image": self.init.name,
            "controlnet_name": self.model,
            "controlnet_strength": self.strength,
        }
        if self.denoise is not None:
            slots["denoise"] = self.denoise
        return slots

    def images(self) -> list[SourceImage]:
        return [self.pose] if self.init.name == self.pose.name else [self.pose, self.init]


def stage_images(plan: ControlNetPlan, comfyui_dir: Path) -> None:
    """CTRL-01: copy the images into COMFYUI_DIR/input/ under their content-hash names (blocking)."""
    for image in plan.images():
        comfy_inputs.stage(image, comfyui_dir / "input")


def job_state(plan: ControlNetPlan, template: Template, graph: dict[str, Any]) -> dict[str, Any]:
    """The job's `GenerationState` fields for its generation log entry, read from the graph that
    will be sent."""

    def sent(slot: str) -> Any:
        node_id, input_name = template.slots[slot][0]
        return graph[node_id]["inputs"][input_name]

    return {
        "controlnet_strength": sent("controlnet_strength"),
        "width": plan.width,
        "height": plan.height,
        "log_extra": {
            "controlnetModel": plan.model,
            "poseImage": plan.pose.path,
            "poseImageHash": plan.pose.sha256,
            "poseIsSkeleton": not plan.preprocess,
            "initImage": plan.init.path,
            "initImageHash": plan.init.sha256,
            "denoise": sent("denoise"),
        },
    }
