"""The kohya backend: sd-scripts' `train_network.py` under `accelerate launch` (LORA-01).

Everything about kohya itself (its command line, its output, its outcomes, the preflight) lives in
`plasmad.training.kohya`; this composes it for the daemon: the preflight at submission decides the mixed
precision and words the warnings, the run feeds kohya's events to the training, and after a crash
`abandon` stops a trainer the dead daemon left behind, so no training holds the GPU behind the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from typing import Any

from plasmad.core.config import Config
from plasmad.core.errors import PlasmaError, not_configured
from plasmad.training import kohya
from plasmad.training.backend import Outcome, Prepared, TrainEvents, TrainProgress, TrainSpec

log = logging.getLogger(__name__)

TERM_TIMEOUT_S = 10.0  #: a cancelled kohya gets this long after SIGTERM before SIGKILL


class KohyaTrainer:
    name = "kohya"

    def __init__(self, cfg: Config) -> None:
        assert cfg.kohya_python is not None and cfg.kohya_script is not None
        self._python = cfg.kohya_python
        self._script = cfg.kohya_script
        self._extra = list(cfg.kohya_extra_args)

    async def prepare(self, spec: TrainSpec) -> Prepared:
        """INFRA-03 / LORA-04 in seconds: the venv, the device torch trains on, fp16 or not."""
        report = await kohya.preflight(self._python, self._script)
        report.raise_for_errors()
        settings = {
            "mixedPrecision": report.mixed_precision,
            "device": report.device,
            "torch": report.torch_version,
            "accelerate": report.accelerate_version,
        }
        # The command line is checked now too (extra args that touch our flags, the name), so a bad
        # KOHYA_EXTRA_ARGS is refused at submission rather than after the queue.
        try:
            kohya.build_command(self._python, self._script, self._params(spec, report.mixed_precision))
        except PlasmaError as exc:
            if exc.field != "extra_args":
                raise
            raise not_configured("KOHYA_EXTRA_ARGS", exc.message.split(": ", 1)[-1]) from None
        return Prepared(settings=settings, warnings=[f"kohya: {w}" for w in report.warnings])

    def _params(self, spec: TrainSpec, mixed_precision: kohya.MixedPrecision) -> kohya.KohyaParams:
        return kohya.KohyaParams(
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
        precision = spec.settings.get("mixedPrecision", "no")
        argv, env = kohya.build_command(
            self._python, self._script, self._params(spec, "fp16" if precision == "fp16" else "no")
        )
        await events.started({"outputDir": str(spec.output_dir)})

        async def on_event(event: kohya.Event) -> None:
            if isinstance(event, kohya.Progress):
                await events.progress(
                    TrainProgress(event.step, event.total, event.loss, event.sec_per_step, event.eta_seconds)
                )
            elif isinstance(event, kohya.CheckpointSaved):
                await events.checkpoint(event.step, event.path)

        cwd = kohya.kohya_cwd(self._script)
        result = await kohya.run_kohya(
            argv, env, cwd, spec.log_path, on_event, stop, term_timeout=TERM_TIMEOUT_S
        )
        final = spec.output_dir / f"{spec.output_name}.safetensors"
        whole = await asyncio.to_thread(lambda: final.is_file() and kohya.safetensors_complete(final))
        return kohya.classify_outcome(result.exit_code, result.signal, whole, result.tail, result.cancelled)

    async def abandon(self, spec: TrainSpec, state: dict[str, Any]) -> None:
        """A daemon killed mid-training leaves kohya running in its own session (that is what lets
        it survive us). It would hold the GPU while generation resumes, so stop it: its processes are
        the ones whose command line names this training's output folder, a path no other program has.
        """
        groups = await _groups_naming(str(spec.output_dir))
        if not groups:
            return
        log.warning("training %s: stopping the trainer left running (groups %s)", spec.training_id, groups)
        for pgid in groups:
            _signal(pgid, signal.SIGTERM)
        for _ in range(int(TERM_TIMEOUT_S * 10)):
            if not await _groups_naming(str(spec.output_dir)):
                return
            await asyncio.sleep(0.1)
        for pgid in groups:
            _signal(pgid, signal.SIGKILL)


def _signal(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _groups_naming(text: str) -> list[int]:
    """Process groups (other than ours) with a process whose command line contains `text`."""
    try:
        proc = await asyncio.create_subprocess_exec(
            # -ww: never cut the command line at the terminal's width (COLUMNS), where the path is.
            "ps", "-ww", "-A", "-o", "pgid=,command=",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 10.0)
    except (OSError, TimeoutError) as exc:
        log.warning("cannot list processes to find a leftover trainer: %s", exc)
        return []
    own = os.getpgrp()
    groups: set[int] = set()
    for line in out.decode("utf-8", "replace").splitlines():
        pgid_text, _, command = line.strip().partition(" ")
        if text in command and pgid_text.isdigit() and int(pgid_text) not in (own, 0, 1):
            groups.add(int(pgid_text))
    return sorted(groups)
