"""The hardware benchmark (INFRA-04): one 512x512, 20-step, euler_ancestral image, under 2 minutes.

A benchmark is an ordinary generation job on the base template (the configured checkpoint, no
LoRA) through the normal queue, so it measures what the artist will get, GPU lock and all; it
waits behind whatever is queued, and only its own run counts. `start` queues it and returns at
once; a watcher records the result when the job ends:

- `secondsPerImage`: the job's run, from the worker taking it to the image written (model loading
  included on a cold ComfyUI: run it twice for the warm figure);
- `itPerSec`: the sampler's rate between its first and last step (`plasmad.generation.timing`);
- `passed`: against the 2-minute bar, only for the bar's own settings; other sizes (a quick run on
  a CPU) are recorded with `passed: null` and a note saying so.

Each record keeps the device and versions (ComfyUI, PyTorch, plasmad, the launch flags, the UNet
dtype). Records are JSON lines in `<state>/bench.jsonl`, appended in a thread: a `started` line
when queued, the result when done, so a benchmark whose daemon stopped is recorded at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import platform
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from plasmad import __version__
from plasmad.context import Core
from plasmad.core import limits
from plasmad.core.errors import PlasmaError, not_found
from plasmad.core.jobs import GenerationState
from plasmad.core.states import FINISHED_STATES, JobStatus
from plasmad.core.store import Job, now
from plasmad.core.wire import (
    BenchRecord,
    BenchRequest,
    BenchResults,
    BenchResultsParams,
    GenerateRequest,
    checked,
    parse,
)

log = logging.getLogger(__name__)

# INFRA-04's bar; the page it is defined for is limits.BENCH_WIDTH x BENCH_HEIGHT, BENCH_STEPS.
BAR_SECONDS: Final = 120.0
PROMPT: Final = "1girl, manga style, full body, standing on a rooftop, city at night, detailed"
NEGATIVE: Final = "lowres, bad anatomy, blurry"
FILE_NAME: Final = "bench.jsonl"
POLL_S: Final = 0.5


def bar_applies(width: int, height: int, steps: int) -> bool:
    return (width, height, steps) == (limits.BENCH_WIDTH, limits.BENCH_HEIGHT, limits.BENCH_STEPS)


def bar_note(width: int, height: int, steps: int) -> str | None:
    if bar_applies(width, height, steps):
        return None
    return (
        f"the {BAR_SECONDS / 60:.0f}-minute bar is defined for "
        f"{limits.BENCH_WIDTH}x{limits.BENCH_HEIGHT}, {limits.BENCH_STEPS} steps; "
        f"this run used {width}x{height}, {steps} steps, so it is not judged"
    )


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "id" in record:
                records.append(record)
    return records


class Bench:
    def __init__(self, core: Core) -> None:
        self._core = core
        self.path = core.cfg.state_dir / FILE_NAME
        self.last: dict[str, Any] | None = None  #: the newest result, for /health
        self._running: dict[str, dict[str, Any]] = {}  #: id -> its `started` record
        self._watchers: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        """At startup: the last result for /health, and watchers for benchmarks still unrecorded."""
        records = await asyncio.to_thread(_read, self.path)
        results = [r for r in records if r.get("event") == "result"]
        self.last = results[-1] if results else None
        done = {r["id"] for r in results}
        for record in records:
            if record.get("event") == "started" and record["id"] not in done:
                self._watch(record)

    async def close(self) -> None:
        for task in list(self._watchers):
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)

    async def start(self, body: Any) -> tuple[dict[str, Any], Job]:
        """Queue a benchmark; returns its record and job at once (the result is recorded when it ends)."""
        params = parse(BenchRequest, body or {})
        width, height, steps = params.resolution.width, params.resolution.height, params.steps
        request: dict[str, Any] = {
            "prompt": PROMPT,
            "negativePrompt": NEGATIVE,
            "resolution": {"width": width, "height": height},
            "steps": steps,
            "sampler": limits.DEFAULT_SAMPLER,
            "scheduler": limits.DEFAULT_SCHEDULER,
            "cfg": limits.DEFAULT_CFG,
            # No seed: a fresh one each time. ComfyUI caches a node whose inputs it has seen, so
            # a repeated seed would be served from the cache and time nothing.
        }
        if params.checkpoint is not None:
            request["checkpoint"] = params.checkpoint
        job = await self._core.submit_generation(parse(GenerateRequest, request))
        record = {
            "event": "started",
            "id": f"b_{secrets.token_hex(6)}",
            "jobId": job.id,
            "queuedAt": now(),
            "width": width,
            "height": height,
            "steps": steps,
            "sampler": limits.DEFAULT_SAMPLER,
            "scheduler": limits.DEFAULT_SCHEDULER,
            "checkpoint": job.request.get("checkpoint"),
            "seed": job.request.get("seed"),
            "barSeconds": BAR_SECONDS,
            "barApplies": bar_applies(width, height, steps),
            "note": bar_note(width, height, steps),
        }
        await asyncio.to_thread(_append, self.path, record)
        self._watch(record)
        log.info(
            "benchmark %s queued as job %s (%dx%d, %d steps)", record["id"], job.id, width, height, steps
        )
        return record, job

    def _watch(self, started: dict[str, Any]) -> None:
        self._running[started["id"]] = started
        task = asyncio.create_task(self._finish(started), name=f"bench-{started['id']}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _finish(self, started: dict[str, Any]) -> None:
        store = self._core.store
        while True:
            job = await store.get(started["jobId"])
            if job is None or job.status in FINISHED_STATES:
                break
            await asyncio.sleep(POLL_S)
        record = await self._result(started, job)
        await asyncio.to_thread(_append, self.path, record)
        self._running.pop(started["id"], None)
        self.last = record
        verdict = {True: "PASS", False: "FAIL", None: "not judged"}[record["passed"]]
        log.info(
            "benchmark %s: %s, %s s per image, %s it/s (%s)",
            record["id"],
            record["status"],
            record["secondsPerImage"],
            record["itPerSec"],
            verdict,
        )

    async def _result(self, started: dict[str, Any], job: Job | None) -> dict[str, Any]:
        record = {**started, "event": "result", "at": now()}
        status = job.status.value if job is not None else "failed"
        seconds = _seconds_between(job.started_at, job.finished_at) if job is not None else None
        state = GenerationState.model_validate(job.result) if job is not None else None
        timing = (state.timing or {}) if state is not None else {}
        it_per_sec = timing.get("itPerSec")
        if it_per_sec is None and seconds and status == JobStatus.SUCCEEDED.value:
            it_per_sec = round(started["steps"] / seconds, 3)  # no progress events: the whole run
        ok = status == JobStatus.SUCCEEDED.value and seconds is not None
        record.update(
            status=status,
            error=(job.error or {}).get("message") if job is not None else "the job is gone from the store",
            secondsPerImage=round(seconds, 2) if ok and seconds is not None else None,
            comfyuiSeconds=timing.get("seconds"),
            itPerSec=it_per_sec if ok else None,
            passed=(seconds < BAR_SECONDS) if ok and started["barApplies"] and seconds is not None else None,
            outputs=state.outputs if state is not None else [],
            **await self._environment(),
        )
        if status != JobStatus.SUCCEEDED.value and started["barApplies"]:
            record["passed"] = False  # a benchmark that did not produce an image did not pass
        return record

    async def _environment(self) -> dict[str, Any]:
        cfg = self._core.cfg
        env: dict[str, Any] = {
            "versions": {"plasmad": __version__, "python": platform.python_version()},
            "host": {
                "system": platform.system(),
                "machine": platform.machine(),
                "release": platform.release(),
            },
            "unetDtype": self._core.monitor.unet_dtype(cfg.unet_dtype).value,
            "device": None,
            "comfyuiArgs": None,
        }
        try:
            stats = await self._core.comfy.system_stats()
        except PlasmaError as exc:
            env["comfyuiError"] = exc.message
            return env
        system = stats.get("system", {})
        devices = [d for d in stats.get("devices", []) if isinstance(d, dict)]
        env["versions"].update(comfyui=system.get("comfyui_version"), pytorch=system.get("pytorch_version"))
        env["device"] = {"name": devices[0].get("name"), "type": devices[0].get("type")} if devices else None
        env["comfyuiArgs"] = [str(a) for a in system.get("argv", [])][1:]
        return env

    async def results(self, body: Any) -> dict[str, Any]:
        """One benchmark (`id`), or the newest `limit` results and those still running."""
        params = parse(BenchResultsParams, body or {})
        records = await asyncio.to_thread(_read, self.path)
        results = [r for r in records if r.get("event") == "result"]
        if params.id is not None:
            for record in reversed(results):
                if record["id"] == params.id:
                    return dict(checked(BenchRecord, record))
            if params.id in self._running:
                return dict(checked(BenchRecord, {**self._running[params.id], "status": "running"}))
            raise not_found(f"benchmark {params.id}")
        answer = {
            "last": results[-1] if results else None,
            "results": results[-params.limit :][::-1],
            "running": [{**r, "status": "running"} for r in self._running.values()],
        }
        return dict(checked(BenchResults, answer))
