"""kohya's command line: sd-scripts' `train_network.py` with LORA-01's parameters, nothing else.

The hardware limits are checked once more here, where they turn into a process: a config line
(KOHYA_EXTRA_ARGS) can never raise the batch size or swap the optimizer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TypeAlias

from plasmad.core import limits
from plasmad.core.errors import invalid

MixedPrecision: TypeAlias = Literal["fp16", "no"]

# kohya's buckets are multiples of this for SD 1.5 (train_network.py asserts bucket_reso_steps % 64).
BUCKET_STEP: Final = 64

# The environment kohya runs with, on top of the daemon's own.
KOHYA_ENV: Final[Mapping[str, str]] = {
    # Ops that MPS lacks fall back to the CPU instead of failing the run.
    "PYTORCH_ENABLE_MPS_FALLBACK": "1",
    # Progress and "saving checkpoint" lines must reach us when printed, not when a buffer fills.
    "PYTHONUNBUFFERED": "1",
    # kohya prints Japanese; a daemon started without a UTF-8 locale must not crash on it.
    "PYTHONIOENCODING": "utf-8",
}


@dataclass
class KohyaParams:
    """One LoRA training (LORA-01). Batch size and optimizer are not parameters: they are fixed."""

    checkpoint: Path
    train_data_dir: Path
    output_dir: Path
    output_name: str
    reg_data_dir: Path | None = None
    steps: int = limits.TRAIN_DEFAULT_STEPS
    save_every_n_steps: int = limits.TRAIN_DEFAULT_SAVE_EVERY  # 0: no intermediate checkpoints
    resolution: int = limits.TRAIN_MAX_RESOLUTION
    network_dim: int = limits.TRAIN_DEFAULT_NETWORK_DIM
    network_alpha: float = limits.TRAIN_DEFAULT_NETWORK_ALPHA
    learning_rate: float = limits.TRAIN_DEFAULT_LEARNING_RATE
    mixed_precision: MixedPrecision = "no"  # take PreflightReport.mixed_precision
    seed: int = 42
    extra_args: list[str] = field(default_factory=list)  # from config, e.g. --tokenizer_cache_dir DIR


# Flags build_command sets itself. extra_args may not touch them: a config line must never raise
# the batch size or swap the optimizer for AdamW8bit (bitsandbytes has no Apple GPU support).
_MANAGED_FLAGS: Final = frozenset(
    {
        "--pretrained_model_name_or_path",
        "--train_data_dir",
        "--reg_data_dir",
        "--output_dir",
        "--output_name",
        "--network_module",
        "--network_dim",
        "--network_alpha",
        "--resolution",
        "--enable_bucket",
        "--min_bucket_reso",
        "--max_bucket_reso",
        "--bucket_reso_steps",
        "--bucket_no_upscale",
        "--train_batch_size",
        "--max_train_steps",
        "--save_every_n_steps",
        "--mixed_precision",
        "--optimizer_type",
        "--use_8bit_adam",
        "--learning_rate",
        "--save_model_as",
        "--caption_extension",
        "--seed",
        "--console_log_simple",
    }
)
_OUTPUT_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _check_params(p: KohyaParams) -> None:
    """The hardware limits, checked once more where they turn into a process."""
    if not _OUTPUT_NAME_RE.fullmatch(p.output_name):
        raise invalid("output_name", "letters, digits, '.', '_' and '-' only (it becomes a file name)")
    if not 1 <= p.steps <= limits.TRAIN_MAX_STEPS:
        raise invalid("steps", f"must be between 1 and {limits.TRAIN_MAX_STEPS}")
    if p.save_every_n_steps < 0:
        raise invalid("save_every_n_steps", "must be 0 (off) or more")
    if not limits.MIN_SIZE <= p.resolution <= limits.TRAIN_MAX_RESOLUTION:
        raise invalid("resolution", f"must be between {limits.MIN_SIZE} and {limits.TRAIN_MAX_RESOLUTION}")
    if p.resolution % limits.SIZE_MULTIPLE:
        raise invalid("resolution", f"must be a multiple of {limits.SIZE_MULTIPLE}")
    if p.network_dim < 1 or p.network_alpha <= 0 or p.learning_rate <= 0:
        raise invalid("network", "network_dim, network_alpha and learning_rate must be positive")
    if p.mixed_precision not in ("fp16", "no"):
        raise invalid("mixed_precision", "must be 'fp16' or 'no'")
    for arg in p.extra_args:
        if arg.split("=", 1)[0] in _MANAGED_FLAGS:
            raise invalid("extra_args", f"{arg} is set by Plasma and may not be overridden")
        if "8bit" in arg.lower():
            raise invalid("extra_args", f"{arg}: 8-bit optimizers do not run on this machine")


def trained_resolution(resolution: int) -> int:
    """The side kohya trains at for a requested `resolution`: its bucket, the multiple of 64 at or
    below it (200 -> 192; 64..512 in steps of 64 are trained as asked)."""
    return max(BUCKET_STEP, resolution // BUCKET_STEP * BUCKET_STEP)


def _resolution_args(resolution: int) -> list[str]:
    """Bucketing, so that the dataset's 512 px images are scaled down to the training resolution.

    Without it kohya trains at exactly --resolution and refuses any larger image ("image too large,
    but cropping and bucketing are disabled"): every resolution under 512 failed at step 0. The
    buckets are capped at the trained side, so a square image becomes a square of that side and a
    regularisation image of another shape gets the bucket of its aspect ratio within that area.
    """
    side = trained_resolution(resolution)
    return [
        "--resolution", f"{side},{side}",
        "--enable_bucket",
        "--min_bucket_reso", str(BUCKET_STEP),
        "--max_bucket_reso", str(side),
        "--bucket_reso_steps", str(BUCKET_STEP),
    ]  # fmt: skip


def abs_path(path: Path) -> str:
    """kohya runs in its own folder, so a relative path would point somewhere else there."""
    return os.path.abspath(path)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def build_command(
    kohya_python: Path,
    kohya_script: Path,
    p: KohyaParams,
    *,
    use_accelerate: bool = True,
) -> tuple[list[str], dict[str, str]]:
    """The argv and the extra environment (on top of os.environ) for one training.

    Run it with cwd `kohya_cwd(kohya_script)`: sd-scripts imports its own `library` package.
    `use_accelerate=False` runs the script directly (tests, with a fake trainer); for real runs
    the launcher is `python -m accelerate.commands.launch`, which ties it to kohya's own venv.
    """
    _check_params(p)
    python = str(kohya_python)
    argv = [python if os.sep not in python else abs_path(kohya_python)]
    if use_accelerate:
        argv += ["-m", "accelerate.commands.launch", "--num_cpu_threads_per_process", "2"]
    argv.append(abs_path(kohya_script))
    # Before ours: argparse keeps the last value, so ours would win even past the check above.
    argv += p.extra_args
    argv += ["--pretrained_model_name_or_path", abs_path(p.checkpoint)]
    argv += ["--train_data_dir", abs_path(p.train_data_dir)]
    if p.reg_data_dir is not None:
        argv += ["--reg_data_dir", abs_path(p.reg_data_dir)]
    argv += [
        "--output_dir", abs_path(p.output_dir),
        "--output_name", p.output_name,
        "--network_module", "networks.lora",
        "--network_dim", str(p.network_dim),
        "--network_alpha", _number(p.network_alpha),
        *_resolution_args(p.resolution),
        "--train_batch_size", str(limits.BATCH_SIZE),
        "--max_train_steps", str(p.steps),
    ]  # fmt: skip
    if p.save_every_n_steps > 0:
        argv += ["--save_every_n_steps", str(p.save_every_n_steps)]
    argv += [
        "--mixed_precision", p.mixed_precision,
        "--optimizer_type", "AdamW",
        "--learning_rate", _number(p.learning_rate),
        "--save_model_as", "safetensors",
        "--caption_extension", ".txt",
        "--seed", str(p.seed),
        "--console_log_simple",
    ]  # fmt: skip
    return argv, dict(KOHYA_ENV)


def kohya_cwd(kohya_script: Path) -> Path:
    """The folder kohya must run in: the one holding train_network.py and its `library`."""
    return Path(abs_path(kohya_script)).parent
