"""The kohya layout, `<dataset>/<repeats>_<trigger>/`, and building it: build, add, repeats.

Owns the folder names kohya reads (the repeat count in the folder's name, derived from the image
count), the file extensions, and the one place that writes training images: every file is planned
and checked for conflicts before any is written, under the dataset's lock, and the folder is renamed
when the image count changes.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image, ImageOps

from plasmad.core.errors import ErrorCode, PlasmaError, invalid, not_found
from plasmad.core.fsutil import create_new, file_lock, same_content
from plasmad.dataset.captions import (
    DEFAULT_TRIGGER,
    MIRRORED_SUFFIX,
    CaptionFields,
    _fields_problem,
    caption_fields_from_text,
    check_trigger,
    format_caption,
)
from plasmad.dataset.crops import _NAME_RE, load_spec, spec_problems_for_build
from plasmad.dataset.images import (
    RGB,
    _open_image,
    _png_bytes,
    detect_background,
    flatten,
    normalise,
    parse_colour,
    pixel_hash,
)

CAPTION_EXT = ".txt"
IMAGE_EXT = ".png"
# What kohya's glob_images picks up in an image folder: any of these is a training image to us too.
KOHYA_IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})

# kohya's usual advice: images x repeats between 200 and 400 per epoch; aim for the middle.
REPEATS_TARGET = 300
REPEATS_RANGE = (200, 400)

LOCK_NAME = ".plasma-dataset.lock"
_REPEATS_DIR_RE = re.compile(r"(\d+)_(.+)")


def derive_repeats(image_count: int) -> int:
    """Repeats such that images x repeats is near REPEATS_TARGET: within REPEATS_RANGE for up to
    400 images (originals and flips both count: kohya trains on every file)."""
    if image_count <= 0:
        return 1
    return max(1, math.floor(REPEATS_TARGET / image_count + 0.5))


def repeats_dir_name(repeats: int, trigger: str) -> str:
    return f"{repeats}_{trigger}"


def _repeat_dirs(root: Path) -> list[tuple[Path, int, str]]:
    """Folders kohya would read in `root`: (path, repeats, name after the repeats)."""
    out = []
    if root.is_dir():
        for child in sorted(root.iterdir()):
            m = _REPEATS_DIR_RE.fullmatch(child.name)
            if m and child.is_dir():
                out.append((child, int(m.group(1)), m.group(2)))
    return out


def find_image_dir(dataset_dir: Path, trigger: str) -> Path | None:
    """The dataset's one `<repeats>_<trigger>` folder, None when there is none yet. CONFLICT when
    there are several, or a folder for another trigger: kohya would train on all of them."""
    mine: list[Path] = []
    others: list[Path] = []
    for path, _, name in _repeat_dirs(dataset_dir):
        (mine if name == trigger else others).append(path)
    if others:
        raise PlasmaError(
            ErrorCode.CONFLICT,
            f"{dataset_dir} also holds {', '.join(p.name for p in others)}: one trigger word per dataset",
            field="dataset_dir",
        )
    if len(mine) > 1:
        raise PlasmaError(
            ErrorCode.CONFLICT,
            f"{dataset_dir} holds several folders for {trigger}: {', '.join(p.name for p in mine)}; keep one",
            field="dataset_dir",
        )
    return mine[0] if mine else None


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in KOHYA_IMAGE_EXTS and p.is_file())


def is_mirrored_name(path: Path) -> bool:
    return path.stem.lower().endswith(MIRRORED_SUFFIX)



@dataclass(frozen=True)
class FileOutcome:
    path: Path
    action: Literal["written", "kept", "skipped"]
    note: str = ""


@dataclass
class BuildResult:
    """What a build or an add did. `repeats` is the folder's count now; `previous_repeats` what it
    was (None: the folder is new)."""

    image_dir: Path
    repeats: int
    previous_repeats: int | None
    originals: int  #: original images in the folder now
    images: int  #: all images in the folder now (originals and flips)
    files: list[FileOutcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def written(self) -> list[Path]:
        return [f.path for f in self.files if f.action == "written"]

    @property
    def kept(self) -> list[Path]:
        return [f.path for f in self.files if f.action == "kept"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "imageDir": str(self.image_dir),
            "repeats": self.repeats,
            "previousRepeats": self.previous_repeats,
            "originals": self.originals,
            "images": self.images,
            "files": [{"path": str(f.path), "action": f.action, "note": f.note} for f in self.files],
            "warnings": list(self.warnings),
        }


@dataclass
class _Planned:
    name: str  #: file name in the image folder
    data: bytes
    pixels: str | None = None  #: pixel hash, for images: compared instead of bytes
    note: str = ""


def _plan(name: str, image: Image.Image, fields: CaptionFields, trigger: str, flip: bool) -> tuple[
    list[_Planned], list[FileOutcome]
]:
    """The files for one original (caption before image: an image never exists without its caption),
    and for its flip unless opted out or the picture is symmetric (then the flip is a duplicate)."""
    caption = format_caption(trigger, fields.framing, fields.pose, fields.background)
    planned = [
        _Planned(name + CAPTION_EXT, (caption + "\n").encode()),
        _Planned(name + IMAGE_EXT, _png_bytes(image), pixel_hash(image)),
    ]
    skipped: list[FileOutcome] = []
    mirrored_name = name + MIRRORED_SUFFIX
    if flip:
        flipped = ImageOps.mirror(image)
        flipped_hash = pixel_hash(flipped)
        if flipped_hash == planned[1].pixels:
            note = "symmetric: the flip is the same picture"
            skipped.append(FileOutcome(Path(mirrored_name + IMAGE_EXT), "skipped", note))
        else:
            mirrored_caption = format_caption(
                trigger, fields.framing, fields.pose, fields.background, mirrored=True
            )
            planned += [
                _Planned(mirrored_name + CAPTION_EXT, (mirrored_caption + "\n").encode()),
                _Planned(mirrored_name + IMAGE_EXT, _png_bytes(flipped), flipped_hash),
            ]
    else:
        skipped.append(FileOutcome(Path(mirrored_name + IMAGE_EXT), "skipped", "flip: false"))
    return planned, skipped



def _file_pixel_hash(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            im.load()
            return pixel_hash(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def _matches(path: Path, item: _Planned) -> bool:
    if item.pixels is not None:
        return _file_pixel_hash(path) == item.pixels
    return same_content(path, item.data)


@contextlib.contextmanager
def _dataset_lock(dataset_dir: Path) -> Iterator[None]:
    # The CLI and the daemon may both touch one dataset; the folder rename must not race a write.
    with file_lock(dataset_dir / LOCK_NAME):
        yield


def _commit(
    dataset_dir: Path,
    trigger: str,
    planned: list[_Planned],
    skipped: list[FileOutcome],
    warnings: list[str],
    repeats: int | None,
) -> BuildResult:
    """Write the planned files into the dataset's image folder, and rename it to its repeat count."""
    _check_commit(dataset_dir, trigger, planned, repeats)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    with _dataset_lock(dataset_dir):
        folder = find_image_dir(dataset_dir, trigger)
        previous = int(folder.name.split("_", 1)[0]) if folder else None
        # Everything is decided before anything is written: a conflict leaves the dataset untouched.
        to_write, kept = _sort_existing(folder, planned)
        _refuse_duplicate_pixels(folder, planned, to_write)
        if folder is None:
            folder = _new_image_dir(dataset_dir, trigger, planned, repeats)
        outcomes = _write(folder, planned, kept)
        images = _images_in(folder)
        originals = sum(1 for p in images if not is_mirrored_name(p))
        wanted = repeats if repeats is not None else derive_repeats(len(images))
        folder = _rename_to_repeats(folder, dataset_dir / repeats_dir_name(wanted, trigger))
    files = [FileOutcome(folder / o.path.name, o.action, o.note) for o in (*outcomes, *skipped)]
    return BuildResult(folder, wanted, previous, originals, len(images), files, warnings)


