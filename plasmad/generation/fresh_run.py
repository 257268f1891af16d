"""Renders ComfyUI really runs: no node served from its cache, no model kept from an older file.

ComfyUI caches node outputs by their inputs, and keeps loaded models by file name. So an identical
graph sent again comes back from the cache at once (no sampler step runs), and a LoRA or
checkpoint replaced under the same name keeps being used in its old version. Two consequences:

- A reproduction or a consistency run (a job whose destination says `fresh`) clears ComfyUI's
  cache first (`POST /free {"free_memory": true}`, which also unloads the models, so the files on
  disk are read again), and is checked after: ComfyUI's history must list no cached node
  (`execution_cached`), and the sampler must have reported its steps. Otherwise the job fails: a
  comparison with a cached picture proves nothing.
- Any generation whose checkpoint, LoRA or ControlNet file changed since ComfyUI last rendered
  with it clears the cache first too, so the fingerprint recorded is of the file really used.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from plasmad.context import Core
from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.core.jobs import GenerationState
from plasmad.generation.fingerprints import model_paths

log = logging.getLogger(__name__)

#: After POST /free: ComfyUI clears its cache in its worker thread when it next looks at its queue,
#: which a prompt posted at once can beat. `check` tells if it did; this pause makes it not happen.
SETTLE_S = 0.5


def wanted(state: GenerationState) -> bool:
    return state.destination is not None and state.destination.fresh


async def before_render(core: Core, state: GenerationState, job_id: str) -> None:
    """Clear ComfyUI's cache if this render must be fresh or a model file changed under its name."""
    changed = await core.hasher.changed_since_render(model_paths(state.files))
    if changed:
        log.info(
            "job %s: %s changed since ComfyUI last rendered with it; clearing ComfyUI's cache",
            job_id, ", ".join(p.name for p in changed),
        )  # fmt: skip
    if changed or wanted(state):
        await core.comfy.free()
        await asyncio.sleep(SETTLE_S)


def cached_nodes(history: dict[str, Any]) -> list[str] | None:
    """The nodes ComfyUI served from its cache in this run; None if its history does not say."""
    found: list[str] | None = None
    for item in history.get("status", {}).get("messages", []) or []:
        if isinstance(item, list) and len(item) == 2 and item[0] == "execution_cached":
            found = [*(found or []), *map(str, (item[1] or {}).get("nodes", []))]
    return found


async def check(core: Core, prompt_id: str, timing: dict[str, Any] | None) -> None:
    """Fail the job unless ComfyUI ran every node of the prompt (a fresh render)."""
    cached = cached_nodes(await core.comfy.history(prompt_id) or {})
    if cached:
        raise PlasmaError(
            ErrorCode.COMFYUI_REJECTED,
            f"ComfyUI served node(s) {', '.join(cached)} from its cache although it was cleared: "
            "this is not a fresh render; run it again",
            details={"cachedNodes": cached},
        )
    if cached is None and not (timing or {}).get("steps"):
        # A ComfyUI whose history does not list cached nodes: the sampler's progress is the proof.
        raise PlasmaError(
            ErrorCode.COMFYUI_REJECTED,
            "ComfyUI reported no sampler step: the render may have come from its cache; run it again",
        )
