"""The ComfyUI backend: ComfyUI's own LoRA training nodes (0.3.75), for where kohya is not set up.

kohya cannot be installed from the package registries, so this is the trainer CI really runs. The
graph is `templates/train-lora-comfy.json` (API format, slot-filled like the generation templates):

    CheckpointLoaderSimple -> LoadImageTextDataSetFromFolder -> MakeTrainingDataset (VAE + CLIP)
        -> TrainLoraNode -> SaveLoRA

What the nodes allow, and what this does about it (measured on 0.3.75):

- TrainLoraNode trains for `steps` and returns the LoRA only at the end: it cannot save along the
  way. So a training runs as chunks of `saveEverySteps` steps, one ComfyUI prompt each, every chunk
  continuing from the last through the node's `existing_lora` input. ComfyUI caches the checkpoint,
  the dataset and its encoding between chunks (only the trainer's inputs change), so a chunk costs
  its steps and little more. Carried over: the LoRA matrices. Not carried over: the optimizer's
  state (AdamW restarts each chunk) and the bias/norm offsets the node also trains (`.diff`,
  `.diff_b`: they start again at zero each chunk). Each checkpoint is exactly the model the node
  had at the end of its chunk.
- `existing_lora` must be a file in ComfyUI's loras folder named `..._<steps>_steps_...`, in the
  node's own key layout: the last chunk's file is kept for that in `models/loras/plasma-train/<id>/`,
  a folder plasmad owns and removes when the training ends.
- The node trains the UNet only (not the text encoder), every linear and conv layer, with alpha 1
  (scale 1/rank): `networkAlpha` has no effect here; `networkDim` is the rank (at most 128).
- Its dtype is bf16 or fp32: fp32 where PLASMA_UNET_DTYPE is fp32 (CPU hosts, where bf16 autocast is
  slow or missing), bf16 otherwise.
- It has no regularisation images: with a reg set, as many reg images as there are training images
  are added to the set with their own captions, the balance kohya's epochs have.
- Progress comes from the WebSocket `progress` events (one per step); the loss is not reported by
  any node, so the status has none for this backend.

SaveLoRA's files are rewritten in kohya's layout (`convert`), so checkpoints look the same whichever
backend trained; the files it stages in ComfyUI's folders are `staging`'s.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

from plasmad.comfy.client import ComfyClient
from plasmad.comfy.monitor import ComfyMonitor
from plasmad.comfy.templates import Template, TemplateError, load_template
from plasmad.core.appender import Appender
from plasmad.core.config import Config
from plasmad.core.errors import ErrorCode, PlasmaError, invalid, not_configured
from plasmad.core.jobs import StateModel
from plasmad.training.backend import Outcome, Prepared, TrainEvents, TrainProgress, TrainSpec
from plasmad.training.comfy_trainer.convert import kohya_metadata, to_kohya, unet_shapes
from plasmad.training.comfy_trainer.staging import (
    OWN_FOLDER,
    comfy_folders,
    keep_for_next_chunk,
    remove_folders,
    saved_file,
    stage_dataset,
)
from plasmad.training.kohya.outcome import OOM_ADVICE, oom_advice

log = logging.getLogger(__name__)

TEMPLATE = "train-lora-comfy"
NODES = ("TrainLoraNode", "SaveLoRA", "LoadImageTextDataSetFromFolder", "MakeTrainingDataset")
# A guard against a silent hang, not a limit: far above any step time seen (CPU, 512 px).
CHUNK_TIMEOUT_PER_STEP_S = 300.0
CHUNK_TIMEOUT_BASE_S = 1800.0
_OOM_RE = re.compile(r"out of memory|OutOfMemoryError|Cannot allocate memory", re.IGNORECASE)


def chunk_ends(total: int, every: int) -> list[int]:
    """The step each chunk ends at: every `every` steps, then the total."""
    return [*range(every, total, every), total] if every < total else [total]


def saves_step_file(end: int, total: int, every: int) -> bool:
    """kohya's rule: a step file at every multiple of save_every (the last included, beside the
    final file), none at all when save_every is not below the total."""
    return every < total and end % every == 0


def training_dtype(unet_dtype: str) -> str:
    """fp32 where the UNet runs at fp32 (a CPU: PLASMA_UNET_DTYPE, or auto on a CPU-only ComfyUI)."""
    return "fp32" if unet_dtype == "fp32" else "bf16"


class ComfyTrainerSettings(StateModel):
    """What `prepare` decided, stored with the job (the training's `settings`) and read by `run`."""

    training_dtype: str  #: the precision the trainer node computes and keeps the LoRA in
    rank: int


class RunFacts(StateModel):
    """What `abandon` needs after a crash, stored with the job as the run goes (the `run` key)."""

    prompt_id: str | None = None  #: the chunk's prompt in ComfyUI, to interrupt
    comfy_folders: dict[str, str] | None = None  #: our scratch folders in ComfyUI's, to remove

    def dump_set(self) -> dict[str, Any]:
        """Only what was given: each report adds to what is stored, it does not clear the rest."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class ComfyTrainer:
    name = "comfyui"

    def __init__(self, cfg: Config, comfy: ComfyClient, monitor: ComfyMonitor) -> None:
        self._cfg = cfg
        self._comfy = comfy
        self._monitor = monitor

    # --- submission ------------------------------------------------------------------------------

    async def prepare(self, spec: TrainSpec) -> Prepared:
        """From ComfyUI's last known catalogue and device (a training is queued whether ComfyUI
        answers or not); nodes never seen are not judged (ComfyUI 0.3.75 has them)."""
        self._cfg.require_comfyui_dir()
        await self._template()
        catalogue = self._monitor.catalogue
        if any(catalogue.has_node(node) is False for node in NODES):
            catalogue = await self._monitor.refresh()  # installed since it was last asked?
        infos = {node: catalogue.node(node) for node in NODES}
        missing = [node for node in NODES if catalogue.has_node(node) is False]
        if missing:
            raise not_configured(
                "PLASMA_TRAINER",
                f"ComfyUI at {self._comfy.base_url} has no {', '.join(missing)} (ComfyUI 0.3.75 or newer "
                "has them); set KOHYA_PYTHON and KOHYA_SCRIPT to train with kohya instead",
            )
        rank_spec = infos["TrainLoraNode"].get("input", {}).get("required", {}).get("rank", [None, {}])
        most = int(rank_spec[1].get("max", 128)) if len(rank_spec) > 1 else 128
        if spec.network_dim > most:
            raise invalid(
                "networkDim", f"{spec.network_dim}: ComfyUI's trainer takes a rank of at most {most}"
            )
        warnings = [
            "comfyui: ComfyUI's trainer trains the UNet only, with alpha 1: networkAlpha has no effect; "
            "AdamW's state and the bias/norm offsets restart at each saveEverySteps chunk",
        ]
        if spec.reg_dir is not None:
            warnings.append(
                "comfyui: no prior-preservation loss: regularisation images are mixed into the set, "
                "as many as there are training images"
            )
        devices = set(self._monitor.device_types)
        if devices and devices <= {"cpu"}:
            warnings.append(
                "NO GPU: ComfyUI runs on the CPU, so training is about 10x slower or worse (hours become "
                "days). Start ComfyUI on the Apple GPU (mps) for real trainings."
            )
        settings = ComfyTrainerSettings(training_dtype=self._training_dtype(), rank=spec.network_dim)
        return Prepared(settings=settings.dump(), warnings=warnings)

    def _training_dtype(self) -> str:
        return training_dtype(self._monitor.unet_dtype(self._cfg.unet_dtype).value)

    async def _template(self) -> Template:
        try:
            return await asyncio.to_thread(load_template, self._cfg.templates_dir, TEMPLATE)
        except TemplateError as exc:
            raise not_configured("PLASMA_TEMPLATES_DIR", str(exc)) from None

    # --- the run -----------------------------------------------------------------------------------

    async def run(self, spec: TrainSpec, events: TrainEvents, stop: asyncio.Event) -> Outcome:
        folders = await self._folders(spec.training_id)
        await events.started(RunFacts(comfy_folders={k: str(v) for k, v in folders.items()}).dump_set())
        logger = _RunLog(spec.log_path)
        try:
            return await self._run(spec, events, stop, folders, logger)
        finally:
            await asyncio.to_thread(remove_folders, folders)
            await logger.close()

    async def _run(
        self,
        spec: TrainSpec,
        events: TrainEvents,
        stop: asyncio.Event,
        folders: dict[str, Path],
        logger: _RunLog,
    ) -> Outcome:
        template = await self._template()
        staged = await asyncio.to_thread(stage_dataset, spec, folders["input"])
        logger.line(f"staged {staged} images at {spec.resolution} px in {folders['input']}")
        shapes = await asyncio.to_thread(unet_shapes, spec.checkpoint_path)
        ends = chunk_ends(spec.steps, spec.save_every)
        meter = _StepMeter(spec.steps)
        existing, done = "[None]", 0
        for number, end in enumerate(ends, 1):
            if stop.is_set():
                return _cancelled(done, spec.steps)
            prefix = f"{OWN_FOLDER}/{spec.training_id}/{spec.output_name}-{end:08d}-{secrets.token_hex(3)}"
            graph = self._chunk_graph(template, spec, number, end - done, existing, prefix)
            prompt_id = str(uuid.uuid4())
            await events.started(RunFacts(prompt_id=prompt_id).dump_set())
            logger.line(f"chunk {number}/{len(ends)}: steps {done + 1}-{end} (ComfyUI prompt {prompt_id})")
            failed = await self._run_chunk(graph, prompt_id, end - done, done, meter, events, stop)
            if failed is not None:
                logger.line(f"chunk {number} ended: {failed.kind}: {failed.reason}")
                if failed.advice is not None and OOM_ADVICE in failed.advice:
                    advice = failed.advice.replace(OOM_ADVICE, oom_advice(spec.resolution, spec.network_dim))
                    failed = Outcome(failed.kind, failed.reason, advice)
                return failed
            native = await asyncio.to_thread(saved_file, folders["output"].parent.parent, prefix)
            if native is None:
                reason = f"SaveLoRA wrote no file under {folders['output']} for chunk {number}"
                logger.line(reason)
                return Outcome("failed", reason, "Check ComfyUI's log; is its output folder elsewhere?")
            existing = await _save_chunk(spec, native, end, shapes, folders, logger, events)
            done = end
        return Outcome("succeeded", "ComfyUI's trainer wrote the final LoRA")

    def _chunk_graph(
        self, template: Template, spec: TrainSpec, number: int, steps: int, existing: str, prefix: str
    ) -> dict[str, Any]:
        """The graph of chunk `number`: `steps` more steps, from the LoRA `existing` ("[None]": new)."""
        dtype = ComfyTrainerSettings.model_validate(spec.settings).training_dtype
        return template.fill(
            {
                "checkpoint_name": spec.checkpoint,
                "dataset_folder": f"{OWN_FOLDER}/{spec.training_id}",
                "steps": steps,
                "learning_rate": spec.learning_rate,
                "rank": spec.network_dim,
                "seed": spec.seed + number - 1,  # a new noise stream per chunk, reproducibly
                "training_dtype": dtype,
                "lora_dtype": dtype,
                "existing_lora": existing,
                "filename_prefix": prefix,
            }
        )

    async def _run_chunk(
        self,
        graph: dict[str, Any],
        prompt_id: str,
        steps: int,
        done: int,
        meter: _StepMeter,
        events: TrainEvents,
        stop: asyncio.Event,
    ) -> Outcome | None:
        """One prompt; None when it succeeded, else how the training ended."""

        async def on_progress(value: int, most: int) -> None:
            if most != steps:
                return  # another node's bar (a tiled VAE encode), not the trainer's steps
            await events.progress(meter.at(done + value))

        timeout = CHUNK_TIMEOUT_BASE_S + CHUNK_TIMEOUT_PER_STEP_S * steps
        task = asyncio.create_task(
            self._comfy.run(graph, prompt_id, on_progress, timeout, require_images=False, cancelled=stop)
        )
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                try:
                    await self._comfy.interrupt(prompt_id)
                except PlasmaError as exc:
                    log.warning("could not interrupt training prompt %s: %s", prompt_id, exc)
            try:
                await task
            except PlasmaError as exc:
                if stop.is_set():
                    return _cancelled(done, meter.total)
                return _failure(exc)
            return None  # finished (even if the stop came just after: its checkpoint is kept)
        finally:
            for t in (task, stopper):
                t.cancel()
            await asyncio.gather(task, stopper, return_exceptions=True)

    async def _folders(self, training_id: str) -> dict[str, Path]:
        """ComfyUI's input/, output/ and models/loras/ subfolders this training owns."""
        root = self._cfg.require_comfyui_dir()
        argv: list[str] = []
        try:
            argv = [str(a) for a in (await self._comfy.system_stats()).get("system", {}).get("argv", [])]
        except PlasmaError:
            pass  # ComfyUI's absence is reported by the first prompt
        return comfy_folders(argv, root, training_id)

    async def abandon(self, spec: TrainSpec, state: dict[str, Any]) -> None:
        """The daemon died mid-chunk: the prompt may still run in ComfyUI. Stop it, drop our files."""
        facts = RunFacts.model_validate(state)
        if prompt_id := facts.prompt_id:
            try:
                await self._comfy.interrupt(prompt_id)
            except PlasmaError as exc:
                log.warning("training %s: cannot interrupt prompt %s: %s", spec.training_id, prompt_id, exc)
        if facts.comfy_folders:
            paths = {k: Path(v) for k, v in facts.comfy_folders.items()}
            await asyncio.to_thread(remove_folders, paths)


