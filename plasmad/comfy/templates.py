"""Workflow templates (GEN-04): ComfyUI API-format graphs as "Save (API)" exports them, slot-filled.

Each `templates/<name>.json` is left exactly as exported (and runs as stored); a sidecar
`<name>.slots.json` maps slot names to the node inputs they set: `{"seed": [["7", "seed"]]}`. The
daemon only fills slots; it never assembles a graph. A slot the caller fills that the template
lacks is a bug in the template pairing, so it fails loudly rather than being dropped.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TXT2IMG_LORA = "txt2img-lora"
TXT2IMG_BASE = "txt2img-base"
IMG2IMG_CONTROLNET = "img2img-lora-controlnet"
# The ControlNet variants (generation.controlnet): without the LoRA, and with the OpenPose preprocessor.
IMG2IMG_CONTROLNET_BASE = "img2img-base-controlnet"
IMG2IMG_CONTROLNET_PREPROCESS = "img2img-lora-controlnet-preprocess"
IMG2IMG_CONTROLNET_BASE_PREPROCESS = "img2img-base-controlnet-preprocess"
ALL_TEMPLATES = (
    TXT2IMG_LORA,
    TXT2IMG_BASE,
    IMG2IMG_CONTROLNET,
    IMG2IMG_CONTROLNET_BASE,
    IMG2IMG_CONTROLNET_PREPROCESS,
    IMG2IMG_CONTROLNET_BASE_PREPROCESS,
)


class TemplateError(Exception):
    pass


@dataclass(frozen=True)
class Template:
    name: str
    graph: dict[str, Any]
    slots: dict[str, list[tuple[str, str]]]

    @property
    def file_name(self) -> str:
        return f"{self.name}.json"

    def fill(self, values: dict[str, Any]) -> dict[str, Any]:
        """A copy of the graph with `values` in their slots."""
        graph = copy.deepcopy(self.graph)
        for slot, value in values.items():
            targets = self.slots.get(slot)
            if not targets:
                raise TemplateError(f"template {self.name} has no slot {slot!r}")
            for node_id, input_name in targets:
                graph[node_id]["inputs"][input_name] = value
        return graph

    def node_of(self, slot: str) -> str:
        return self.slots[slot][0][0]


def load_template(templates_dir: Path, name: str) -> Template:
    graph_path = templates_dir / f"{name}.json"
    slots_path = templates_dir / f"{name}.slots.json"
    try:
        graph = json.loads(graph_path.read_text(encoding="utf-8"))
        raw_slots = json.loads(slots_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TemplateError(f"cannot load template {name}: {exc}") from exc
    slots = {slot: [(str(n), str(i)) for n, i in targets] for slot, targets in raw_slots.items()}
    for slot, targets in slots.items():
        for node_id, input_name in targets:
            if input_name not in graph.get(node_id, {}).get("inputs", {}):
                raise TemplateError(
                    f"{slots_path.name}: slot {slot} points at missing {node_id}.{input_name}"
                )
    return Template(name=name, graph=graph, slots=slots)


class TemplateSet:
    """All templates, loaded once at startup so a broken template stops the daemon, not a job."""

    def __init__(self, templates_dir: Path, names: tuple[str, ...] = ALL_TEMPLATES) -> None:
        self.dir = templates_dir
        self._templates = {
            n: load_template(templates_dir, n) for n in names if (templates_dir / f"{n}.json").exists()
        }
        if TXT2IMG_LORA not in self._templates:
            raise TemplateError(f"{templates_dir} has no {TXT2IMG_LORA}.json")

    def get(self, name: str) -> Template:
        try:
            return self._templates[name]
        except KeyError:
            raise TemplateError(f"no template {name} in {self.dir}") from None

    def has(self, name: str) -> bool:
        return name in self._templates
