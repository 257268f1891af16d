"""Reproduce a page; check that same-seed renders agree (issue 12). What the APIs call.

- `reproduce`: the page's stored workflow, run again as it is, `runs` times, through the normal
  queue (one generation job per run, each written to `<state>/reproductions/<page>/<id>/`), once
  every fingerprinted file is checked to be what it was (else a 409 naming it, unless `force`).
- `consistency`: one generation request (validated as any), `runs` times with one seed, written
  to `<state>/consistency/<id>/`; the similarity of every run to every other, in a region if asked.
- `status`: the record; once every run has ended, its comparison and contact sheet (drawn then).

Every run clears ComfyUI's cache first and is checked to have really run (generation.fresh_run):
ComfyUI would otherwise serve an identical graph from its cache and prove nothing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path
from typing import Any

from plasmad.context import Core
from plasmad.core import limits
from plasmad.core.errors import invalid
from plasmad.core.jobs import Destination, FingerprintedFile, GenerationState
from plasmad.core.states import FINISHED_STATES, JobKind, JobStatus
from plasmad.core.store import Job, now
from plasmad.core.wire import ConsistencyOptions, GenerateRequest, Record, ReproduceRequest, parse
from plasmad.reproduce import records, report
from plasmad.reproduce.compare import crop_fits
from plasmad.reproduce.page import Page, check_files, read_page, refusal

log = logging.getLogger(__name__)

_OPTION_KEYS = ("runs", "crop")


class ReproduceOps:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._locks: dict[str, asyncio.Lock] = {}  #: one report drawn per record at a time

    async def reproduce(self, body: Any) -> dict[str, Any]:
        """POST /images/:name/reproduce: check the page's files, queue its workflow `runs` times."""
        core = self._core
        core.check_accepting()
        params = parse(ReproduceRequest, body)
        page = await asyncio.to_thread(read_page, core.cfg.require_pipeline_dir(), params.image)
        limits.check_graph(page.graph)  # the graph runs as it is: a hand edit must not pass the limits
        checks, files = await check_files(core, page)
        problem = refusal(page, checks)
        if problem is not None:
            if not params.force:
                raise problem
            log.warning("reproducing %s with --force: %s", page.name, problem.message)
        record_id = records.new_id(records.REPRODUCE_PREFIX)
        folder = records.reproduction_folder(core.cfg, page.name, record_id)
        runs = range(1, params.runs + 1)
        jobs = [_run_job(page, files, folder, record_id, run, params.runs) for run in runs]
        record = Record(
            id=record_id, kind="reproduce", folder=str(folder), jobs=[j.id for j in jobs], runs=params.runs,
            created_at=now(), page=page.name, original=str(page.image), workflow=str(page.workflow),
            force=params.force, files=checks,
        )  # fmt: skip
        await asyncio.to_thread(records.save, record)  # before the jobs: status finds it at once
        await self._queue_all(jobs)
        log.info("reproduction %s of %s: %d run(s) queued", record_id, page.name, params.runs)
        return await self._answer(record)

    async def _queue_all(self, jobs: list[Job]) -> None:
        """All or nothing: if one cannot be stored, those already queued are cancelled again."""
        added: list[Job] = []
        try:
            for job in jobs:
                added.append(await self._core.queue.add(job))
        except BaseException:
            for job in added:
                fresh = await self._core.store.get(job.id)
                if fresh is not None and fresh.status == JobStatus.QUEUED:
                    await self._core.queue.cancel(fresh)
            raise

    async def consistency(self, body: Any) -> dict[str, Any]:
        """POST /consistency: one generation, `runs` times with the same seed, compared."""
        core = self._core
        core.check_accepting()
        if not isinstance(body, dict):
            raise invalid("body", "must be a JSON object")
        options = parse(ConsistencyOptions, {k: v for k, v in body.items() if k in _OPTION_KEYS})
        req = parse(GenerateRequest, {k: v for k, v in body.items() if k not in _OPTION_KEYS})
        if req.chapter is not None or req.page is not None:
            field = "chapter" if req.chapter is not None else "page"
            raise invalid(field, "a consistency check writes no page: leave chapter and page out")
        crop = options.crop.model_dump() if options.crop is not None else None
        if crop is not None and req.pose_image_path is None:
            _check_crop(crop, req.resolution.width, req.resolution.height)
        seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
        req = req.model_copy(update={"seed": seed})
        record_id = records.new_id(records.CONSISTENCY_PREFIX)
        folder = records.consistency_folder(core.cfg, record_id)
        items: list[tuple[GenerateRequest, Destination | None]] = [
            (req, _destination("consistency", folder, run, {"consistency": record_id, "run": run}))
            for run in range(1, options.runs + 1)
        ]
        queued = await core.submit_generations(items)  # validated as any generation, all or nothing
        state = GenerationState.model_validate(queued[0].result)
        if crop is not None and state.width and state.height:
            try:  # the size of a posed panel is known once its init image was read
                _check_crop(crop, state.width, state.height)
            except BaseException:
                for job in queued:
                    await core.queue.cancel(await core.job(job.id))
                raise
        record = Record(
            id=record_id, kind="consistency", folder=str(folder), jobs=[j.id for j in queued],
            runs=options.runs, created_at=now(), request=queued[0].request, seed=seed, crop=crop,
        )  # fmt: skip
        await asyncio.to_thread(records.save, record)
        log.info("consistency check %s: %d runs of seed %d queued", record_id, options.runs, seed)
        return await self._answer(record)

    async def status(self, record_id: Any) -> dict[str, Any]:
        """A reproduction or consistency check; compared (and its sheet drawn) once its runs ended."""
        record = await asyncio.to_thread(records.find, self._core.cfg, record_id)
        return await self._answer(record)

    async def _answer(self, record: Record) -> dict[str, Any]:
        jobs = [await self._core.store.get(job_id) for job_id in record.jobs]
        ended = sum(1 for j in jobs if j is None or j.status in FINISHED_STATES)
        if record.state == "running" and ended == len(jobs):
            lock = self._locks.setdefault(record.id, asyncio.Lock())
            async with lock:
                record = await asyncio.to_thread(records.find, self._core.cfg, record.id)
                if record.state == "running":  # not drawn meanwhile by another caller
                    outcomes = [_outcome(job_id, job) for job_id, job in zip(record.jobs, jobs, strict=True)]
                    record = await asyncio.to_thread(report.finish, record, outcomes)
                    log.info("%s %s: compared, sheet %s", record.kind, record.id, record.sheet)
            self._locks.pop(record.id, None)
        return {**record.dump(), "done": ended, "total": len(jobs)}


