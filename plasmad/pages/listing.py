"""The chapters, pages and versions the pipeline's generation logs record (blocking: call it
through asyncio.to_thread).

The logs are the truth, as for the pipeline's later stages: an image in raw/ without an entry is
not listed, and an entry whose image is gone is listed with `hasImage: false`. Entries other tools
wrote keep whatever fields they have; a value of the wrong type shows as absent rather than
failing the listing. A chapter whose log cannot be read is listed with the reason, alone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from plasmad.core.errors import PlasmaError
from plasmad.core.wire import ChapterView, PageView, VersionView
from plasmad.generation import pipeline_files

CHAPTER_DIR_RE = re.compile(r"^ch-(\d{2,3})$")


def list_chapters(pipeline: Path, only: int | None = None) -> list[ChapterView]:
    """Every chapter folder under output/ that has a generation log, in order."""
    output = pipeline / "output"
    try:
        names = sorted(os.listdir(output))
    except FileNotFoundError:
        return []
    chapters = []
    for name in names:
        m = CHAPTER_DIR_RE.match(name)
        if m is None or (only is not None and int(m.group(1)) != only):
            continue
        if (output / name / pipeline_files.LOG_NAME).is_file():
            chapters.append(read_chapter(pipeline, int(m.group(1)), name))
    return sorted(chapters, key=lambda c: c.chapter)


def read_chapter(pipeline: Path, chapter: int, folder: str) -> ChapterView:
    log_path = pipeline / "output" / folder / pipeline_files.LOG_NAME
    try:
        entries = pipeline_files.read_log(log_path)
    except PlasmaError as exc:
        return ChapterView(chapter=chapter, name=folder, error=exc.message)
    raw = log_path.parent / "raw"
    try:
        on_disk = set(os.listdir(raw))
    except OSError:
        on_disk = set()
    latest: dict[str, dict[str, Any]] = {}
    for entry in entries:
        image = entry.get("imageFile") if isinstance(entry, dict) else None
        if isinstance(image, str) and pipeline_files.STEM_RE.match(image.removesuffix(".png")):
            latest[image.removesuffix(".png")] = entry  # a later entry for the same image wins
    pages: dict[int, list[VersionView]] = {}
    for stem, entry in latest.items():
        view = version_view(stem, entry, on_disk)
        if view.chapter == chapter:  # an entry for another chapter's image is not this chapter's
            pages.setdefault(view.page, []).append(view)
    return ChapterView(
        chapter=chapter,
        name=folder,
        pages=[_page(chapter, number, versions) for number, versions in sorted(pages.items())],
    )


def _page(chapter: int, number: int, versions: list[VersionView]) -> PageView:
    versions.sort(key=lambda v: v.version)
    return PageView(
        name=f"ch{chapter:02d}_p{number:03d}",
        chapter=chapter,
        page=number,
        versions=versions,
        approved=[v.name for v in versions if v.approved],
    )


def version_view(stem: str, entry: dict[str, Any], on_disk: set[str]) -> VersionView:
    m = pipeline_files.STEM_RE.match(stem)
    assert m is not None
    return VersionView(
        name=stem,
        chapter=int(m.group(1)),
        page=int(m.group(2)),
        version=int(m.group(3)),
        image_file=f"{stem}.png",
        has_image=f"{stem}.png" in on_disk,
        has_workflow=f"{stem}.workflow.json" in on_disk,
        approved=entry.get("approved") is True,
        seed=_of(entry, "seed", int),
        lora_id=_of(entry, "loraId", str),
        lora_strength=_number(entry, "loraStrength"),
        controlnet_strength=_number(entry, "controlnetStrength"),
        steps=_of(entry, "steps", int),
        cfg=_number(entry, "cfg"),
        sampler=_of(entry, "sampler", str),
        scheduler=_of(entry, "scheduler", str),
        model=_of(entry, "model", str),
        model_fingerprint=_of(entry, "modelFingerprint", str),
        width=_of(entry, "width", int),
        height=_of(entry, "height", int),
        timestamp=_of(entry, "timestamp", str),
        job_id=_of(entry, "jobId", str),
        workflow_template=_of(entry, "workflowTemplate", str),
        generation_backend=_of(entry, "generationBackend", str),
        prompt_file=_of(entry, "promptFile", str),
    )


def _of(entry: dict[str, Any], key: str, kind: type[Any]) -> Any:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        return None
    return value


def _number(entry: dict[str, Any], key: str) -> float | None:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
