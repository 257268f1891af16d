"""What ComfyUI offers, as last seen: KSampler's samplers and schedulers, and the node classes the
workflow templates use, each with its `/object_info` description.

Validation reads this, never ComfyUI itself, so a job can be queued while ComfyUI is away (down,
restarting, stopped for a training). The monitor (`plasmad.comfy.monitor`) refreshes it whenever
ComfyUI answers after being away and keeps it in the state dir, so a restarted plasmad knows it
before ComfyUI is back. Before plasmad has ever seen a ComfyUI, the samplers and schedulers are
those of the version we support, and node classes are unknown (neither refused nor promised).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_VERSION = "0.3.75"
# ComfyUI 0.3.75's comfy/samplers.py: SAMPLER_NAMES (KSAMPLER_NAMES + ddim, uni_pc, uni_pc_bh2)
# and SCHEDULER_NAMES, in its order (the order /object_info lists them in).
BUILTIN_SAMPLERS = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
    "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
    "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
    "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)  # fmt: skip
BUILTIN_SCHEDULERS = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
)  # fmt: skip


@dataclass(frozen=True)
class Catalogue:
    samplers: tuple[str, ...] = BUILTIN_SAMPLERS
    schedulers: tuple[str, ...] = BUILTIN_SCHEDULERS
    #: `/object_info` of each class asked for that ComfyUI has.
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: tuple[str, ...] = ()  #: classes asked for that ComfyUI lacked
    #: Where it comes from, for messages: "ComfyUI 0.3.75 at http://…, 2026-12-03T21:04Z", or
    #: "ComfyUI 0.3.75's built-in list" before any ComfyUI was seen.
    source: str = f"ComfyUI {SUPPORTED_VERSION}'s built-in list (no ComfyUI seen yet)"
    seen: bool = False  #: from a ComfyUI that answered (else the built-in defaults)

    def has_node(self, node_class: str) -> bool | None:
        """True / False as ComfyUI last said; None when it was never asked (unknown)."""
        if node_class in self.nodes:
            return True
        if node_class in self.missing:
            return False
        return None

    def node(self, node_class: str) -> dict[str, Any]:
        return dict(self.nodes.get(node_class, {}))

    def to_json(self) -> dict[str, Any]:
        return {
            "samplers": list(self.samplers),
            "schedulers": list(self.schedulers),
            "nodes": self.nodes,
            "missing": list(self.missing),
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Catalogue:
        """A catalogue kept in the state dir; the built-in one for anything unreadable in it."""
        samplers = [str(s) for s in data.get("samplers") or []]
        schedulers = [str(s) for s in data.get("schedulers") or []]
        nodes = data.get("nodes") if isinstance(data.get("nodes"), dict) else {}
        return cls(
            samplers=tuple(samplers) or BUILTIN_SAMPLERS,
            schedulers=tuple(schedulers) or BUILTIN_SCHEDULERS,
            nodes={str(k): v for k, v in (nodes or {}).items() if isinstance(v, dict)},
            missing=tuple(str(m) for m in data.get("missing") or []),
            source=str(data.get("source") or cls.source),
            seen=True,
        )

    @classmethod
    def from_object_info(cls, infos: dict[str, dict[str, Any]], source: str) -> Catalogue:
        """From ComfyUI's answers, one `/object_info/<class>` per class ({} for a class it lacks)."""
        ksampler = infos.get("KSampler", {})
        samplers = combo_choices(ksampler, "sampler_name")
        schedulers = combo_choices(ksampler, "scheduler")
        return cls(
            samplers=tuple(samplers) or BUILTIN_SAMPLERS,
            schedulers=tuple(schedulers) or BUILTIN_SCHEDULERS,
            nodes={k: v for k, v in infos.items() if v},
            missing=tuple(sorted(k for k, v in infos.items() if not v)),
            source=source,
            seen=True,
        )


def combo_choices(info: dict[str, Any], input_name: str) -> list[str]:
    """The values a combo input of a node's `/object_info` accepts (both spellings ComfyUI uses)."""
    spec = info.get("input", {}).get("required", {}).get(input_name)
    if not spec:
        return []
    choices = spec[0]
    if isinstance(choices, list):
        return [str(c) for c in choices]
    if choices == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):  # ["COMBO", {"options": […]}]
        return [str(c) for c in spec[1].get("options", [])]
    return []


def template_classes(templates_dir: Path) -> list[str]:
    """Every node class the workflow templates use (blocking: run it in a thread)."""
    classes: set[str] = set()
    for path in templates_dir.glob("*.json"):
        if path.name.endswith(".slots.json"):
            continue
        try:
            graph = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(graph, dict):
            classes.update(
                str(n["class_type"]) for n in graph.values() if isinstance(n, dict) and "class_type" in n
            )
    return sorted(classes | {"KSampler"})
