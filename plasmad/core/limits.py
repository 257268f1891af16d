"""Hardware limits of the artist's machine (M1 Pro, 16 GB unified memory), in one place.

These are facts of the hardware, not preferences: going past them ends in an out-of-memory kill
that can take hours of work with it. Every entry point (HTTP, JSON-RPC, the CLI, the trainer, the
benchmark) validates through `plasmad.generation.validation`, which reads these numbers and nothing else.
"""

from __future__ import annotations

from typing import Any, Final

from plasmad.core.errors import invalid

# Generation (GEN-03)
MAX_WIDTH: Final = 512
MAX_HEIGHT: Final = 768
MIN_SIZE: Final = 64
SIZE_MULTIPLE: Final = 8  # SD 1.5's latent is 1/8 of the image
BATCH_SIZE: Final = 1  # the only safe batch size, for generation and training alike
MAX_STEPS: Final = 150
MAX_CFG: Final = 30.0
MAX_SEED: Final = 2**64 - 1  # KSampler's seed range
DEFAULT_WIDTH: Final = 512
DEFAULT_HEIGHT: Final = 768
DEFAULT_STEPS: Final = 20
DEFAULT_CFG: Final = 7.0
DEFAULT_SAMPLER: Final = "euler_ancestral"
DEFAULT_SCHEDULER: Final = "normal"
DEFAULT_LORA_STRENGTH: Final = 1.0
MAX_LORA_STRENGTH: Final = 2.0

# ControlNet (CTRL-02): one model at a time, strength within the range that keeps the LoRA's say.
CONTROLNET_MODELS_AT_ONCE: Final = 1
CONTROLNET_STRENGTH_MIN: Final = 0.4
CONTROLNET_STRENGTH_MAX: Final = 0.9
CONTROLNET_STRENGTH_DEFAULT: Final = 0.65

# Base model family: SD 1.5 only (SDXL training does not fit in 16 GB).
BASE_MODEL_FAMILY: Final = "sd15"

# Training (LORA-01, GEN-06)
TRAIN_MAX_RESOLUTION: Final = 512
TRAIN_DEFAULT_STEPS: Final = 1000
TRAIN_MAX_STEPS: Final = 20000
TRAIN_DEFAULT_SAVE_EVERY: Final = 200
TRAIN_DEFAULT_NETWORK_DIM: Final = 32
TRAIN_DEFAULT_NETWORK_ALPHA: Final = 16
TRAIN_MAX_NETWORK_DIM: Final = 256  # the LoRA's rank (and alpha): beyond this, memory for nothing
TRAIN_DEFAULT_LEARNING_RATE: Final = 1e-4
TRAININGS_AT_ONCE: Final = 1
# Generation and training never run at once: there is one GPU lock (plasmad.core.gpu_lock).

# Dataset (DATA-01)
DATASET_IMAGE_SIZE: Final = 512
DATASET_MIN_IMAGES: Final = 15
DATASET_MAX_UPSCALE: Final = 2.0
REG_MIN_IMAGES: Final = 100
REG_MAX_IMAGES: Final = 200
REG_DEFAULT_IMAGES: Final = 150

# The benchmark's bar (INFRA-04) is defined for this page; its sampler, scheduler and CFG are the
# generation defaults above.
BENCH_WIDTH: Final = 512
BENCH_HEIGHT: Final = 512
BENCH_STEPS: Final = 20


# --- the checks every entry point runs (a 400 naming the field) -------------------------------------


def check_batch_size(value: int, field: str = "batch_size") -> None:
    if value != BATCH_SIZE:
        raise invalid(
            field,
            f"{value} is not allowed: batch size {BATCH_SIZE} is the only safe value "
            "on 16 GB of unified memory",
        )


def check_size(width: int, height: int, field: str = "resolution") -> None:
    for name, value, most in (("width", width, MAX_WIDTH), ("height", height, MAX_HEIGHT)):
        where = f"{field}.{name}" if field else name
        if value > most:
            raise invalid(
                where,
                f"{value} is over the hardware limit of {most} "
                f"(max {MAX_WIDTH}x{MAX_HEIGHT} on an M1 Pro 16 GB)",
            )
        if value < MIN_SIZE:
            raise invalid(where, f"{value} is under the minimum of {MIN_SIZE}")
        if value % SIZE_MULTIPLE:
            raise invalid(where, f"{value} is not a multiple of {SIZE_MULTIPLE}")


def fit_size(width: int, height: int) -> tuple[int, int]:
    """The generation size for an image of `width` x `height` when none is asked for: its own,
    scaled down (keeping the aspect) to fit MAX_WIDTH x MAX_HEIGHT, or up to MIN_SIZE a side, and
    rounded to multiples of SIZE_MULTIPLE. An aspect too extreme for both ends is cropped instead
    (each side clamped; the graph crops to the centre)."""
    scale = min(1.0, MAX_WIDTH / width, MAX_HEIGHT / height)
    scale = max(scale, MIN_SIZE / width, MIN_SIZE / height)

    def side(value: int, most: int) -> int:
        rounded = round(value * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE
        return min(most, max(MIN_SIZE, rounded))

    return side(width, MAX_WIDTH), side(height, MAX_HEIGHT)


def check_controlnet_strength(value: float, field: str = "controlnetStrength") -> None:
    lo, hi = CONTROLNET_STRENGTH_MIN, CONTROLNET_STRENGTH_MAX
    if not lo <= value <= hi:
        raise invalid(field, f"{value} is outside {lo}-{hi}")


def check_train_resolution(value: int, field: str = "resolution") -> None:
    if value > TRAIN_MAX_RESOLUTION:
        raise invalid(
            field,
            f"{value} is over the training limit of {TRAIN_MAX_RESOLUTION} "
            "(SD 1.5 LoRA training at batch size 1 on an M1 Pro 16 GB)",
        )
    if value < MIN_SIZE:
        raise invalid(field, f"{value} is under the minimum of {MIN_SIZE}")
    if value % SIZE_MULTIPLE:
        raise invalid(field, f"{value} is not a multiple of {SIZE_MULTIPLE}")


def check_graph(graph: dict[str, Any], field: str = "workflow") -> None:
    """The limits, checked on a ComfyUI graph run as it is (a reproduction of a page's
    hand-editable `.workflow.json`): every node's batch size, size and steps, where they are plain
    numbers. The field named is `workflow.<node>.<input>`."""
    for node_id, node in graph.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        where = f"{field}.{node_id}"
        batch, width, height, steps = (_number(inputs, n) for n in ("batch_size", "width", "height", "steps"))
        if batch is not None:
            check_batch_size(batch, f"{where}.batch_size")
        if width is not None and height is not None:
            check_size(width, height, where)
        if steps is not None and not 1 <= steps <= MAX_STEPS:
            raise invalid(f"{where}.steps", f"{steps} is outside 1-{MAX_STEPS}")


def _number(inputs: dict[str, Any], name: str) -> int | None:
    """A node input that is a plain whole number (not a link to another node's output)."""
    value = inputs.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
