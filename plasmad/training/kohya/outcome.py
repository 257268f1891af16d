"""What a finished kohya run means (LORA-01): succeeded, no data, out of memory, cancelled, failed,
and what the artist should do about it.

Measured on real runs (shared/fixtures/kohya): a missing dataset exits 0 with no file, so success
is "the final file exists", never the exit code alone; under `accelerate launch` a trainer killed
for lack of memory shows up as the launcher exiting 1 with `died with <Signals.SIGKILL: 9>`.
"""

from __future__ import annotations

import re
import signal as signals
from collections.abc import Sequence
from typing import Final

from plasmad.core import limits
from plasmad.training.backend import Outcome
from plasmad.training.kohya.command import BUCKET_STEP, trained_resolution
from plasmad.training.kohya.output import EXCEPTION_RE, NO_DATA_RE

# Below this a SD 1.5 LoRA learns little of a character: the advice never goes lower.
MIN_ADVISED_RESOLUTION: Final = 256
MIN_ADVISED_DIM: Final = 8


def lower_resolutions(resolution: int) -> list[int]:
    """Up to two training resolutions below `resolution` to try after running out of memory: each
    one the API accepts and kohya trains as asked (a multiple of its 64 px buckets)."""
    side = trained_resolution(resolution)
    return [r for r in (side - BUCKET_STEP, side - 2 * BUCKET_STEP) if r >= MIN_ADVISED_RESOLUTION]


def oom_advice(resolution: int = limits.TRAIN_MAX_RESOLUTION, network_dim: int = 32) -> str:
    """What to do after running out of memory, for the settings that ran out: only lower settings
    that run (tests/test_kohya.py trains on each suggestion's command line)."""
    steps = [
        "Training ran out of memory. Quit other apps (browser, image editors, a running ComfyUI generation)"
    ]
    lower = lower_resolutions(resolution)
    if lower:
        then = f", then {lower[1]}" if len(lower) > 1 else ""
        steps.append(f"lower the training resolution from {resolution} (--resolution {lower[0]}{then})")
    steps.append("keep the batch size at 1")
    if network_dim // 2 >= MIN_ADVISED_DIM:
        half = network_dim // 2
        steps.append(f"and lower network_dim if it still fails (--dim {half} instead of {network_dim})")
    return ", ".join(steps) + ". Checkpoints saved before the failure are kept."


OOM_ADVICE: Final = oom_advice()  #: for LORA-01's defaults: 512 px, network_dim 32
NO_DATA_ADVICE: Final = (
    "kohya found no training images: train_data_dir must be the parent of folders named "
    "<repeats>_<token> (e.g. 10_spyke_plasma_v1) that hold the images and their .txt captions."
)
_OOM_RE: Final = re.compile(
    r"died with <Signals\.SIGKILL: 9>|Cannot allocate memory|MPS backend out of memory"
    r"|CUDA out of memory|OutOfMemoryError"
)
_FAILURE_ADVICE: Final = (
    (
        re.compile(r"pretrained_model_name_or_path"),
        "Check that the base checkpoint exists and is a full-size SD 1.5 .safetensors file.",
    ),
    (
        re.compile(r"fp16 mixed precision requires a GPU"),
        "This accelerate is too old for fp16 on an Apple GPU: upgrade accelerate (1.8 or newer) in "
        "kohya's venv, or train with mixed precision off.",
    ),
    (
        re.compile(r"tokenizer|clip-vit-large-patch14|huggingface\.co", re.IGNORECASE),
        "kohya could not load the CLIP tokenizer: pass --tokenizer_cache_dir with a cached "
        "openai_clip-vit-large-patch14 folder in it.",
    ),
)


def _last_line(tail: Sequence[str], pattern: re.Pattern[str]) -> str | None:
    for line in reversed(tail):
        if pattern.search(line):
            return line
    return None


def _failure_reason(exit_code: int | None, signal: int | None, tail: Sequence[str]) -> str:
    for line in reversed(tail):
        # The launcher's own CalledProcessError only repeats the argv; the trainer's error is above it.
        if EXCEPTION_RE.match(line) and not line.startswith("subprocess.CalledProcessError"):
            return line
    error = _last_line(tail, re.compile(r"\bERROR\b"))
    if error is not None:
        return error
    if signal is not None:
        try:
            return f"the trainer was stopped by {signals.Signals(signal).name}"
        except ValueError:
            return f"the trainer was stopped by signal {signal}"
    if exit_code == 0:
        return "kohya exited without an error but wrote no final LoRA file"
    if exit_code is None:
        return "the trainer did not exit, even after SIGKILL"
    return f"kohya exited with code {exit_code}"


def classify_outcome(
    exit_code: int | None,
    signal: int | None,
    final_file_exists: bool,
    tail: Sequence[str],
    cancelled: bool,
    *,
    advice_on_oom: str = OOM_ADVICE,
) -> Outcome:
    """What a finished run means. Success needs the final file: kohya exits 0 on a missing dataset.
    `advice_on_oom`: `oom_advice` for the run's own resolution and network_dim."""
    if final_file_exists and exit_code == 0:
        return Outcome("succeeded", "kohya wrote the final LoRA")
    if cancelled:
        return Outcome("cancelled", "training was cancelled")
    oom = _last_line(tail, _OOM_RE)
    # 128 + 9: the same kill, reported through a shell.
    if signal == signals.SIGKILL or exit_code == 128 + signals.SIGKILL or (oom and "died with" in oom):
        return Outcome(
            "out_of_memory",
            "the training process was killed (SIGKILL), most likely by the system for lack of memory",
            advice_on_oom,
        )
    if oom is not None:
        return Outcome("out_of_memory", f"out of memory: {oom}", advice_on_oom)
    no_data = _last_line(tail, NO_DATA_RE)
    if no_data is not None:
        # The line is English, then " / " and the same in Japanese.
        return Outcome("no_data", no_data.split(" / ")[0].strip(), NO_DATA_ADVICE)
    reason = _failure_reason(exit_code, signal, tail)
    if final_file_exists:
        reason += " (the final LoRA file was written and may still be usable)"
    advice = next((text for pattern, text in _FAILURE_ADVICE if pattern.search(reason)), None)
    return Outcome("failed", reason, advice or "See the training log for kohya's full output.")
