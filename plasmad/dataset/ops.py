"""The regularisation set through the daemon's queue (DATA-03): one generation job per missing image.

`dataset_reg` works out which reg images of a dataset are still missing (the library's
`missing_reg_items`: fixed names, seeds base+index) and queues one ordinary generation job for each,
on the base checkpoint with no LoRA (the txt2img-base template). Each job carries a `destination`
in its result: the reg item's image and caption paths, checked here when it is queued (inside the
dataset's reg folder, not there yet) and again when the worker writes it (`write_destination`,
called by `plasmad.generation.handler`). Nothing is ever overwritten, so running it again only fills what is
missing; images whose job is still queued or running are reported, not queued a second time.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plasmad import dataset
from plasmad.comfy.templates import TXT2IMG_BASE
from plasmad.core.errors import ErrorCode, PlasmaError, invalid
from plasmad.core.fsutil import same_content
from plasmad.core.limits import MAX_SEED, REG_MAX_IMAGES, REG_MIN_IMAGES
from plasmad.core.states import ACTIVE_STATES, JobKind
from plasmad.core.wire import DatasetRegRequest, GenerateRequest, parse
from plasmad.generation.validation import GenerationPlan, check_size, validate_generate

if TYPE_CHECKING:
    from plasmad.api.service import Service

log = logging.getLogger(__name__)

#: job.result["destination"]["kind"] of a regularisation image.
REG_IMAGE = "regImage"


def _as_field(exc: PlasmaError, field: str) -> PlasmaError:
    """The library names its own arguments (`class_name`); the wire says `className`."""
    message = exc.message.split(": ", 1)[-1] if exc.field else exc.message
    return invalid(field, message, exc.details)


def _not_a_folder(path: Path) -> bool:
    return path.exists() and not path.is_dir()


def reg_destination(dataset_dir: Path, class_name: str, item: dataset.RegItem) -> dict[str, Any]:
    """What a reg image's job carries in its result, so that the worker writes it there."""
    return {
        "kind": REG_IMAGE,
        "datasetDir": str(dataset_dir),
        "className": class_name,
        "index": item.index,
        "seed": item.seed,
        "image": str(item.image_path),
        "caption": str(item.caption_path),
        "captionText": item.caption,
    }


def _checked_reg_item(dest: dict[str, Any]) -> dataset.RegItem:
    """The reg item a destination names, re-derived from the dataset and the index: a destination
    that does not name exactly that item's files (a stale or tampered job) is refused."""
    try:
        dataset_dir, class_name = Path(dest["datasetDir"]), str(dest["className"])
        index, seed, caption = int(dest["index"]), int(dest["seed"]), str(dest["captionText"])
        image, caption_path = Path(dest["image"]), Path(dest["caption"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PlasmaError(ErrorCode.INTERNAL, f"a reg job's destination is incomplete: {exc}") from None
    folder = dataset.reg_dir(dataset_dir, class_name)
    [expected] = dataset.reg_items(folder, index + 1, 0)[index:]
    if (image, caption_path) != (expected.image_path, expected.caption_path) or not 0 <= seed <= MAX_SEED:
        raise PlasmaError(ErrorCode.INTERNAL, f"{image} is not a reg image of {folder}: not written")
    return dataset.RegItem(index, seed, "", dataset.REG_NEGATIVE_PROMPT, caption, image, caption_path)


def write_destination(dest: dict[str, Any], png: bytes) -> Path:
    """Write a generated image where its job was queued for (blocking: run it in a thread).

    The caption first, then the image, each created only where nothing is (fsutil.create_new): the
    image's presence is what marks a reg item done. A file found there with the same bytes is a
    retry after a restart and is fine; anything else stays as it is and fails the job.
    """
    if dest.get("kind") != REG_IMAGE:
        raise PlasmaError(ErrorCode.INTERNAL, f"unknown destination kind {dest.get('kind')!r}")
    item = _checked_reg_item(dest)
    if dataset.save_reg_image(item, png) == "kept" and not same_content(item.image_path, png):
        raise PlasmaError(
            ErrorCode.CONFLICT, f"{item.image_path} appeared meanwhile with other content; left as it is"
        )
    return item.image_path


class DatasetService:
    """Dataset operations that need the daemon (the queue, ComfyUI). Part of `Service`."""

    def __init__(self, service: Service) -> None:
        self._service = service
        # Two reg requests for one set at once must not both queue the same missing image.
        self._lock = asyncio.Lock()

    async def reg(self, body: Any) -> dict[str, Any]:
        """Queue a generation for every missing image of a dataset's regularisation set."""
        svc = self._service
        svc._check_accepting()
        req = parse(DatasetRegRequest, body)
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
        base_seed = dataset.REG_BASE_SEED if req.seed is None else req.seed
        try:
            folder = dataset.reg_dir(dataset_dir, class_name)
        except PlasmaError as exc:
            raise _as_field(exc, "className") from None
        check_size(req.width, req.height, field="")
        if not svc.templates.has(TXT2IMG_BASE):
            raise PlasmaError(
                ErrorCode.NOT_CONFIGURED,
                f"{svc.templates.dir} has no {TXT2IMG_BASE}.json: reg images use the base model, no LoRA",
            )
        for path in (folder.parent, folder):
            if await asyncio.to_thread(_not_a_folder, path):
                raise invalid("datasetDir", f"{path} is in the way of the reg folder: it is not a folder")

        async with self._lock:
            # Active jobs first, then the files: a job that finishes in between has written its
            # image by the time the folder is read, so it is never queued a second time.
            active: dict[str, str] = {}
            for job in await svc.store.in_states(JobKind.GENERATE, ACTIVE_STATES):
                dest = (job.result or {}).get("destination")
                if isinstance(dest, dict) and dest.get("kind") == REG_IMAGE:
                    active[str(dest.get("image"))] = job.id
            missing = await asyncio.to_thread(dataset.missing_reg_items, folder, req.count, base_seed)
            # Every job is validated before the first is queued: a refusal leaves nothing half-queued.
            planned: list[tuple[dataset.RegItem, GenerateRequest, GenerationPlan]] = []
            for item in missing:
                if str(item.image_path) in active:
                    continue
                greq = parse(
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
                # No loraId: the txt2img-base template. The reg set is the base model's prior, not Spyke.
                plan = await validate_generate(greq, svc.cfg, svc.comfy)
                planned.append((item, greq, plan))
            jobs: list[dict[str, Any]] = []
            queued: list[str] = []
            for item, greq, plan in planned:
                job = await svc.queue_generation(
                    greq, plan, {"destination": reg_destination(dataset_dir, class_name, item)}
                )
                queued.append(job.id)
                jobs.append({"id": job.id, "index": item.index, "image": str(item.image_path), "new": True})
        pending = [
            {"id": active[image], "index": item.index, "image": image, "new": False}
            for item in missing
            if (image := str(item.image_path)) in active
        ]
        if queued:
            log.info("reg set %s: %d image(s) queued, %d already queued", folder, len(queued), len(pending))
        return {
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
