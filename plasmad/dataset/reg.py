"""The regularisation set (DATA-03): `<dataset>-reg/1_<class>/reg-NNNN.png` and its captions.

Owns where the set lives (kohya's `--reg_data_dir`), the generic prompts, seeds and file names of its
items, which items are still missing, and storing a generated image with its caption.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from plasmad.core.errors import ErrorCode, PlasmaError, invalid
from plasmad.core.fsutil import create_new, same_content
from plasmad.core.images import check_generated
from plasmad.core.limits import MAX_SEED, REG_MAX_IMAGES, REG_MIN_IMAGES
from plasmad.dataset.captions import _TRIGGER_RE
from plasmad.dataset.layout import CAPTION_EXT, IMAGE_EXT, repeats_dir_name

REG_DEFAULT_CLASS = "character"
REG_BASE_SEED = 1000
REG_NEGATIVE_PROMPT = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality, jpeg artifacts, signature, watermark, username, blurry"
)
# The reg set should cover the framings the training set uses, or the prior it preserves is only
# "full body" and close-ups drift; poses cycle on a coprime period so the combinations all occur.
_REG_FRAMINGS = ("full body", "upper body", "close-up")
_REG_POSES = ("standing", "looking at viewer", "walking", "arms crossed", "sitting")
_REG_STEM = "reg-{index:04d}"


def reg_root(dataset_dir: Path) -> Path:
    """kohya's `--reg_data_dir`: a sibling of the dataset, `<dataset>-reg`."""
    resolved = dataset_dir.absolute()
    return resolved.with_name(resolved.name + "-reg")


def reg_dir(dataset_dir: Path, class_name: str = REG_DEFAULT_CLASS) -> Path:
    """The folder the reg images go to: `<dataset>-reg/1_<class>/` (one repeat: kohya balances them)."""
    if not _TRIGGER_RE.fullmatch(class_name):
        raise invalid("class_name", f"{class_name!r} must be letters, digits, '_', '.', '-'")
    return reg_root(dataset_dir) / repeats_dir_name(1, class_name)


def reg_prompt(index: int) -> str:
    """The generic prompt for reg image `index` (also its caption): the class, no trigger word."""
    framing = _REG_FRAMINGS[index % len(_REG_FRAMINGS)]
    pose = _REG_POSES[index % len(_REG_POSES)]
    return f"anime character, solo, {framing}, {pose}, simple background"


def reg_seed(base_seed: int, index: int) -> int:
    return (base_seed + index) % (MAX_SEED + 1)


@dataclass(frozen=True)
class RegItem:
    index: int
    seed: int
    prompt: str
    negative_prompt: str
    caption: str
    image_path: Path
    caption_path: Path


def reg_items(reg_folder: Path, count: int, base_seed: int = REG_BASE_SEED) -> list[RegItem]:
    """Every item of a reg set of `count` images: file names from the index, seeds base_seed+index
    (distinct, and the same on every run, so a resumed set is the set a single run would make)."""
    if not 1 <= count <= REG_MAX_IMAGES:
        asks = f"DATA-03 asks for {REG_MIN_IMAGES}-{REG_MAX_IMAGES}"
        raise invalid("count", f"must be 1-{REG_MAX_IMAGES} ({asks})")
    if not 0 <= base_seed <= MAX_SEED:
        raise invalid("seed", f"must be 0-{MAX_SEED}")
    items = []
    for index in range(count):
        stem = _REG_STEM.format(index=index)
        prompt = reg_prompt(index)
        items.append(
            RegItem(
                index=index,
                seed=reg_seed(base_seed, index),
                prompt=prompt,
                negative_prompt=REG_NEGATIVE_PROMPT,
                caption=prompt,
                image_path=reg_folder / (stem + IMAGE_EXT),
                caption_path=reg_folder / (stem + CAPTION_EXT),
            )
        )
    return items


def missing_reg_items(reg_folder: Path, count: int, base_seed: int = REG_BASE_SEED) -> list[RegItem]:
    """The items still to generate: those whose image does not exist. Existing images are never
    regenerated (and never removed, also when `count` is now smaller)."""
    return [item for item in reg_items(reg_folder, count, base_seed) if not item.image_path.exists()]


def save_reg_image(item: RegItem, png_bytes: bytes) -> Literal["written", "kept"]:
    """Store one generated reg image and its caption. The caption goes first: the image's presence
    marks the item done, so a crash between the two is redone, never left uncaptioned."""
    check_generated(png_bytes, f"reg image {item.index} (seed {item.seed})")
    item.image_path.parent.mkdir(parents=True, exist_ok=True)
    caption = (item.caption + "\n").encode()
    if not create_new(item.caption_path, caption) and not same_content(item.caption_path, caption):
        raise PlasmaError(
            ErrorCode.CONFLICT, f"{item.caption_path} exists with another caption; remove it to regenerate",
        )
    if create_new(item.image_path, png_bytes):
        return "written"
    return "kept"
