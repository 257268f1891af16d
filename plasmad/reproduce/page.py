"""A page as the pipeline's files keep it, and its fingerprinted files checked against the disk now.

A reproduction reads the page's own files, never the job that made it (the job store may be gone,
the page copied from another machine): the image, its `.workflow.json` (the exact graph ComfyUI
got) and its generation-log entry, whose `fingerprints` name every model and image file with its
SHA-256 (plasmad.generation.fingerprints).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plasmad.context import Core
from plasmad.core.errors import ErrorCode, PlasmaError, invalid, not_found
from plasmad.core.jobs import FingerprintedFile
from plasmad.core.wire import FileCheck, Status
from plasmad.generation import fingerprints, pipeline_files


@dataclass(frozen=True)
class Page:
    name: str  #: chXX_pNNN_vN
    image: Path
    workflow: Path
    graph: dict[str, Any]
    entry: dict[str, Any]  #: its generation-log entry


def read_page(pipeline: Path, image: str) -> Page:
    """The page `image` (chXX_pNNN_vN[.png]): its image, workflow and last log entry (blocking)."""
    name = image.removesuffix(".png")
    m = pipeline_files.STEM_RE.match(name)
    if not m:
        raise invalid("image", f"{image!r} is not a page image name like ch01_p001_v1")
    chapter = int(m.group(1))
    log_path = pipeline_files.chapter_dir(pipeline, chapter) / pipeline_files.LOG_NAME
    log = pipeline_files.read_log(log_path)
    entries = [e for e in log if isinstance(e, dict) and e.get("imageFile") == f"{name}.png"]
    if not entries:
        raise not_found(f"generation log entry for {name}.png in {log_path}")
    entry = entries[-1]
    raw = pipeline_files.raw_dir(pipeline, chapter)
    picture = raw / f"{name}.png"
    if not picture.is_file():
        raise not_found(f"page image {picture}")
    # A plain name beside the image, whatever the (hand-editable) log says.
    workflow = raw / Path(str(entry.get("workflowFile") or f"{name}.workflow.json")).name
    try:
        graph = json.loads(workflow.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise not_found(f"workflow {workflow} (the graph that made {name})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlasmaError(ErrorCode.CONFLICT, f"{workflow} is not readable JSON: {exc}") from None
    if not isinstance(graph, dict) or not graph:
        raise PlasmaError(ErrorCode.CONFLICT, f"{workflow} holds no ComfyUI graph")
    return Page(name=name, image=picture, workflow=workflow, graph=graph, entry=entry)


def _named_in_graph(graph: dict[str, Any], record: dict[str, Any]) -> bool:
    node = graph.get(str(record.get("node")))
    inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
    return bool(inputs.get(record.get("input")) == record.get("file"))


async def check_files(core: Core, page: Page) -> tuple[list[FileCheck], list[FingerprintedFile]]:
    """Every fingerprinted file of the page, hashed now (cached) and compared with its record; and
    those found, as the reproduction's jobs fingerprint them again."""
    core.cfg.require_comfyui_dir()  # a 503 naming COMFYUI_DIR before any file is looked for
    checks: list[FileCheck] = []
    found: list[FingerprintedFile] = []
    records = page.entry.get("fingerprints") or {}
    for role, record in sorted(records.items()):
        if not isinstance(record, dict) or role not in fingerprints.BY_NAME:
            continue
        file, recorded = str(record.get("file")), record.get("sha256")
        if not _named_in_graph(page.graph, record):
            # The workflow file was edited: the record no longer describes what would run.
            checks.append(FileCheck(role=role, file=file, recorded=recorded, status="changed"))
            continue
        try:
            path = await asyncio.to_thread(fingerprints.locate, core.cfg, role, file)
            now = (await core.hasher.sha256(path)).sha256
        except (PlasmaError, OSError):
            checks.append(FileCheck(role=role, file=file, recorded=recorded, status="missing"))
            continue
        status: Status = "unrecorded" if not recorded else "same" if now == recorded else "changed"
        checks.append(
            FileCheck(role=role, file=file, path=str(path), recorded=recorded, now=now, status=status)
        )
        node, input_name = str(record["node"]), str(record["input"])
        found.append(FingerprintedFile(role=role, node=node, input=input_name, file=file, path=str(path)))
    return checks, found


def refusal(page: Page, checks: list[FileCheck]) -> PlasmaError | None:
    """The 409 for a page whose files are not all as they were; None if they are."""
    if not page.entry.get("fingerprints"):
        return PlasmaError(
            ErrorCode.CONFLICT,
            f"{page.name} has no fingerprints in its log entry (made before plasmad recorded them): "
            "its files cannot be verified; --force (force: true) runs it unverified",
            field="image",
        )
    bad = [c for c in checks if c.status != "same"]
    if not bad:
        return None
    parts = [f"the {c.role} {c.file} {_what(c)}" for c in bad]
    return PlasmaError(
        ErrorCode.CONFLICT,
        f"{page.name} cannot be reproduced as it was: {'; '.join(parts)}. "
        "--force (force: true) runs it with the files as they are now",
        field="image",
        details={"files": [c.dump() for c in bad]},
    )


def _what(check: FileCheck) -> str:
    if check.status == "missing":
        return "is missing"
    if check.status == "unrecorded":
        return "had no hash recorded"
    if check.now is None:
        return "is no longer what the workflow names"
    return f"changed (sha256 {(check.recorded or '?')[:10]}... then, {check.now[:10]}... now)"
