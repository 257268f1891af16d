"""The report of a reproduction or consistency check, once every run has ended (blocking).

A reproduction compares each run with the page's image; a consistency check compares each run
with run 1 (or the first run that has a picture) and fills the matrix of every run against every
run. A `crop` restricts every score to that region. Then the contact sheet, then the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plasmad.core.wire import Record, RunResult
from plasmad.reproduce import compare, sheet
from plasmad.reproduce.records import save

if TYPE_CHECKING:
    import numpy as np

SHEET_NAME = "contact-sheet.png"


@dataclass(frozen=True)
class Outcome:
    """How one run's job ended."""

    job: str
    status: str
    image: Path | None  #: its picture, if it succeeded
    error: str | None
    steps: int | None  #: the sampler steps ComfyUI reported


def verdict(result: RunResult) -> str:
    if result.identical:
        return "identical (max diff 0)"
    if result.ssim is not None:
        return f"SSIM {result.ssim:.4f}, max diff {result.max_diff}"
    return result.note or result.status


def finish(record: Record, outcomes: list[Outcome]) -> Record:
    """Compare, draw the sheet, store the record as done; the record."""
    pictures = [compare.load(o.image, record.crop) if o.image is not None else None for o in outcomes]
    reference: np.ndarray[Any, Any] | None
    if record.kind == "reproduce":
        assert record.original is not None
        reference = compare.load(Path(record.original), record.crop)
        reference_label = ["original", record.page or ""]
        first = 0
    else:
        first = next((i for i, p in enumerate(pictures) if p is not None), 0)
        reference = pictures[first]
        reference_label = []
        record.matrix = compare.matrix(pictures)
    results = []
    for i, (outcome, picture) in enumerate(zip(outcomes, pictures, strict=True)):
        result = RunResult(
            run=i + 1, job=outcome.job, status=outcome.status, sampler_steps=outcome.steps,
            image=str(outcome.image) if outcome.image else None,
        )  # fmt: skip
        if picture is None or reference is None:
            result.note = f"{outcome.status}: {outcome.error}" if outcome.error else outcome.status
        elif record.kind == "consistency" and i == first:
            result.note = "the reference"
            result.identical, result.max_diff, result.ssim = True, 0, 1.0
        else:
            c = compare.compare(reference, picture)
            result.identical, result.max_diff, result.ssim = c.identical, c.max_diff, c.ssim
            result.note = c.note
        results.append(result)
    record.results = results
    scored = [r for r in results if r.ssim is not None]
    record.identical = len(scored) == len(results) and all(r.identical for r in results)
    record.min_ssim = min((r.ssim for r in scored if r.ssim is not None), default=None)
    record.sheet = str(_draw(record, results, reference_label))
    record.state = "done"
    save(record)
    return record


def _draw(record: Record, results: list[RunResult], reference_label: list[str]) -> Path:
    cells = []
    if record.kind == "reproduce":
        cells.append(sheet.Cell(Path(record.original or ""), reference_label))
    for r in results:
        label = "run 1 (reference)" if r.note == "the reference" else f"run {r.run}"
        lines = [label] if r.note == "the reference" else [label, verdict(r)]
        cells.append(sheet.Cell(Path(r.image) if r.image else None, [*lines, r.job]))
    return sheet.draw(_title(record), cells, Path(record.folder) / SHEET_NAME, record.crop)


def _title(record: Record) -> str:
    where = ""
    if record.crop:
        c = record.crop
        where = f", region x {c['x']} y {c['y']} {c['width']}x{c['height']} (outlined)"
    if record.kind == "reproduce":
        verdict_text = "pixel-identical" if record.identical else f"lowest SSIM {record.min_ssim}"
        return f"{record.page} reproduced {record.runs}x ({record.id}): {verdict_text}{where}"
    seed = f"seed {record.seed}" if record.seed is not None else ""
    return f"consistency {record.id}: {record.runs} runs, {seed}, lowest SSIM {record.min_ssim}{where}"

