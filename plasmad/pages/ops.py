"""The pages' operations, for both APIs and the review board: list the pages and their versions;
a version's image, thumbnail and workflow; a sample job's image; re-roll and vary a version.

A version is named `chXX_pNNN_vN` (`.png` may follow) and nothing else: the name picks the file in
the chapter's raw/ folder, so no request can name a path. Reading is read-only; re-roll and vary
queue a new generation through `Core.submit_generation` (validated like any other request), which
lands as the page's next version.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from plasmad.comfy.templates import TemplateError
from plasmad.context import Core
from plasmad.core.errors import ErrorCode, PlasmaError, invalid, not_found
from plasmad.core.jobs import GenerationState
from plasmad.core.states import JobKind, JobStatus
from plasmad.core.store import Job
from plasmad.core.wire import (
    GenerateRequest,
    PagesParams,
    PagesView,
    RerollRequest,
    ThumbnailParams,
    VaryRequest,
    dump,
    parse,
)
from plasmad.generation import pipeline_files
from plasmad.pages import listing, settings
from plasmad.pages.thumbnails import FOLDER, thumbnail


def version_name(value: Any) -> str:
    """A version's name, checked: `chXX_pNNN_vN` (a `.png` after it is dropped); 400 otherwise."""
    name = value.removesuffix(".png") if isinstance(value, str) else ""
    if not pipeline_files.STEM_RE.match(name):
        raise invalid("image", f"{value!r} is not a page image name like ch01_p001_v1")
    return name


class PagesOps:
    def __init__(self, core: Core) -> None:
        self._core = core

    async def list(self, body: Any = None) -> dict[str, Any]:
        params = parse(PagesParams, body or {})
        pipeline = self._core.cfg.require_pipeline_dir()
        chapters = await asyncio.to_thread(listing.list_chapters, pipeline, params.chapter)
        return dump(PagesView(chapters=chapters))

    # --- reading a version ------------------------------------------------------------------------------

    def _raw(self, name: str) -> Path:
        m = pipeline_files.STEM_RE.match(name)
        assert m is not None
        return pipeline_files.raw_dir(self._core.cfg.require_pipeline_dir(), int(m.group(1)))

    async def image(self, value: Any) -> Path:
        """The full PNG of a version."""
        name = version_name(value)
        return await self._file(self._raw(name) / f"{name}.png", name)

    async def workflow(self, value: Any) -> dict[str, Any]:
        """The exact graph ComfyUI ran for a version (its workflow JSON)."""
        name = version_name(value)
        return await asyncio.to_thread(_read_workflow, self._raw(name) / f"{name}.workflow.json", name)

    async def thumbnail(self, value: Any, query: Any = None) -> Path:
        size = parse(ThumbnailParams, query or {}).size
        return await self._thumbnail(await self.image(value), size)

    async def _thumbnail(self, image: Path, size: int) -> Path:
        return await asyncio.to_thread(thumbnail, image, size, self._core.cfg.state_dir / FOLDER)

    async def _file(self, path: Path, what: str) -> Path:
        if not await asyncio.to_thread(path.is_file):
            raise not_found(f"image {what}")
        return path

    async def entry(self, name: str) -> dict[str, Any]:
        """A version's generation-log entry (the last one for its image)."""
        m = pipeline_files.STEM_RE.match(name)
        assert m is not None
        log_path = pipeline_files.chapter_dir(self._core.cfg.require_pipeline_dir(), int(m.group(1)))
        entries = await asyncio.to_thread(pipeline_files.read_log, log_path / pipeline_files.LOG_NAME)
        hits = [e for e in entries if isinstance(e, dict) and e.get("imageFile") == f"{name}.png"]
        if not hits:
            raise not_found(f"generation log entry for {name}.png")
        return dict(hits[-1])

    # --- a sample job's image (a training's samples are jobs without a page) ----------------------------

    async def job_image(self, job_id: Any) -> Path:
        job = await self._core.job(job_id, JobKind.GENERATE)
        outputs = GenerationState.model_validate(job.result).outputs if job.result else []
        if job.status != JobStatus.SUCCEEDED or not outputs:
            raise not_found(f"image of job {job.id} (it is {job.status.value})")
        return await self._file(Path(outputs[0]), f"of job {job.id}")

    async def job_thumbnail(self, job_id: Any, query: Any = None) -> Path:
        size = parse(ThumbnailParams, query or {}).size
        return await self._thumbnail(await self.job_image(job_id), size)

    # --- new versions -----------------------------------------------------------------------------------

    async def reroll(self, value: Any, body: Any = None) -> Job:
        """The version's settings with a new seed: the page's next version."""
        self._core.check_accepting()
        parse(RerollRequest, body or {})
        request = await self._request_of(version_name(value))
        request.pop("seed", None)  # drawn anew, and recorded, by the validation
        return await self._core.submit_generation(parse(GenerateRequest, request))

    async def vary(self, value: Any, body: Any = None) -> Job:
        """The version's settings and seed with another LoRA or ControlNet strength."""
        self._core.check_accepting()
        change = parse(VaryRequest, body if body is not None else {})
        if change.lora_strength is None and change.controlnet_strength is None:
            raise invalid("body", "give loraStrength or controlnetStrength (or both)")
        name = version_name(value)
        request = await self._request_of(name)
        if change.lora_strength is not None:
            if "loraId" not in request:
                raise invalid("loraStrength", f"{name} was made without a LoRA")
            request["loraStrength"] = change.lora_strength
        if change.controlnet_strength is not None:
            if "poseImagePath" not in request:
                raise invalid("controlnetStrength", f"{name} was made without ControlNet")
            request["controlnetStrength"] = change.controlnet_strength
        return await self._core.submit_generation(parse(GenerateRequest, request))

    async def _request_of(self, name: str) -> dict[str, Any]:
        entry = await self.entry(name)
        template_name = settings.template_name(entry, name)
        try:
            template = self._core.templates.get(template_name)
        except TemplateError:
            raise PlasmaError(
                ErrorCode.CONFLICT, f"{name} was made with {template_name}.json, which this plasmad lacks"
            ) from None
        graph = await self.workflow(name)
        comfy_dir = self._core.cfg.comfyui_dir
        return settings.request_of(name, entry, graph, template, comfy_dir / "input" if comfy_dir else None)


def _read_workflow(path: Path, name: str) -> dict[str, Any]:
    try:
        graph = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise not_found(f"workflow of {name}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlasmaError(ErrorCode.CONFLICT, f"{path.name} is not readable JSON: {exc}") from None
    if not isinstance(graph, dict):
        raise PlasmaError(ErrorCode.CONFLICT, f"{path.name} is not a JSON object")
    return graph
