"""A version's settings, read back from its workflow file: where re-roll and vary start from.

The workflow JSON beside each image is the exact graph ComfyUI ran (PIPE-05), and the template its
log entry names says where each setting sits in it (the template's slots, the same map that filled
it). So a version can be made again from the pipeline's own files, whether or not this plasmad's
job store still has its job. The result is a generation request in wire spelling; it is validated
like any other (`Core.submit_generation`).

A posed page's pose and init images are read from the copies in ComfyUI's input/ that the graph
names (content-hash names, the same bytes as the artist's files), so the new entry records the
same image hashes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from plasmad.comfy.templates import Template
from plasmad.core.errors import ErrorCode, PlasmaError

#: Slots read back as they are, and their names in a generation request.
_PLAIN = {
    "prompt_text": "prompt",
    "negative_prompt": "negativePrompt",
    "seed": "seed",
    "checkpoint_name": "checkpoint",
    "steps": "steps",
    "cfg": "cfg",
    "sampler": "sampler",
    "scheduler": "scheduler",
    "lora_name": "loraId",
    "lora_strength": "loraStrength",
    "controlnet_name": "controlnet",
    "controlnet_strength": "controlnetStrength",
    "denoise": "denoise",
}
_INPUT_NAME_RE = re.compile(r"^[\w.-]+$")  #: a file directly in ComfyUI's input/, never a path


def template_name(entry: dict[str, Any], name: str) -> str:
    """The template a version was made with, from its log entry (`txt2img-lora.json`)."""
    value = entry.get("workflowTemplate")
    if not isinstance(value, str) or not value.endswith(".json"):
        raise PlasmaError(
            ErrorCode.CONFLICT,
            f"{name} has no workflowTemplate in its generation log entry: it was not made by plasmad, "
            "so its settings cannot be read back",
        )
    return value.removesuffix(".json")


def request_of(
    name: str, entry: dict[str, Any], graph: Any, template: Template, comfy_input: Path | None
) -> dict[str, Any]:
    """The generation request that makes version `name` again: chapter and page from its name,
    `promptFile` from its entry, everything else from its workflow through `template`'s slots."""
    if not isinstance(graph, dict):
        raise _mismatch(name, template, "it is not a JSON object")
    m = re.match(r"^ch(\d{2,3})_p(\d{3})_v\d+$", name)
    assert m is not None  # the caller validated the name
    request: dict[str, Any] = {"chapter": int(m.group(1)), "page": int(m.group(2))}
    for slot, field in _PLAIN.items():
        if slot in template.slots:
            request[field] = _read(graph, template, slot, name)
    if "width" in template.slots and "height" in template.slots:
        request["resolution"] = {
            "width": _read(graph, template, "width", name),
            "height": _read(graph, template, "height", name),
        }
    if "pose_image" in template.slots:
        if comfy_input is None:
            raise PlasmaError(ErrorCode.NOT_CONFIGURED, "COMFYUI_DIR is not set: a posed page needs it")
        pose = _input_file(graph, template, "pose_image", name, comfy_input)
        init = _input_file(graph, template, "init_image", name, comfy_input)
        request["poseImagePath"] = str(pose)
        if init != pose:
            request["initImagePath"] = str(init)
        # The preprocess templates take a reference panel; the others an OpenPose skeleton.
        request["poseIsSkeleton"] = "preprocess" not in template.name
    if isinstance(entry.get("promptFile"), str):
        request["promptFile"] = entry["promptFile"]
    return request


def _read(graph: dict[str, Any], template: Template, slot: str, name: str) -> Any:
    node_id, input_name = template.slots[slot][0]
    node = graph.get(node_id)
    expected = template.graph[node_id].get("class_type")
    if not isinstance(node, dict) or node.get("class_type") != expected:
        raise _mismatch(name, template, f"node {node_id} is not its {expected}")
    inputs = node.get("inputs")
    if not isinstance(inputs, dict) or input_name not in inputs:
        raise _mismatch(name, template, f"node {node_id} has no {input_name}")
    return inputs[input_name]


def _input_file(graph: dict[str, Any], template: Template, slot: str, name: str, comfy_input: Path) -> Path:
    value = _read(graph, template, slot, name)
    if not isinstance(value, str) or not _INPUT_NAME_RE.match(value) or value.startswith("."):
        raise _mismatch(name, template, f"its {slot.replace('_', ' ')} is not a file name: {value!r}")
    return comfy_input / value


def _mismatch(name: str, template: Template, why: str) -> PlasmaError:
    return PlasmaError(
        ErrorCode.CONFLICT,
        f"the workflow of {name} does not match the template {template.file_name} ({why}); "
        "its settings cannot be read back",
    )
