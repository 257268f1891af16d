"""The gate before training: check_dataset, require_dataset and the CheckReport they return.

Owns the rules a dataset must pass (layout, image count, readability, size, captions, duplicates,
the regularisation set) and the warnings it may carry (repeats, orphans), and the table
`plasmactl dataset check` prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from PIL import Image

from plasmad.core.errors import invalid
from plasmad.core.limits import DATASET_IMAGE_SIZE, DATASET_MIN_IMAGES, REG_MAX_IMAGES, REG_MIN_IMAGES
from plasmad.dataset.captions import (
    DEFAULT_TRIGGER,
    MIRRORED_SUFFIX,
    MIRRORED_TAG,
    _parse_caption,
    _read_caption,
    _tags,
    check_trigger,
)
from plasmad.dataset.images import pixel_hash
from plasmad.dataset.layout import (
    CAPTION_EXT,
    REPEATS_RANGE,
    _images_in,
    _repeat_dirs,
    derive_repeats,
    is_mirrored_name,
)
from plasmad.dataset.reg import REG_DEFAULT_CLASS, reg_root


class ProblemKind(StrEnum):
    LAYOUT = "layout"  #: no `<repeats>_<trigger>` folder, several, or another trigger's
    COUNT = "count"  #: fewer than DATASET_MIN_IMAGES originals
    UNREADABLE = "unreadable"  #: Pillow cannot open or decode it
    SIZE = "size"  #: not 512x512
    CAPTION = "caption"  #: missing, or breaks the caption rule
    DUPLICATE = "duplicate"  #: same pixels as another image
    REG = "reg"  #: the regularisation set is missing, empty or broken
    REPEATS = "repeats"  #: images x repeats outside 200-400 (a warning)
    ORPHAN = "orphan"  #: a caption without an image, a flip without its original (a warning)


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    path: str  #: relative to the dataset's parent folder
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class CheckReport:
    dataset_dir: Path
    trigger: str
    image_dir: Path | None = None
    repeats: int | None = None
    originals: int = 0
    mirrored: int = 0
    reg_root: Path | None = None
    reg_required: bool = False
    reg_images: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def images(self) -> int:
        return self.originals + self.mirrored

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "datasetDir": str(self.dataset_dir),
            "trigger": self.trigger,
            "imageDir": str(self.image_dir) if self.image_dir else None,
            "repeats": self.repeats,
            "originals": self.originals,
            "mirrored": self.mirrored,
            "regDir": str(self.reg_root) if self.reg_root else None,
            "regRequired": self.reg_required,
            "regImages": self.reg_images,
            "problems": [{"kind": str(p.kind), "path": p.path, "reason": p.reason} for p in self.problems],
            "warnings": [{"kind": str(p.kind), "path": p.path, "reason": p.reason} for p in self.warnings],
        }

    def _status(self, *kinds: ProblemKind) -> str:
        n = sum(1 for p in self.problems if p.kind in kinds)
        if n:
            return f"FAIL ({n})"
        return "warn" if any(w.kind in kinds for w in self.warnings) else "ok"

    def format_table(self) -> str:
        """The summary `plasmactl dataset check` prints: one row per rule, then every problem."""
        lo, hi = REPEATS_RANGE
        folder = self.image_dir.name if self.image_dir else "(none)"
        per_epoch = f"{self.images} x {self.repeats} = {self.images * self.repeats}" if self.repeats else "-"
        if self.reg_root is None or not self.reg_required:
            reg = "not configured"
        else:
            reg = f"{self.reg_images} images in {self.reg_root.name}"
        rows = [
            ("folder", folder, self._status(ProblemKind.LAYOUT)),
            ("original images", f"{self.originals} (need >= {DATASET_MIN_IMAGES})",
             self._status(ProblemKind.COUNT)),
            ("mirrored copies", str(self.mirrored), "-"),
            ("images x repeats", f"{per_epoch} (aim {lo}-{hi})", self._status(ProblemKind.REPEATS)),
            ("readable", "", self._status(ProblemKind.UNREADABLE)),
            (f"{DATASET_IMAGE_SIZE}x{DATASET_IMAGE_SIZE} px", "", self._status(ProblemKind.SIZE)),
            ("captions", f"'{self.trigger}, framing, pose, background'", self._status(ProblemKind.CAPTION,
                                                                                     ProblemKind.ORPHAN)),
            ("duplicates", "by pixels", self._status(ProblemKind.DUPLICATE)),
            ("regularisation", reg, self._status(ProblemKind.REG)),
        ]
        widths = [max(len(r[i]) for r in [("check", "value", "result"), *rows]) for i in range(3)]
        lines = [
            "  ".join(h.ljust(w) for h, w in zip(("check", "value", "result"), widths, strict=True)).rstrip(),
            "  ".join("-" * w for w in widths),
        ]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        if self.problems:
            lines += ["", "problems:"] + [f"  {p}" for p in self.problems]
        if self.warnings:
            lines += ["", "warnings:"] + [f"  {w}" for w in self.warnings]
        verdict = "PASS" if self.ok else f"FAIL: {len(self.problems)} problem(s)"
        lines += ["", f"{verdict}  ({self.dataset_dir})"]
        return "\n".join(lines)


_Note = Callable[[ProblemKind, Path, str], None]


def _read_image(path: Path, full: bool) -> tuple[tuple[int, int], str | None] | str:
    """(size, pixel hash when `full`) or why it cannot be read."""
    try:
        with Image.open(path) as im:
            im.verify()  # checks the file's structure and checksums without decoding
        if not full:
            with Image.open(path) as im:
                return im.size, None
        with Image.open(path) as im:
            im.load()  # decodes: catches a file cut short
            return im.size, pixel_hash(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"unreadable: {exc}"


def check_dataset(
    dataset_dir: Path,
    trigger: str = DEFAULT_TRIGGER,
    *,
    reg_data_dir: Path | None = None,
    reg_required: bool | None = None,
) -> CheckReport:
    """The gate before training. `reg_data_dir` is kohya's --reg_data_dir (default `<dataset>-reg`);
    `reg_required` None: checked when that folder exists; True: must exist; False: not looked at."""
    check_trigger(trigger)
    report = CheckReport(dataset_dir, trigger)
    base = dataset_dir.absolute().parent

    def rel(path: Path) -> str:
        try:
            return path.absolute().relative_to(base).as_posix()
        except ValueError:
            return str(path)

    def problem(kind: ProblemKind, path: Path, reason: str) -> None:
        report.problems.append(Problem(kind, rel(path), reason))

    def warning(kind: ProblemKind, path: Path, reason: str) -> None:
        report.warnings.append(Problem(kind, rel(path), reason))

    _check_images(report, dataset_dir, trigger, problem, warning)

    root = reg_data_dir if reg_data_dir is not None else reg_root(dataset_dir)
    required = root.exists() if reg_required is None else reg_required
    report.reg_root, report.reg_required = root, required
    if required:
        _check_reg(report, root, trigger, problem, warning)
    return report


def _check_images(
    report: CheckReport, dataset_dir: Path, trigger: str, problem: _Note, warning: _Note
) -> None:
    found = _image_dir(report, dataset_dir, trigger, problem)
    if found is None:
        return
    folder, repeats = found
    hashes: dict[str, Path] = {}
    images = _images_in(folder)
    stems = {p.stem.lower() for p in images}
    for path in images:
        mirrored = is_mirrored_name(path)
        if mirrored:
            report.mirrored += 1
            if path.stem.lower().removesuffix(MIRRORED_SUFFIX) not in stems:
                warning(ProblemKind.ORPHAN, path, "a mirrored copy whose original is not in the dataset")
        else:
            report.originals += 1
        _check_pixels(path, hashes, problem)
        _check_caption(path.with_suffix(CAPTION_EXT), mirrored, trigger, problem)
    for caption_path in sorted(folder.glob("*" + CAPTION_EXT)):
        if caption_path.stem.lower() not in stems:
            warning(ProblemKind.ORPHAN, caption_path, "a caption without an image")
    _check_counts(report, folder, repeats, problem, warning)


def _image_dir(
    report: CheckReport, dataset_dir: Path, trigger: str, problem: _Note
) -> tuple[Path, int] | None:
    """The one `<repeats>_<trigger>` folder and its repeats (kept in `report`); None: no images to check."""
    if not dataset_dir.is_dir():
        problem(ProblemKind.LAYOUT, dataset_dir, "no such folder")
        problem(ProblemKind.COUNT, dataset_dir, f"0 original images, need at least {DATASET_MIN_IMAGES}")
        return None
    folders = _repeat_dirs(dataset_dir)
    mine = [f for f in folders if f[2] == trigger]
    for path, _, name in folders:
        if name != trigger:
            reason = f"folder for another trigger word ({name!r}): kohya would train it too"
            problem(ProblemKind.LAYOUT, path, reason)
    if len(mine) > 1:
        problem(ProblemKind.LAYOUT, dataset_dir, f"several folders for {trigger}: keep one")
    if not mine:
        reason = f"no <repeats>_{trigger} folder (plasmactl dataset build / add)"
        problem(ProblemKind.LAYOUT, dataset_dir, reason)
        problem(ProblemKind.COUNT, dataset_dir, f"0 original images, need at least {DATASET_MIN_IMAGES}")
        return None
    folder, repeats, _ = mine[0]
    report.image_dir, report.repeats = folder, repeats
    if repeats < 1:
        problem(ProblemKind.LAYOUT, folder, "0 repeats: kohya skips the folder")
    return folder, repeats


def _check_pixels(path: Path, hashes: dict[str, Path], problem: _Note) -> None:
    """Readable, 512x512, and not the same pixels as an image seen before (`hashes`, updated)."""
    read = _read_image(path, full=True)
    if isinstance(read, str):
        problem(ProblemKind.UNREADABLE, path, read)
        return
    size, digest = read
    if size != (DATASET_IMAGE_SIZE, DATASET_IMAGE_SIZE):
        problem(
            ProblemKind.SIZE, path,
            f"{size[0]}x{size[1]} px, must be {DATASET_IMAGE_SIZE}x{DATASET_IMAGE_SIZE} "
            "(plasmactl dataset add normalises)",
        )
    if digest is not None:
        if digest in hashes:
            problem(ProblemKind.DUPLICATE, path, f"same pixels as {hashes[digest].name}")
        else:
            hashes[digest] = path


def _check_caption(caption_path: Path, mirrored: bool, trigger: str, problem: _Note) -> None:
    """An image's caption: there, by the caption rule, and tagged `mirrored` exactly when the image is."""
    text = _read_caption(caption_path)
    if text is None:
        reason = "no caption" if not caption_path.exists() else "caption is not readable UTF-8 text"
        problem(ProblemKind.CAPTION, caption_path, reason)
        return
    parsed = _parse_caption(text, trigger)
    if isinstance(parsed, str):
        problem(ProblemKind.CAPTION, caption_path, parsed)
    elif parsed.mirrored != mirrored:
        reason = (
            f"a mirrored copy's caption needs {MIRRORED_TAG!r} right after the trigger word"
            if mirrored
            else f"an original's caption may not say {MIRRORED_TAG!r} (only *{MIRRORED_SUFFIX} files)"
        )
        problem(ProblemKind.CAPTION, caption_path, reason)