def _check_crop(crop: dict[str, int], width: int, height: int) -> None:
    if not crop_fits(crop, width, height):
        raise invalid(
            "crop",
            f"x {crop['x']} y {crop['y']} {crop['width']}x{crop['height']} lies outside the "
            f"{width}x{height} image",
        )


def _destination(kind: str, folder: Path, run: int, details: dict[str, Any]) -> Destination:
    return Destination(kind=kind, image=str(folder / f"run-{run}.png"), details=details, fresh=True)


def _run_job(
    page: Page, files: list[FingerprintedFile], folder: Path, record_id: str, run: int, runs: int
) -> Job:
    """A generation job that renders the page's stored graph as it is (a fresh render)."""
    entry = page.entry
    details = {"page": page.name, "reproduction": record_id, "run": run}
    state = GenerationState(
        template=str(entry.get("workflowTemplate") or "workflow").removesuffix(".json"),
        graph=page.graph,
        width=_size(entry.get("width")),
        height=_size(entry.get("height")),
        destination=_destination("reproduction", folder, run, details),
        files=files,
    )
    # Not a GenerateRequest: the graph is the page's, not one filled from a request.
    request = {
        "reproduce": page.name, "reproduction": record_id, "run": run, "runs": runs,
        "seed": entry.get("seed"), "checkpoint": entry.get("model"),
        "loraId": entry.get("loraId"),  # for the worker's check that ComfyUI applied the LoRA whole
    }  # fmt: skip
    job_id = f"j_{secrets.token_hex(6)}"  # a generation job like any (plasmad.generation.ops.new_job_id)
    return Job(
        id=job_id, kind=JobKind.GENERATE, status=JobStatus.QUEUED, request=request, result=state.dump()
    )


def _size(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _outcome(job_id: str, job: Job | None) -> report.Outcome:
    if job is None:
        return report.Outcome(job=job_id, status="missing", image=None, error="no such job", steps=None)
    state = GenerationState.model_validate(job.result or {"template": "", "graph": {}})
    image = state.outputs[0] if job.status == JobStatus.SUCCEEDED and state.outputs else None
    return report.Outcome(
        job=job_id, status=job.status.value, image=Path(image) if image else None,
        error=(job.error or {}).get("message"), steps=(state.timing or {}).get("steps"),
    )  # fmt: skip