async def _save_chunk(
    spec: TrainSpec,
    native: Path,
    end: int,
    shapes: dict[str, list[int]],
    folders: dict[str, Path],
    logger: _RunLog,
    events: TrainEvents,
) -> str:
    """A chunk's LoRA, ending at step `end`, as kohya's checkpoint file(s); the name the next
    chunk's `existing_lora` takes (none after the last chunk)."""
    metadata = kohya_metadata(spec, end)
    existing = ""
    if saves_step_file(end, spec.steps, spec.save_every):
        path = spec.output_dir / f"{spec.output_name}-step{end:08d}.safetensors"
        await asyncio.to_thread(to_kohya, native, path, shapes, metadata)
        logger.line(f"saving checkpoint: {path}")
        await events.checkpoint(end, path)
    if end == spec.steps:
        final = spec.output_dir / f"{spec.output_name}.safetensors"
        await asyncio.to_thread(to_kohya, native, final, shapes, metadata)
        logger.line(f"saving checkpoint: {final}")
        await events.checkpoint(None, final)
    else:
        existing = await asyncio.to_thread(keep_for_next_chunk, native, folders["loras"], spec, end)
    await asyncio.to_thread(native.unlink, missing_ok=True)
    return existing


def _cancelled(done: int, total: int) -> Outcome:
    return Outcome("cancelled", f"training was cancelled after step {done} of {total}")


