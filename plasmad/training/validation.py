"""Training request validation (LORA-01, GEN-06): the hardware limits first (cheap, and GEN-06
wants them refused at the API), then the dataset gate and the base checkpoint."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plasmad import dataset
from plasmad.comfy import model_catalog, model_paths
from plasmad.core.config import Config
from plasmad.core.errors import PlasmaError, invalid, not_configured
from plasmad.core.limits import check_batch_size, check_train_resolution
from plasmad.core.wire import TrainRequest

# It becomes file names (`<name>.safetensors`, `<name>-step00000200.safetensors`) in the artist's
# loras folder: no separators, no leading dot, nothing a shell or ComfyUI's list would mangle.
_OUTPUT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_output_name(name: str, field: str = "outputName") -> None:
    if name.lower().endswith(".safetensors"):
        raise invalid(field, f"{name!r}: give the name without .safetensors")
    if not _OUTPUT_NAME_RE.fullmatch(name) or name.endswith("."):
        raise invalid(
            field, f"{name!r} must be letters, digits, '.', '_' or '-', starting with a letter or digit"
        )


def _absolute(text: str, field: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_absolute():
        # The daemon's working folder means nothing to the caller (plasmactl resolves its paths).
        raise invalid(field, f"{text!r} must be an absolute path")
    return path


@dataclass(frozen=True)
class TrainPlan:
    """A validated training: absolute paths, the base checkpoint, and what the checks warned about."""

    dataset_dir: Path
    image_dir: Path  #: the <repeats>_<trigger> folder inside it
    reg_dir: Path | None  #: kohya's --reg_data_dir, when there is a regularisation set
    checkpoint: str  #: a checkpoint name as ComfyUI lists it: the one generation uses
    checkpoint_path: Path  #: where ComfyUI finds it (a symlink is left as it is: kohya follows it)
    images: int  #: originals and mirrored copies
    warnings: list[str]
    request: dict[str, Any]  #: the wire request, paths absolute


async def validate_train(req: TrainRequest, cfg: Config) -> TrainPlan:
    """The hardware limits first (cheap, and GEN-06 wants them refused at the API), then the dataset
    gate and the base checkpoint. Which trainer runs it is checked by plasmad.training.ops."""
    check_batch_size(req.batch_size)
    check_train_resolution(req.resolution)
    check_output_name(req.output_name)
    dataset_dir = _absolute(req.dataset_dir, "datasetDir")
    reg = _absolute(req.reg_dataset_dir, "regDatasetDir") if req.reg_dataset_dir else None
    report = await asyncio.to_thread(
        dataset.require_dataset,
        dataset_dir,
        cfg.trigger_word,
        reg_data_dir=reg,
        reg_required=True if reg is not None else None,
        field_name="datasetDir",
    )
    assert report.image_dir is not None  # the gate passed
    warnings = [f"dataset: {w}" for w in report.warnings]
    if req.save_every_steps >= req.steps:
        warnings.append(
            f"saveEverySteps {req.save_every_steps} >= steps {req.steps}: only the final LoRA is saved, "
            "so there are no checkpoints to compare (LORA-02)"
        )
    if not cfg.checkpoint:
        raise not_configured(
            "PLASMA_CHECKPOINT", "training starts from the SD 1.5 checkpoint generation uses"
        )
    try:
        folders = await asyncio.to_thread(model_paths.model_folders, cfg)
        checkpoint_path = await asyncio.to_thread(
            model_catalog.check_model, folders, "checkpoints", cfg.checkpoint, "PLASMA_CHECKPOINT"
        )
    except PlasmaError as exc:
        if exc.field == "COMFYUI_DIR":
            raise
        refusal = not_configured("PLASMA_CHECKPOINT", exc.message)
        refusal.details = exc.details  # the nearest names, where it looked
        raise refusal from None
    request = req.model_dump(mode="json", by_alias=True)
    reg_dir = report.reg_root if report.reg_required else None
    request.update(datasetDir=str(dataset_dir), regDatasetDir=str(reg_dir) if reg_dir else None)
    return TrainPlan(
        dataset_dir=dataset_dir,
        image_dir=report.image_dir,
        reg_dir=reg_dir,
        checkpoint=cfg.checkpoint,
        checkpoint_path=checkpoint_path,
        images=report.images,
        warnings=warnings,
        request=request,
    )