def _check_commit(dataset_dir: Path, trigger: str, planned: list[_Planned], repeats: int | None) -> None:
    """The request itself, before the dataset is looked at."""
    check_trigger(trigger)
    if repeats is not None and repeats < 1:
        raise invalid("repeats", "must be at least 1")
    names = [p.name.lower() for p in planned]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise invalid("name", f"two images would get the same file name: {', '.join(dupes)}")
    if not planned and not dataset_dir.is_dir():
        raise not_found(f"dataset {dataset_dir}")


def _sort_existing(folder: Path | None, planned: list[_Planned]) -> tuple[list[_Planned], list[str]]:
    """The files to write, and the names already there with the same content. CONFLICT when one is
    there with other content."""
    to_write: list[_Planned] = []
    kept: list[str] = []
    conflicts: list[str] = []
    for item in planned:
        target = folder / item.name if folder else None
        if target is not None and target.exists():
            (kept if _matches(target, item) else conflicts).append(item.name)
        else:
            to_write.append(item)
    if conflicts:
        raise PlasmaError(
            ErrorCode.CONFLICT,
            f"{len(conflicts)} file(s) in {folder} already exist with other content: "
            f"{', '.join(conflicts)}. Nothing was written; remove them, or give the crop another name",
            field="dataset_dir",
            details={"conflicts": conflicts},
        )
    return to_write, kept


def _refuse_duplicate_pixels(folder: Path | None, planned: list[_Planned], to_write: list[_Planned]) -> None:
    """Two planned images with the same pixels, or a new one with the pixels of an image already in
    the folder, would be a duplicate in the training set."""
    planned_hashes = [p.pixels for p in planned if p.pixels]
    if len(set(planned_hashes)) != len(planned_hashes):
        raise invalid("crops", "two crops give the same pixels: one would be a duplicate")
    new_hashes = {p.pixels: p.name for p in to_write if p.pixels}
    if not new_hashes:
        return
    for path in _images_in(folder) if folder else []:
        h = _file_pixel_hash(path)
        if h in new_hashes and path.name != new_hashes[h]:
            raise PlasmaError(
                ErrorCode.CONFLICT,
                f"{new_hashes[h]} has the same pixels as {path.name} already in the dataset",
                field="image",
            )