def _failure(exc: PlasmaError) -> Outcome:
    """How a failed chunk ended. The out-of-memory advice is LORA-01's; `_run` words it for the
    training's own resolution and network_dim."""
    if _OOM_RE.search(exc.message):
        return Outcome("out_of_memory", f"out of memory: {exc.message}", OOM_ADVICE)
    if exc.code == ErrorCode.COMFYUI_UNAVAILABLE:
        return Outcome(
            "failed",
            f"ComfyUI stopped answering during the training: {exc.message}",
            "If ComfyUI was killed, the system most likely ran out of memory: " + OOM_ADVICE,
        )
    return Outcome("failed", exc.message, "See ComfyUI's log (and the training log) for the details.")


class _StepMeter:
    """Seconds per step from the steps' own timing (model loading between chunks not counted)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._last: tuple[float, int] | None = None
        self._rate: float | None = None

    def at(self, step: int) -> TrainProgress:
        now = time.monotonic()
        if self._last is not None and step > self._last[1]:
            sample = (now - self._last[0]) / (step - self._last[1])
            self._rate = sample if self._rate is None else 0.8 * self._rate + 0.2 * sample
        self._last = (now, step)
        eta = self._rate * (self.total - step) if self._rate is not None else None
        return TrainProgress(step, self.total, None, self._rate, eta)


class _RunLog:
    """The training log of this backend: our own lines (ComfyUI's output is ComfyUI's log)."""

    def __init__(self, path: Path) -> None:
        self._out = Appender(path, "training log")

    def line(self, text: str) -> None:
        self._out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    async def close(self) -> None:
        await self._out.close()
