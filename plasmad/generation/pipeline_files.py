"""The pipeline's files (PIPE-03/04/05): where a generated page lands, so later stages use it unchanged.

    <pipeline>/output/ch-01/raw/ch01_p001_v1.png            the image (v = next free version)
    <pipeline>/output/ch-01/raw/ch01_p001_v1.workflow.json  the exact graph sent to ComfyUI
    <pipeline>/output/ch-01/generation-log.json             a JSON array, one entry per image
    <pipeline>/prompts/ch-01/p001.txt                       the page's prompt (plasmactl generate)

Nothing is ever overwritten: a new image takes the next version, and the log is rewritten whole
(temp + rename) under a lock, keeping every entry other tools wrote. All functions block: call
them through asyncio.to_thread.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plasmad.core.errors import ErrorCode, PlasmaError, invalid, not_found, storage_error
from plasmad.core.fsutil import (
    check_writable,
    file_lock,
    link_new,
    replace_atomic,
    same_content,
    stage,
    storage_errors,
)

STEM_RE = re.compile(r"^ch(\d{2,3})_p(\d{3})_v(\d+)$")
LOG_NAME = "generation-log.json"
LOCK_NAME = ".plasma-files.lock"


def chapter_dir(pipeline: Path, chapter: int) -> Path:
    return pipeline / "output" / f"ch-{chapter:02d}"


def raw_dir(pipeline: Path, chapter: int) -> Path:
    return chapter_dir(pipeline, chapter) / "raw"


def output_folders(pipeline: Path) -> list[Path]:
    """Every chapter folder and its raw/: where page files and logs are written."""
    chapters = sorted(p for p in (pipeline / "output").glob("ch-*") if p.is_dir())
    return [f for c in chapters for f in (c, c / "raw")]


def stem(chapter: int, page: int, version: int) -> str:
    return f"ch{chapter:02d}_p{page:03d}_v{version}"


def prompt_file(pipeline: Path, chapter: int, page: int) -> Path:
    return pipeline / "prompts" / f"ch-{chapter:02d}" / f"p{page:03d}.txt"


@dataclass(frozen=True)
class PagePrompt:
    prompt: str
    negative_prompt: str
    path: Path


def read_page_prompt(path: Path) -> PagePrompt:
    """A page prompt file: the prompt text; a line `negative: ...` gives the negative prompt.

    Lines starting with `#` are comments. Everything else, joined, is the prompt.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise invalid("promptFile", f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise invalid("promptFile", f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    prompt_lines, negative = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.lower().startswith("negative:"):
            negative.append(stripped.split(":", 1)[1].strip())
        else:
            prompt_lines.append(stripped)
    prompt = " ".join(prompt_lines).strip()
    if not prompt:
        raise invalid("promptFile", f"{path} holds no prompt text")
    return PagePrompt(prompt=prompt, negative_prompt=" ".join(negative).strip(), path=path)


def prompt_hash(prompt: str, negative_prompt: str) -> str:
    return hashlib.sha256(f"{prompt}\n{negative_prompt}".encode()).hexdigest()


def next_free_stem(pipeline: Path, chapter: int, page: int) -> str:
    """The first version of this page whose image and workflow names are both unused."""
    folder = raw_dir(pipeline, chapter)
    prefix = f"ch{chapter:02d}_p{page:03d}_v"
    taken = [0]
    if folder.is_dir():
        for p in folder.iterdir():
            name = p.name.split(".", 1)[0]
            if name.startswith(prefix) and (m := STEM_RE.match(name)):
                taken.append(int(m.group(3)))
    return stem(chapter, page, max(taken) + 1)


def read_log(path: Path) -> list[Any]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8") or "[]")
    except FileNotFoundError:
        return []
    except OSError as exc:
        if (err := storage_error(exc, path.parent)) is not None:
            raise err from None
        raise PlasmaError(ErrorCode.CONFLICT, f"{path} cannot be read ({exc}); nothing was written") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlasmaError(
            ErrorCode.CONFLICT, f"{path} is not readable JSON ({exc}); fix it, nothing was written"
        ) from None
    if not isinstance(entries, list):
        raise PlasmaError(ErrorCode.CONFLICT, f"{path} is not a JSON array; fix it, nothing was written")
    return entries


def _dump(data: Any) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()


@dataclass(frozen=True)
class SavedPage:
    image: Path
    workflow: Path
    entry: dict[str, Any]


def check_page_storage(pipeline: Path, chapter: int, then: str = "") -> None:
    """Before a page's prompt is sent: its generation log reads as a JSON array and its folders
    take a new file, so a render is never thrown away for a fault that was there all along."""
    folder = chapter_dir(pipeline, chapter)
    check_writable(raw_dir(pipeline, chapter), then=then)  # creates both folders
    check_writable(folder, then=then)
    with storage_errors(folder, then):
        read_log(folder / LOG_NAME)


def save_page(
    pipeline: Path,
    chapter: int,
    page: int,
    reserved: str,
    png: bytes,
    workflow: dict[str, Any],
    entry: dict[str, Any],
    job_id: str,
    then: str = "",
) -> SavedPage:
    """Write image, workflow and log entry for one job, once: all three or none.

    `reserved` is the stem the job recorded before calling (so a retry after a crash reuses it):
    if that image already exists with these very bytes, it is ours from the interrupted attempt.
    A log entry with this jobId means everything was written already. Image and workflow are
    written to temp files first (a full disk fails there, before any name is taken), then linked
    into place, then the log entry is added; if that fails, the two are removed again, so the
    reserved name stays free for the retry. Disk full, read-only, no permission: a STORAGE error
    naming the folder (`then`: how to carry on once fixed).
    """
    folder = raw_dir(pipeline, chapter)
    log_path = chapter_dir(pipeline, chapter) / LOG_NAME
    with storage_errors(chapter_dir(pipeline, chapter), then):
        with file_lock(chapter_dir(pipeline, chapter) / LOCK_NAME):
            entries = read_log(log_path)  # refuse early if the log is broken: no orphan image
            for old in entries:
                if isinstance(old, dict) and old.get("jobId") == job_id:
                    return SavedPage(folder / old["imageFile"], folder / old.get("workflowFile", ""), old)
            workflow_bytes = _dump(workflow)
            image_tmp = stage(folder / f"{reserved}.png", png)
            try:
                workflow_tmp = stage(folder / f"{reserved}.workflow.json", workflow_bytes)
            except BaseException:
                image_tmp.unlink(missing_ok=True)
                raise
            try:
                staged = ((image_tmp, png), (workflow_tmp, workflow_bytes))
                return _publish_page(pipeline, chapter, page, reserved, staged, entries, entry, job_id)
            finally:
                image_tmp.unlink(missing_ok=True)
                workflow_tmp.unlink(missing_ok=True)


def _publish_page(
    pipeline: Path,
    chapter: int,
    page: int,
    reserved: str,
    staged: tuple[tuple[Path, bytes], tuple[Path, bytes]],
    entries: list[Any],
    entry: dict[str, Any],
    job_id: str,
) -> SavedPage:
    """Link the staged image and workflow into place under the first free name from `reserved`,
    then add the log entry; on any failure, remove the two again (ours: they hold our bytes)."""
    folder = raw_dir(pipeline, chapter)
    image_file, workflow_file = staged
    ours: list[Path] = []
    try:
        name = reserved
        while True:
            image = folder / f"{name}.png"
            if link_new(image_file[0], image) or same_content(image, image_file[1]):
                ours.append(image)
                break
            name = next_free_stem(pipeline, chapter, page)
        workflow_path = folder / f"{name}.workflow.json"
        if not (link_new(workflow_file[0], workflow_path) or same_content(workflow_path, workflow_file[1])):
            raise PlasmaError(ErrorCode.CONFLICT, f"{workflow_path} exists with other content; left as is")
        ours.append(workflow_path)
        m = STEM_RE.match(name)
        assert m is not None
        full = {
            **entry,
            "imageFile": image.name,
            "workflowFile": workflow_path.name,
            "version": int(m.group(3)),
            "jobId": job_id,
        }
        replace_atomic(chapter_dir(pipeline, chapter) / LOG_NAME, _dump([*entries, full]))
        return SavedPage(image, workflow_path, full)
    except BaseException:
        for path in ours:
            path.unlink(missing_ok=True)
        raise


def approve(pipeline: Path, image: str, approved: bool = True) -> dict[str, Any]:
    """Set `approved` on the log entry of image chXX_pNNN_vN."""
    name = image.removesuffix(".png")
    m = STEM_RE.match(name)
    if not m:
        raise invalid("image", f"{image!r} is not a page image name like ch01_p001_v1")
    chapter = int(m.group(1))
    log_path = chapter_dir(pipeline, chapter) / LOG_NAME
    with storage_errors(log_path.parent), file_lock(chapter_dir(pipeline, chapter) / LOCK_NAME):
        entries = read_log(log_path)
        hits = [e for e in entries if isinstance(e, dict) and e.get("imageFile") == f"{name}.png"]
        if not hits:
            raise not_found(f"generation log entry for {name}.png in {log_path}")
        for entry in hits:
            entry["approved"] = approved
        replace_atomic(log_path, _dump(entries))
        return dict(hits[-1])