def _check_counts(report: CheckReport, folder: Path, repeats: int, problem: _Note, warning: _Note) -> None:
    """Enough originals; images x repeats within kohya's advised range (a warning)."""
    if report.originals < DATASET_MIN_IMAGES:
        problem(
            ProblemKind.COUNT, folder,
            f"{report.originals} original images, need at least {DATASET_MIN_IMAGES} "
            "(mirrored copies do not count)",
        )
    lo, hi = REPEATS_RANGE
    if report.images and not lo <= report.images * repeats <= hi:
        warning(
            ProblemKind.REPEATS, folder,
            f"{report.images} images x {repeats} repeats = {report.images * repeats}, outside {lo}-{hi} "
            f"(derived: {derive_repeats(report.images)})",
        )


def _check_reg(report: CheckReport, root: Path, trigger: str, problem: _Note, warning: _Note) -> None:
    if not root.is_dir():
        problem(ProblemKind.REG, root, "no regularisation set (plasmactl dataset reg)")
        return
    folders = _repeat_dirs(root)
    if not folders:
        problem(ProblemKind.REG, root, f"no 1_<class> folder with images (like 1_{REG_DEFAULT_CLASS})")
        return
    for folder, _, _ in folders:
        for path in _images_in(folder):
            report.reg_images += 1
            read = _read_image(path, full=False)
            if isinstance(read, str):
                problem(ProblemKind.REG, path, read)
            text = _read_caption(path.with_suffix(CAPTION_EXT))
            if text is None:
                problem(ProblemKind.REG, path.with_suffix(CAPTION_EXT), "no caption")
            elif trigger in _tags(text):
                problem(ProblemKind.REG, path.with_suffix(CAPTION_EXT),
                        f"a regularisation caption may not carry the trigger word {trigger!r}")
    if report.reg_images == 0:
        problem(ProblemKind.REG, root, "the regularisation set has no images")
    elif not REG_MIN_IMAGES <= report.reg_images <= REG_MAX_IMAGES:
        asks = f"DATA-03 asks for {REG_MIN_IMAGES}-{REG_MAX_IMAGES}"
        warning(ProblemKind.REG, root, f"{report.reg_images} regularisation images; {asks}")


def require_dataset(
    dataset_dir: Path,
    trigger: str = DEFAULT_TRIGGER,
    *,
    reg_data_dir: Path | None = None,
    reg_required: bool | None = None,
    field_name: str = "dataset_dir",
) -> CheckReport:
    """check_dataset for the training API: INVALID_INPUT with every reason when it fails."""
    report = check_dataset(dataset_dir, trigger, reg_data_dir=reg_data_dir, reg_required=reg_required)
    if not report.ok:
        first = report.problems[0]
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise invalid(field_name, f"dataset fails the check: {first}{more}", report.to_dict())
    return report