def _new_image_dir(dataset_dir: Path, trigger: str, planned: list[_Planned], repeats: int | None) -> Path:
    if not planned:
        raise not_found(f"a <repeats>_{trigger} folder in {dataset_dir}")
    count = sum(1 for p in planned if p.pixels)
    folder = dataset_dir / repeats_dir_name(repeats or derive_repeats(count), trigger)
    folder.mkdir()
    return folder


def _write(folder: Path, planned: list[_Planned], kept: list[str]) -> list[FileOutcome]:
    outcomes: list[FileOutcome] = []
    for item in planned:
        if item.name in kept:
            outcomes.append(FileOutcome(Path(item.name), "kept"))
            continue
        if create_new(folder / item.name, item.data):
            outcomes.append(FileOutcome(Path(item.name), "written"))
        elif _matches(folder / item.name, item):  # someone wrote the same file meanwhile
            outcomes.append(FileOutcome(Path(item.name), "kept"))
        else:
            raise PlasmaError(
                ErrorCode.CONFLICT,
                f"{folder / item.name} appeared meanwhile with other content",
                field="dataset_dir",
            )
    return outcomes


def _rename_to_repeats(folder: Path, target_dir: Path) -> Path:
    """The image folder under its repeat count's name (`target_dir`)."""
    if target_dir != folder:
        if target_dir.exists():
            raise PlasmaError(ErrorCode.CONFLICT, f"{target_dir} exists; cannot rename {folder.name}")
        # One rename moves every file at once: kohya never sees half the set under either name.
        os.rename(folder, target_dir)
        folder = target_dir
    return folder


def build_from_sheet(
    spec_path: Path, dataset_dir: Path, trigger: str = DEFAULT_TRIGGER, repeats: int | None = None
) -> BuildResult:
    """Cut every crop of crops.json, normalise it to 512x512, write it with its caption, and its
    mirrored copy unless `flip` is false. Re-running with the same spec keeps everything."""
    check_trigger(trigger)
    spec, sheet_path = load_spec(spec_path)
    sheet = _open_image(sheet_path, "sheet")
    spec_problems_for_build(spec, sheet.size)
    background = (
        parse_colour(spec.sheet_background, "sheet_background")
        if spec.sheet_background
        else detect_background(sheet)
    )
    flat = flatten(sheet, background)
    planned: list[_Planned] = []
    skipped: list[FileOutcome] = []
    warnings: list[str] = []
    for i, crop in enumerate(spec.crops):
        fields = CaptionFields(crop.framing, crop.pose, crop.background)
        problem = _fields_problem(fields, trigger)
        if problem:
            raise invalid(f"crops[{i}].{problem[0]}", problem[1])
        norm = normalise(flat.crop(crop.box), background)
        warnings += [f"{crop.name}: {w}" for w in norm.warnings]
        p, s = _plan(crop.name, norm.image, fields, trigger, crop.flip)
        planned += p
        skipped += s
    return _commit(dataset_dir, trigger, planned, skipped, warnings, repeats)


def update_repeats(
    dataset_dir: Path, trigger: str = DEFAULT_TRIGGER, repeats: int | None = None
) -> BuildResult:
    """Rename the image folder to the repeat count derived from its images now (or to `repeats`):
    for after files were removed by hand. build and add do this themselves."""
    return _commit(dataset_dir, trigger, [], [], [], repeats)


def image_name(image_path: Path) -> str:
    """A file name for an added image, from its own name (`Spyke run 02.jpg` -> `Spyke-run-02`)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", image_path.stem).strip("-_")[:80] or "image"
    return name


def add_image(
    dataset_dir: Path,
    image_path: Path,
    caption: CaptionFields | str,
    trigger: str = DEFAULT_TRIGGER,
    *,
    name: str | None = None,
    flip: bool = True,
    background: RGB | None = None,
    repeats: int | None = None,
) -> BuildResult:
    """Add one image from elsewhere: normalised like the crops (padding colour read from its border
    unless given), captioned from `caption` (fields, or text with or without the trigger word)."""
    check_trigger(trigger)
    fields = caption if isinstance(caption, CaptionFields) else caption_fields_from_text(caption, trigger)
    problem = _fields_problem(fields, trigger)
    if problem:
        raise invalid(problem[0], problem[1])
    file_name = name if name is not None else image_name(image_path)
    if not _NAME_RE.fullmatch(file_name):
        raise invalid("name", f"{file_name!r} must be 1-80 letters, digits, '-' or '_'")
    if file_name.lower().endswith(MIRRORED_SUFFIX):
        raise invalid("name", f"may not end with {MIRRORED_SUFFIX!r}: that suffix marks the flipped copies")
    source = _open_image(image_path, "image")
    bg = background if background is not None else detect_background(source)
    norm = normalise(source, bg)
    planned, skipped = _plan(file_name, norm.image, fields, trigger, flip)
    warnings = [f"{file_name}: {w}" for w in norm.warnings]
    return _commit(dataset_dir, trigger, planned, skipped, warnings, repeats)
