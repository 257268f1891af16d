"""The kohya backend: sd-scripts' `train_network.py` under `accelerate launch` (LORA-01).

Everything about kohya itself (its command line, its output, its outcomes, the preflight) lives in
the other modules of `plasmad.training.kohya`; this composes it for the daemon: the preflight at
submission decides the mixed precision and words the warnings, the run feeds kohya's events to the
training, and after a crash `abandon` stops a trainer the dead daemon left behind, so no training
holds the GPU behind the lock.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from plasmad.comfy.modelfiles import safetensors_complete
from plasmad.core import processes
from plasmad.core.config import Config
from plasmad.core.errors import PlasmaError, not_configured
from plasmad.core.jobs import StateModel
from plasmad.training.backend import Outcome, Prepared, TrainEvents, TrainProgress, TrainSpec
from plasmad.training.kohya.command import (
    BUCKET_STEP,
    KohyaParams,
    MixedPrecision,
    build_command,
    kohya_cwd,
    trained_resolution,
)
from plasmad.training.kohya.outcome import classify_outcome, oom_advice
from plasmad.training.kohya.output import CheckpointSaved, Event, Progress
from plasmad.training.kohya.preflight import Device, preflight
from plasmad.training.kohya.runner import run_kohya

log = logging.getLogger(__name__)

TERM_TIMEOUT_S = 10.0  #: a cancelled kohya gets this long after SIGTERM before SIGKILL



class KohyaSettings(StateModel):
    """What `prepare` decided, stored with the job (the training's `settings`) and read by `run`."""

    mixed_precision: MixedPrecision
    device: Device | None
    torch: str | None
    accelerate: str | None
    trained_resolution: int  #: the bucket kohya trains at

class KohyaTrainer:
    name = "kohya"

    def __init__(self, cfg: Config) -> None:
        assert cfg.kohya_python is not None and cfg.kohya_script is not None
        self._python = cfg.kohya_python
        self._script = cfg.kohya_script
        self._extra = list(cfg.kohya_extra_args)

    async def prepare(self, spec: TrainSpec) -> Prepared:
        """INFRA-03 / LORA-04 in seconds: the venv, the device torch trains on, fp16 or not."""
        report = await preflight(self._python, self._script, self._extra)
        report.raise_for_errors()
        side = trained_resolution(spec.resolution)
        settings = KohyaSettings(
            mixed_precision=report.mixed_precision,
            device=report.device,
            torch=report.torch_version,
            accelerate=report.accelerate_version,
            trained_resolution=side,
        ).dump()
        warnings = [f"kohya: {w}" for w in report.warnings]
        if side != spec.resolution:
            warnings.append(
                f"kohya trains in buckets of {BUCKET_STEP} px: resolution {spec.resolution} is trained at "
                f"{side}x{side}"
            )
        # The command line is checked now too (extra args that touch our flags, the name), so a bad
        # KOHYA_EXTRA_ARGS is refused at submission rather than after the queue.
        try:
            build_command(self._python, self._script, self._params(spec, report.mixed_precision))
        except PlasmaError as exc:
            if exc.field != "extra_args":
                raise
            raise not_configured("KOHYA_EXTRA_ARGS", exc.message.split(": ", 1)[-1]) from None
        return Prepared(settings=settings, warnings=warnings)

    def _params(self, spec: TrainSpec, mixed_precision: MixedPrecision) -> KohyaParams:
        return KohyaParams(
            checkpoint=spec.checkpoint_path,
            train_data_dir=spec.dataset_dir,
            output_dir=spec.output_dir,
            output_name=spec.output_name,
            reg_data_dir=spec.reg_dir,
            steps=spec.steps,
            save_every_n_steps=spec.save_every if spec.save_every < spec.steps else 0,
            resolution=spec.resolution,
            network_dim=spec.network_dim,
            network_alpha=spec.network_alpha,
            learning_rate=spec.learning_rate,
            mixed_precision=mixed_precision,
            seed=spec.seed,
            extra_args=list(self._extra),
        )

    async def run(self, spec: TrainSpec, events: TrainEvents, stop: asyncio.Event) -> Outcome:
        settings = KohyaSettings.model_validate(spec.settings)
        argv, env = build_command(self._python, self._script, self._params(spec, settings.mixed_precision))
        await events.started({"outputDir": str(spec.output_dir)})

        async def on_event(event: Event) -> None:
            if isinstance(event, Progress):
                await events.progress(
                    TrainProgress(event.step, event.total, event.loss, event.sec_per_step, event.eta_seconds)
                )
            elif isinstance(event, CheckpointSaved):
                await events.checkpoint(event.step, event.path)

        cwd = kohya_cwd(self._script)
        result = await run_kohya(argv, env, cwd, spec.log_path, on_event, stop, term_timeout=TERM_TIMEOUT_S)
        final = spec.output_dir / f"{spec.output_name}.safetensors"
        whole = await asyncio.to_thread(lambda: final.is_file() and safetensors_complete(final))
        advice = oom_advice(spec.resolution, spec.network_dim)
        return classify_outcome(
            result.exit_code, result.signal, whole, result.tail, result.cancelled, advice_on_oom=advice
        )

    async def abandon(self, spec: TrainSpec, state: dict[str, Any]) -> None:
        """A daemon killed mid-training leaves kohya running in its own session (that is what lets
        it survive us). It would hold the GPU while generation resumes, so stop it: its processes are
        the ones whose command line names this training's output folder, a path no other program has.
        """
        output_dir = str(spec.output_dir)
        groups = await processes.groups_naming(output_dir)
        if not groups:
            return
        log.warning("training %s: stopping the trainer left running (groups %s)", spec.training_id, groups)

        async def gone() -> bool:
            return not await processes.groups_naming(output_dir)

        await processes.stop_groups(groups, processes.polled(gone, 0.1), TERM_TIMEOUT_S)
