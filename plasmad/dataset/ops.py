"""The regularisation set through the daemon's queue (DATA-03): one generation job per missing image.

`reg` works out which reg images of a dataset are still missing (the library's `missing_reg_items`:
fixed names, seeds base+index) and queues one ordinary generation for each through
`Core.submit_generations`, on the base checkpoint with no LoRA (the txt2img-base template). Each
job carries a `Destination`: the reg item's image and caption paths, checked here when it is
queued (inside the dataset's reg folder, not there yet); the worker creates them, never over a
file. So running it again only fills what is missing; images whose job is still queued or running
are reported, not queued a second time.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from plasmad import dataset
from plasmad.comfy.templates import TXT2IMG_BASE
from plasmad.context import Core
from plasmad.core.errors import ErrorCode, PlasmaError, invalid
from plasmad.core.jobs import Destination, GenerationState
from plasmad.core.limits import REG_MAX_IMAGES, REG_MIN_IMAGES, check_size
from plasmad.core.states import ACTIVE_STATES, JobKind
from plasmad.core.wire import DatasetRegRequest, GenerateRequest, RegView, checked, parse

log = logging.getLogger(__name__)

#: job.result["destination"]["kind"] of a regularisation image.
REG_IMAGE = "regImage"


def _as_field(exc: PlasmaError, field: str) -> PlasmaError:
    """The library names its own arguments (`class_name`); the wire says `className`."""
    message = exc.message.split(": ", 1)[-1] if exc.field else exc.message
    return invalid(field, message, exc.details)


def _not_a_folder(path: Path) -> bool:
    return path.exists() and not path.is_dir()


def reg_destination(dataset_dir: Path, class_name: str, item: dataset.RegItem) -> Destination:
    """Where a reg image's job writes its image and caption."""
    return Destination(
        kind=REG_IMAGE,
        image=str(item.image_path),
        caption=str(item.caption_path),
        caption_text=item.caption,
        details={
            "datasetDir": str(dataset_dir),
            "className": class_name,
            "index": item.index,
            "seed": item.seed,
        },
    )


class DatasetOps:
    """Dataset operations that need the daemon (the queue, ComfyUI)."""

    def __init__(self, core: Core) -> None:
        self._core = core
        # Two reg requests for one set at once must not both queue the same missing image.
        self._lock = asyncio.Lock()

    async def reg(self, body: Any) -> dict[str, Any]:
        """Queue a generation for every missing image of a dataset's regularisation set."""
        core = self._core
        core.check_accepting()
        req = parse(DatasetRegRequest, body)
        dataset_dir, class_name, folder = await self._check_reg_request(req)
        base_seed = dataset.REG_BASE_SEED if req.seed is None else req.seed
        async with self._lock:
            # Active jobs first, then the files: a job that finishes in between has written its
            # image by the time the folder is read, so it is never queued a second time.
            active = await self._active_reg_images()
            missing = await asyncio.to_thread(dataset.missing_reg_items, folder, req.count, base_seed)
            wanted = [item for item in missing if str(item.image_path) not in active]
            # All or nothing: a refusal (the checkpoint, say) leaves nothing half-queued.
            queued_jobs = await core.submit_generations(
                [
                    # No loraId: the txt2img-base template. The reg set is the base model's prior, not Spyke.
                    (_reg_request(item, req), reg_destination(dataset_dir, class_name, item))
                    for item in wanted
                ]
            )
        queued = [job.id for job in queued_jobs]
        jobs = [
            {"id": job.id, "index": item.index, "image": str(item.image_path), "new": True}
            for item, job in zip(wanted, queued_jobs, strict=True)
        ]
        pending = [
            {"id": active[image], "index": item.index, "image": image, "new": False}
            for item in missing
            if (image := str(item.image_path)) in active
        ]
        if queued:
            log.info("reg set %s: %d image(s) queued, %d already queued", folder, len(queued), len(pending))
        answer: dict[str, Any] = {
            "datasetDir": str(dataset_dir),
            "regDir": str(folder),
            "className": class_name,
            "count": req.count,
            "seed": base_seed,
            "existing": req.count - len(missing),
            "queued": queued,
            "alreadyQueued": [p["id"] for p in pending],
            "jobs": sorted(jobs + pending, key=lambda j: int(j["index"])),
        }
        return dict(checked(RegView, answer))

    async def _check_reg_request(self, req: DatasetRegRequest) -> tuple[Path, str, Path]:
        """The dataset folder, the class name and the reg folder; INVALID_INPUT (or NOT_CONFIGURED:
        no base template) before anything is queued."""
        dataset_dir = Path(req.dataset_dir)
        if not dataset_dir.is_absolute():
            raise invalid("datasetDir", f"{req.dataset_dir!r} must be an absolute path")
        if not await asyncio.to_thread(dataset_dir.is_dir):
            raise invalid("datasetDir", f"{dataset_dir} is not a folder (plasmactl dataset build / add)")
        least = 1 if req.allow_small else REG_MIN_IMAGES
        if not least <= req.count <= REG_MAX_IMAGES:
            hint = "" if req.allow_small else " (allowSmall permits fewer, for tests and demos)"
            raise invalid("count", f"{req.count} is outside {least}-{REG_MAX_IMAGES} (DATA-03){hint}")
        class_name = req.class_name or dataset.REG_DEFAULT_CLASS
        try:
            folder = dataset.reg_dir(dataset_dir, class_name)
        except PlasmaError as exc:
            raise _as_field(exc, "className") from None
        check_size(req.width, req.height, field="")
        templates = self._core.templates
        if not templates.has(TXT2IMG_BASE):
            raise PlasmaError(
                ErrorCode.NOT_CONFIGURED,
                f"{templates.dir} has no {TXT2IMG_BASE}.json: reg images use the base model, no LoRA",
            )
        for path in (folder.parent, folder):
            if await asyncio.to_thread(_not_a_folder, path):
                raise invalid("datasetDir", f"{path} is in the way of the reg folder: it is not a folder")
        return dataset_dir, class_name, folder

    async def _active_reg_images(self) -> dict[str, str]:
        """Reg images whose job is queued or running: image path -> job id."""
        active: dict[str, str] = {}
        for job in await self._core.store.in_states(JobKind.GENERATE, ACTIVE_STATES):
            dest = GenerationState.model_validate(job.result).destination
            if dest is not None and dest.kind == REG_IMAGE:
                active[dest.image] = job.id
        return active


def _reg_request(item: dataset.RegItem, req: DatasetRegRequest) -> GenerateRequest:
    return parse(
        GenerateRequest,
        {
            "prompt": item.prompt,
            "negativePrompt": item.negative_prompt,
            "seed": item.seed,
            "steps": req.steps,
            "resolution": {"width": req.width, "height": req.height},
            **({"checkpoint": req.checkpoint} if req.checkpoint else {}),
        },
    )
