"""Spyke's training dataset (DATA-01..04): crops, captions, flips, kohya's folder layout, and the gate.

Synchronous and blocking: the daemon calls it through asyncio.to_thread, plasmactl directly.

The layout is the one kohya's train_network.py reads with `--train_data_dir <dataset>` and
`--reg_data_dir <dataset>-reg`:

    <dataset>/<repeats>_<trigger>/<name>.png + <name>.txt        originals
    <dataset>/<repeats>_<trigger>/<name>-mirrored.png + .txt     their horizontal flips
    <dataset>-reg/1_<class>/reg-0000.png + reg-0000.txt          regularisation images

kohya takes the repeat count from the folder name, so the folder is renamed whenever the image
count changes. Files that already exist are never overwritten: identical content is "kept", anything
else is a CONFLICT raised before a single file is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from PIL import Image, ImageChops, ImageColor, ImageDraw, ImageFilter, ImageFont, ImageOps
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from plasmad.errors import ErrorCode, PlasmaError, invalid, not_found
from plasmad.fsutil import create_new, file_lock, same_content
from plasmad.limits import (
    DATASET_IMAGE_SIZE,
    DATASET_MAX_UPSCALE,
    DATASET_MIN_IMAGES,
    MAX_SEED,
    REG_MAX_IMAGES,
    REG_MIN_IMAGES,
)

RGB = tuple[int, int, int]

DEFAULT_TRIGGER = "spyke_plasma_v1"
MIRRORED_TAG = "mirrored"
MIRRORED_SUFFIX = "-mirrored"
CAPTION_EXT = ".txt"
IMAGE_EXT = ".png"
# What kohya's glob_images picks up in an image folder: any of these is a training image to us too.
KOHYA_IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})

# kohya's usual advice: images x repeats between 200 and 400 per epoch; aim for the middle.
REPEATS_TARGET = 300
REPEATS_RANGE = (200, 400)

PLACEHOLDER = "TODO"
LOCK_NAME = ".plasma-dataset.lock"
CONTACT_SHEET_NAME = "contact-sheet.png"

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

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}")
_TRIGGER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_REPEATS_DIR_RE = re.compile(r"(\d+)_(.+)")
_REG_STEM = "reg-{index:04d}"

# suggest: how far a pixel may be from the background colour and still be background (JPEG noise,
# antialiasing), and the grid the figure search runs on (the sheet is reduced to at most this).
_BG_TOLERANCE = 24
_SUGGEST_GRID = 256


# --------------------------------------------------------------------------------------------
# Captions (DATA-02): "<trigger>, [mirrored,] <framing>, <pose/action>, <background>"
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionFields:
    """The three described fields of a caption. framing and background are one tag each; the pose
    may be several tags ("standing, looking at viewer"), so it is whatever lies between them."""

    framing: str
    pose: str
    background: str


@dataclass(frozen=True)
class ParsedCaption:
    trigger: str
    mirrored: bool
    fields: CaptionFields


def _tags(text: str) -> list[str]:
    return [" ".join(t.split()) for t in text.split(",")]


def _field_problem(name: str, value: str, *, one_tag: bool, trigger: str | None) -> str | None:
    if "\n" in value or "\r" in value:
        return f"{name} must be on one line"
    tags = _tags(value)
    if any(not t for t in tags):
        return f"{name} is empty" if len(tags) == 1 else f"{name} has an empty tag"
    if one_tag and len(tags) > 1:
        return f"{name} must be one tag, without commas ({value.strip()!r})"
    reserved = {MIRRORED_TAG} | ({trigger.lower()} if trigger else set())
    for tag in tags:
        if tag.lower() in reserved:
            return f"{name} may not contain {tag!r}: it has its own place in the caption"
    return None


def _fields_problem(fields: CaptionFields, trigger: str | None) -> tuple[str, str] | None:
    for name, value, one_tag in (
        ("framing", fields.framing, True),
        ("pose", fields.pose, False),
        ("background", fields.background, True),
    ):
        problem = _field_problem(name, value, one_tag=one_tag, trigger=trigger)
        if problem:
            return name, problem
    return None


def check_trigger(trigger: str) -> str:
    """The trigger word, checked: it names kohya's folder and leads every caption."""
    if not _TRIGGER_RE.fullmatch(trigger):
        raise invalid("trigger", f"{trigger!r} must be letters, digits, '_', '.', '-' (like spyke_plasma_v1)")
    if trigger.lower() == MIRRORED_TAG:
        raise invalid("trigger", f"{MIRRORED_TAG!r} is reserved for flipped copies")
    return trigger


def format_caption(trigger: str, framing: str, pose: str, background: str, *, mirrored: bool = False) -> str:
    """`spyke_plasma_v1, [mirrored, ]close-up, standing, looking at viewer, white background`."""
    check_trigger(trigger)
    fields = CaptionFields(framing, pose, background)
    problem = _fields_problem(fields, trigger)
    if problem:
        raise invalid(problem[0], problem[1])
    tags = [trigger, *([MIRRORED_TAG] if mirrored else []), *_tags(framing), *_tags(pose), *_tags(background)]
    return ", ".join(tags)


def _parse_caption(text: str, trigger: str | None) -> ParsedCaption | str:
    """The parsed caption, or why it breaks the rule (a reason for people)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return "caption is empty"
    if len(lines) > 1:
        return "caption has more than one line (kohya reads only the first)"
    tags = _tags(lines[0])
    first = tags[0]
    if trigger is not None and first != trigger:
        if trigger in tags:
            return f"trigger word {trigger!r} is not first"
        return f"does not start with the trigger word {trigger!r}"
    if not first:
        return "starts with an empty tag"
    mirrored = len(tags) > 1 and tags[1].lower() == MIRRORED_TAG
    rest = tags[2:] if mirrored else tags[1:]
    if len(rest) < 3:
        return f"has {len(rest)} field(s) after the trigger word, needs 3: framing, pose/action, background"
    if any(not t for t in rest):
        return "has an empty field"
    fields = CaptionFields(rest[0], ", ".join(rest[1:-1]), rest[-1])
    problem = _fields_problem(fields, first)
    if problem:
        return problem[1]
    return ParsedCaption(first, mirrored, fields)


def parse_caption(text: str, trigger: str | None = None) -> ParsedCaption:
    """Parse a caption by the rule: the trigger word first, then framing, pose/action, background
    (the `mirrored` tag allowed right after the trigger). Raises INVALID_INPUT naming `caption`."""
    parsed = _parse_caption(text, trigger)
    if isinstance(parsed, str):
        raise invalid("caption", parsed)
    return parsed


def caption_fields_from_text(text: str, trigger: str) -> CaptionFields:
    """What `plasmactl dataset add --caption` takes: `framing, pose..., background`, with or without
    the trigger word in front. An original is never `mirrored`; flips are made here."""
    tags = _tags(text)
    if tags and tags[0] == trigger:
        parsed = parse_caption(text, trigger)
        if parsed.mirrored:
            raise invalid("caption", f"{MIRRORED_TAG!r} is added to the flipped copy, not to an original")
        return parsed.fields
    if tags and tags[0].lower() == MIRRORED_TAG:
        raise invalid("caption", f"{MIRRORED_TAG!r} is added to the flipped copy, not to an original")
    if len(tags) < 3:
        raise invalid("caption", f"has {len(tags)} field(s), needs 3: framing, pose/action, background")
    fields = CaptionFields(tags[0], ", ".join(tags[1:-1]), tags[-1])
    problem = _fields_problem(fields, trigger)
    if problem:
        raise invalid("caption", problem[1])
    return fields


# --------------------------------------------------------------------------------------------
# The crops file (DATA-01)
# --------------------------------------------------------------------------------------------

StrictInt = Annotated[int, Field(strict=True)]


class Crop(BaseModel):
    """One crop of the sheet; framing, pose and background become its caption."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="file name without extension: letters, digits, '-', '_'")
    box: tuple[StrictInt, StrictInt, StrictInt, StrictInt] = Field(description="x0, y0, x1, y1 (pixels)")
    framing: str
    pose: str
    background: str
    flip: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError("must be 1-80 letters, digits, '-' or '_', starting with a letter or digit")
        if value.lower().endswith(MIRRORED_SUFFIX):
            raise ValueError(f"may not end with {MIRRORED_SUFFIX!r}: that suffix marks the flipped copies")
        return value

    @field_validator("box")
    @classmethod
    def _box(cls, value: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = value
        if x0 < 0 or y0 < 0:
            raise ValueError("x0 and y0 must be >= 0")
        if x1 <= x0 or y1 <= y0:
            raise ValueError("must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0 (a positive area)")
        return value

    @field_validator("framing", "background")
    @classmethod
    def _one_tag(cls, value: str) -> str:
        problem = _field_problem("it", value, one_tag=True, trigger=None)
        if problem:
            raise ValueError(problem.removeprefix("it "))
        return " ".join(value.split())

    @field_validator("pose")
    @classmethod
    def _pose(cls, value: str) -> str:
        problem = _field_problem("it", value, one_tag=False, trigger=None)
        if problem:
            raise ValueError(problem.removeprefix("it "))
        return ", ".join(_tags(value))


class CropSpec(BaseModel):
    """crops.json: the sheet (relative to the file), its background colour, and the crops."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sheet: str = Field(min_length=1)
    sheet_background: str | None = Field(
        default=None, description="padding colour ('#ffffff', 'white'); null: read from the sheet's border"
    )
    crops: list[Crop] = Field(min_length=1)

    @field_validator("sheet_background")
    @classmethod
    def _colour(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ImageColor.getrgb(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a colour like '#ffffff' or 'white'") from None
        return value


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "spec"


def parse_spec(data: Any) -> CropSpec:
    """A crops spec from parsed JSON; the first problem is an INVALID_INPUT naming its field
    (`crops[2].box`)."""
    try:
        spec = CropSpec.model_validate(data)
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_input=False)
        first = problems[0]
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        message = message.removeprefix("Value error, ")
        details = [{"field": _loc(p["loc"]), "message": p["msg"]} for p in problems]
        raise invalid(_loc(first["loc"]), message, details if len(details) > 1 else None) from None
    seen: dict[str, int] = {}
    for i, crop in enumerate(spec.crops):
        # Case-folded: macOS's default filesystem would make Face.png and face.png one file.
        key = crop.name.lower()
        if key in seen:
            raise invalid(f"crops[{i}].name", f"{crop.name!r} is already used by crops[{seen[key]}]")
        seen[key] = i
    return spec


def load_spec(spec_path: Path) -> tuple[CropSpec, Path]:
    """Read crops.json; returns the spec and the sheet's path (resolved against the file's folder)."""
    try:
        text = spec_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise not_found(f"crops file {spec_path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise invalid("spec", f"cannot read {spec_path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise invalid("spec", f"{spec_path.name} is not valid JSON: {exc.msg} ({where})") from None
    spec = parse_spec(data)
    return spec, (spec_path.parent / spec.sheet)


def spec_problems_for_build(spec: CropSpec, sheet_size: tuple[int, int]) -> None:
    """What must hold before cutting: boxes inside the sheet, and no placeholder left by --suggest."""
    width, height = sheet_size
    for i, crop in enumerate(spec.crops):
        x1, y1 = crop.box[2], crop.box[3]
        if x1 > width or y1 > height:
            raise invalid(f"crops[{i}].box", f"{list(crop.box)} reaches outside the sheet ({width}x{height})")
        for name in ("framing", "pose", "background"):
            if str(getattr(crop, name)).upper().startswith(PLACEHOLDER):
                raise invalid(
                    f"crops[{i}].{name}",
                    f"still the placeholder written by --suggest: describe the {name} of {crop.name!r}",
                )


def write_spec(spec: CropSpec, path: Path) -> Path:
    """Write a spec as JSON without ever replacing a file: when `path` exists, the next free name
    (`crops-2.json`, ...) is used. Returns the path written."""
    data = (json.dumps(spec.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n").encode()
    for candidate in _numbered(path):
        if create_new(candidate, data):
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def _numbered(path: Path, limit: int = 1000) -> Iterator[Path]:
    yield path
    for n in range(2, limit):
        yield path.with_name(f"{path.stem}-{n}{path.suffix}")
    raise PlasmaError(ErrorCode.CONFLICT, f"no free name left beside {path}", field="out")


# --------------------------------------------------------------------------------------------
# Images: background, flattening, normalisation to 512 px
# --------------------------------------------------------------------------------------------


def parse_colour(text: str, field_name: str = "background") -> RGB:
    try:
        colour = ImageColor.getrgb(text)
    except ValueError:
        raise invalid(field_name, f"{text!r} is not a colour like '#ffffff' or 'white'") from None
    return (colour[0], colour[1], colour[2])


def colour_hex(colour: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )


def _border(image: Image.Image) -> list[Image.Image]:
    width, height = image.size
    b = max(1, min(width, height) // 64)
    return [
        image.crop((0, 0, width, b)),
        image.crop((0, height - b, width, height)),
        image.crop((0, b, b, height - b)),
        image.crop((width - b, b, width, height - b)),
    ]


def _background_stats(image: Image.Image) -> tuple[RGB, float]:
    """The border's dominant colour and the share of the border it covers (1.0: a plain sheet)."""
    if _has_alpha(image):
        alpha = image.convert("RGBA").getchannel("A")
        strips = _border(alpha)
        total = sum(s.width * s.height for s in strips)
        clear = sum(sum(1 for v in s.tobytes() if v < 128) for s in strips)
        if clear * 2 >= total:
            # A transparent sheet: the figures get a white ground, as on paper.
            return (255, 255, 255), clear / total
    rgb = image.convert("RGB")
    counts: dict[RGB, int] = {}
    for strip in _border(rgb):
        for count, colour in strip.getcolors(maxcolors=strip.width * strip.height) or []:
            key = (colour[0], colour[1], colour[2])  # type: ignore[index]
            counts[key] = counts.get(key, 0) + count
    # Bucket by the top bits so JPEG noise around one paper colour counts as that colour.
    buckets: dict[RGB, list[tuple[int, RGB]]] = {}
    for colour, count in counts.items():
        buckets.setdefault((colour[0] >> 4, colour[1] >> 4, colour[2] >> 4), []).append((count, colour))
    best = max(buckets.values(), key=lambda entries: sum(c for c, _ in entries))
    n = sum(c for c, _ in best)
    mean = tuple(round(sum(c * col[i] for c, col in best) / n) for i in range(3))
    return (mean[0], mean[1], mean[2]), n / sum(counts.values())


def detect_background(image: Image.Image) -> RGB:
    """The sheet's plain background colour, read from its border (white for a transparent sheet)."""
    return _background_stats(image)[0]


def flatten(image: Image.Image, background: RGB) -> Image.Image:
    """RGB, upright (EXIF orientation applied), transparency composited onto `background`: kohya
    converts to RGB itself and would turn transparent pixels black."""
    image = ImageOps.exif_transpose(image)
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        ground = Image.new("RGBA", rgba.size, (*background, 255))
        ground.alpha_composite(rgba)
        return ground.convert("RGB")
    return image.convert("RGB")


class Normalised(NamedTuple):
    image: Image.Image  #: RGB, size x size
    scale: float  #: > 1: upscaled
    warnings: list[str]


def normalise(image: Image.Image, background: RGB, size: int = DATASET_IMAGE_SIZE) -> Normalised:
    """Fit the long side to `size` (Lanczos, aspect kept) and pad to a square with `background`.

    Upscaling past DATASET_MAX_UPSCALE is done but reported: the result is soft, and a LoRA trained
    on it learns the softness as part of the character.
    """
    flat = flatten(image, background)
    width, height = flat.size
    scale = size / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if new_size != flat.size:
        flat = flat.resize(new_size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), background)
    canvas.paste(flat, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    warnings = []
    if scale > DATASET_MAX_UPSCALE:
        warnings.append(
            f"upscaled {scale:.1f}x from {width}x{height} px (more than {DATASET_MAX_UPSCALE:g}x): "
            "it will look soft; cut it from a larger source if you can"
        )
    return Normalised(canvas, scale, warnings)


def pixel_hash(image: Image.Image) -> str:
    """A hash of the decoded pixels: the same picture saved twice (other compression, metadata)
    is the same image to the trainer."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _open_image(path: Path, field_name: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except FileNotFoundError:
        raise not_found(str(path)) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise invalid(field_name, f"cannot read {path.name} as an image: {exc}") from None


def _file_pixel_hash(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            im.load()
            return pixel_hash(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


# --------------------------------------------------------------------------------------------
# suggest: find the figures on a plain background
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    box: tuple[int, int, int, int]  #: tight bounding box of the figure's pixels


@dataclass(frozen=True)
class Suggestion:
    spec: CropSpec
    background: RGB
    figures: list[Figure]
    warnings: list[str]


def _foreground_mask(rgb: Image.Image, background: RGB) -> Image.Image:
    diff = ImageChops.difference(rgb, Image.new("RGB", rgb.size, background))
    r, g, b = diff.split()
    furthest = ImageChops.lighter(ImageChops.lighter(r, g), b)
    return furthest.point(lambda v: 255 if v > _BG_TOLERANCE else 0)


def _components(grid: Image.Image) -> list[tuple[int, int, int, int, int]]:
    """8-connected components of non-zero cells: (x0, y0, x1, y1 inclusive, cell count)."""
    width, height = grid.size
    cells = bytearray(grid.tobytes())
    found = []
    for start in range(width * height):
        if not cells[start]:
            continue
        cells[start] = 0
        stack = [start]
        x0 = x1 = start % width
        y0 = y1 = start // width
        count = 0
        while stack:
            i = stack.pop()
            count += 1
            x, y = i % width, i // width
            x0, x1, y0, y1 = min(x0, x), max(x1, x), min(y0, y), max(y1, y)
            for dy in (-1, 0, 1):
                ny = y + dy
                if not 0 <= ny < height:
                    continue
                for dx in (-1, 0, 1):
                    nx = x + dx
                    if 0 <= nx < width and cells[ny * width + nx]:
                        cells[ny * width + nx] = 0
                        stack.append(ny * width + nx)
        found.append((x0, y0, x1, y1, count))
    return found


def find_figures(image: Image.Image, background: RGB | None = None) -> list[Figure]:
    """Figures on a plain sheet: connected regions of non-background pixels, small gaps bridged,
    specks and text labels (much smaller than the tallest figure) dropped. Rows top to bottom,
    left to right within a row."""
    bg = background if background is not None else detect_background(image)
    return _figures_in(_foreground_mask(flatten(image, bg), bg))


def _figures_in(mask: Image.Image) -> list[Figure]:
    # Halving with "any pixel set" keeps one-pixel lines visible at every level (an average would not).
    grid, factor = mask, 1
    while max(grid.size) > _SUGGEST_GRID:
        grid = grid.reduce(2).point(lambda v: 255 if v else 0)
        factor *= 2
    # Bridge a one-cell gap, so a sword held apart from the hand stays with its figure.
    grid = grid.filter(ImageFilter.MaxFilter(3))
    comps = _components(grid)
    if not comps:
        return []
    min_cells = max(2, grid.width * grid.height // 2000)
    tallest = max(c[3] - c[1] + 1 for c in comps)
    figures = []
    for x0, y0, x1, y1, count in comps:
        if count < min_cells or (y1 - y0 + 1) < 0.3 * tallest:
            continue
        region = (
            max(0, (x0 - 1) * factor),
            max(0, (y0 - 1) * factor),
            min(mask.width, (x1 + 2) * factor),
            min(mask.height, (y1 + 2) * factor),
        )
        tight = mask.crop(region).getbbox()
        if tight is None:
            continue
        figures.append(
            Figure((region[0] + tight[0], region[1] + tight[1], region[0] + tight[2], region[1] + tight[3]))
        )
    return _reading_order(figures)


def _reading_order(figures: list[Figure]) -> list[Figure]:
    rows: list[list[Figure]] = []
    for fig in sorted(figures, key=lambda f: f.box[1]):
        row = rows[-1] if rows else None
        # Same row when it starts above the middle of the row's first figure.
        if row and fig.box[1] < (row[0].box[1] + row[0].box[3]) / 2:
            row.append(fig)
        else:
            rows.append([fig])
    return [f for row in rows for f in sorted(row, key=lambda f: f.box[0])]


def _clamp_box(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return (max(0, round(x0)), max(0, round(y0)), min(size[0], round(x1)), min(size[1], round(y1)))


def _square_box(cx: float, top: float, side: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    n = min(round(side), size[0], size[1])
    x0 = min(max(0, round(cx - n / 2)), size[0] - n)
    y0 = min(max(0, round(top)), size[1] - n)
    return (x0, y0, x0 + n, y0 + n)


def _background_words(colour: RGB) -> str:
    lo, hi = min(colour), max(colour)
    if hi - lo <= 24:
        if lo >= 225:
            return "white background"
        if hi <= 40:
            return "black background"
        return "grey background"
    return "simple background"


def suggest_crops(sheet_path: Path, spec_dir: Path | None = None) -> Suggestion:
    """Propose face, bust and full-body crops for every figure on the sheet, with placeholder
    poses for the artist to describe. `spec_dir` is where the spec will be written (the sheet is
    named relative to it); default: the sheet's folder."""
    sheet = _open_image(sheet_path, "sheet")
    background, plain = _background_stats(sheet)
    warnings = []
    if plain < 0.9:
        warnings.append(
            f"the sheet's border is only {plain:.0%} one colour: figures are found on a plain background, "
            "check the boxes"
        )
    mask = _foreground_mask(flatten(sheet, background), background)
    figures = _figures_in(mask)
    if not figures:
        raise invalid(
            "sheet", f"found no figures on {sheet_path.name}'s plain background ({colour_hex(background)})"
        )
    size = sheet.size
    bg_words = _background_words(background)
    crops: list[Crop] = []
    for n, fig in enumerate(figures, start=1):
        fx0, fy0, fx1, fy1 = fig.box
        fh = fy1 - fy0
        margin = max(2, round(0.04 * fh))
        bust_bottom = fy0 + round(0.45 * fh)
        bust = mask.crop((fx0, fy0, fx1, bust_bottom)).getbbox() or (0, 0, fx1 - fx0, 0)
        head = mask.crop((fx0, fy0, fx1, fy0 + max(1, round(0.18 * fh)))).getbbox() or (0, 0, fx1 - fx0, 0)
        head_cx = fx0 + (head[0] + head[2]) / 2
        face_side = max(0.2 * fh, head[2] - head[0]) + 2 * margin
        boxes = (
            ("face", "close-up", _square_box(head_cx, fy0 - margin, face_side, size)),
            ("bust", "upper body", _clamp_box((fx0 + bust[0] - margin, fy0 - margin, fx0 + bust[2] + margin,
                                               bust_bottom), size)),
            ("full", "full body", _clamp_box((fx0 - margin, fy0 - margin, fx1 + margin, fy1 + margin), size)),
        )
        for kind, framing, box in boxes:
            crops.append(
                Crop(
                    name=f"fig{n}-{kind}",
                    box=box,
                    framing=framing,
                    pose=f"{PLACEHOLDER}: pose/action, e.g. standing, front view",
                    background=bg_words,
                    flip=True,
                )
            )
    base = spec_dir if spec_dir is not None else sheet_path.parent
    sheet_ref = Path(os.path.relpath(sheet_path.absolute(), base.absolute())).as_posix()
    spec = CropSpec(sheet=sheet_ref, sheet_background=colour_hex(background), crops=crops)
    return Suggestion(spec, background, figures, warnings)


def default_spec_path(sheet_path: Path) -> Path:
    """Where `suggest` writes by default: `Spyke_Final.crops.json` beside the sheet."""
    return sheet_path.with_name(f"{sheet_path.stem}.crops.json")


# --------------------------------------------------------------------------------------------
# The kohya layout: <dataset>/<repeats>_<trigger>/, repeats from the image count
# --------------------------------------------------------------------------------------------


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


def _original_first(path: Path) -> tuple[str, bool]:
    """Sort key: each original directly followed by its mirrored copy."""
    stem = path.stem.lower()
    return stem.removesuffix(MIRRORED_SUFFIX), stem.endswith(MIRRORED_SUFFIX)


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
    check_trigger(trigger)
    if repeats is not None and repeats < 1:
        raise invalid("repeats", "must be at least 1")
    names = [p.name.lower() for p in planned]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise invalid("name", f"two images would get the same file name: {', '.join(dupes)}")
    if not planned and not dataset_dir.is_dir():
        raise not_found(f"dataset {dataset_dir}")
    dataset_dir.mkdir(parents=True, exist_ok=True)
    with _dataset_lock(dataset_dir):
        folder = find_image_dir(dataset_dir, trigger)
        previous = int(folder.name.split("_", 1)[0]) if folder else None
        existing_images = _images_in(folder) if folder else []

        # Everything is decided before anything is written: a conflict leaves the dataset untouched.
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
        planned_hashes = [p.pixels for p in planned if p.pixels]
        if len(set(planned_hashes)) != len(planned_hashes):
            raise invalid("crops", "two crops give the same pixels: one would be a duplicate")
        new_hashes = {p.pixels: p.name for p in to_write if p.pixels}
        if new_hashes:
            for path in existing_images:
                h = _file_pixel_hash(path)
                if h in new_hashes and path.name != new_hashes[h]:
                    raise PlasmaError(
                        ErrorCode.CONFLICT,
                        f"{new_hashes[h]} has the same pixels as {path.name} already in the dataset",
                        field="image",
                    )

        if folder is None:
            if not planned:
                raise not_found(f"a <repeats>_{trigger} folder in {dataset_dir}")
            count = sum(1 for p in planned if p.pixels)
            folder = dataset_dir / repeats_dir_name(repeats or derive_repeats(count), trigger)
            folder.mkdir()
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
                    ErrorCode.CONFLICT, f"{folder / item.name} appeared meanwhile with other content",
                    field="dataset_dir",
                )

        images = _images_in(folder)
        originals = sum(1 for p in images if not is_mirrored_name(p))
        wanted = repeats if repeats is not None else derive_repeats(len(images))
        target_dir = dataset_dir / repeats_dir_name(wanted, trigger)
        if target_dir != folder:
            if target_dir.exists():
                raise PlasmaError(ErrorCode.CONFLICT, f"{target_dir} exists; cannot rename {folder.name}")
            # One rename moves every file at once: kohya never sees half the set under either name.
            os.rename(folder, target_dir)
            folder = target_dir
    files = [FileOutcome(folder / o.path.name, o.action, o.note) for o in (*outcomes, *skipped)]
    return BuildResult(folder, wanted, previous, originals, len(images), files, warnings)


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


# --------------------------------------------------------------------------------------------
# Regularisation set (DATA-03): <dataset>-reg/1_<class>/reg-NNNN.png
# --------------------------------------------------------------------------------------------


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
    try:
        with Image.open(io.BytesIO(png_bytes)) as im:
            im.load()
            extrema = im.convert("L").getextrema()
    except (OSError, SyntaxError, ValueError) as exc:
        message = f"reg image {item.index}: not an image ({exc})"
        raise PlasmaError(ErrorCode.COMFYUI_REJECTED, message) from None
    if extrema == (0, 0):
        # NaNs in fp16 on Apple GPUs decode to an all-black image with no error: never keep one.
        message = f"reg image {item.index} (seed {item.seed}) is all black: NaN in fp16?"
        raise PlasmaError(ErrorCode.COMFYUI_REJECTED, message)
    item.image_path.parent.mkdir(parents=True, exist_ok=True)
    caption = (item.caption + "\n").encode()
    if not create_new(item.caption_path, caption) and not same_content(item.caption_path, caption):
        raise PlasmaError(
            ErrorCode.CONFLICT, f"{item.caption_path} exists with another caption; remove it to regenerate",
        )
    if create_new(item.image_path, png_bytes):
        return "written"
    return "kept"


# --------------------------------------------------------------------------------------------
# The gate: check_dataset
# --------------------------------------------------------------------------------------------


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


def _read_caption(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


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
    if not dataset_dir.is_dir():
        problem(ProblemKind.LAYOUT, dataset_dir, "no such folder")
        problem(ProblemKind.COUNT, dataset_dir, f"0 original images, need at least {DATASET_MIN_IMAGES}")
        return
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
        return
    folder, repeats, _ = mine[0]
    report.image_dir, report.repeats = folder, repeats
    if repeats < 1:
        problem(ProblemKind.LAYOUT, folder, "0 repeats: kohya skips the folder")

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
        read = _read_image(path, full=True)
        if isinstance(read, str):
            problem(ProblemKind.UNREADABLE, path, read)
        else:
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
        caption_path = path.with_suffix(CAPTION_EXT)
        text = _read_caption(caption_path)
        if text is None:
            reason = "no caption" if not caption_path.exists() else "caption is not readable UTF-8 text"
            problem(ProblemKind.CAPTION, caption_path, reason)
            continue
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

    for caption_path in sorted(folder.glob("*" + CAPTION_EXT)):
        if caption_path.stem.lower() not in stems:
            warning(ProblemKind.ORPHAN, caption_path, "a caption without an image")
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


# --------------------------------------------------------------------------------------------
# Contact sheet
# --------------------------------------------------------------------------------------------


_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def _wrap(text: str, font: _Font, width: int, max_lines: int) -> list[str]:
    lines: list[str] = []
    for word in text.split(" "):
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
            continue
        while font.getlength(word) > width and len(word) > 1:  # a tag longer than the cell: cut it
            cut = len(word)
            while cut > 1 and font.getlength(word[:cut]) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], lines[max_lines - 1] + " ..."]
    return lines


def contact_sheet(
    dataset_dir: Path, out_path: Path | None = None, *, thumb: int = 160, columns: int | None = None
) -> Path:
    """One PNG with every training image and its caption under it. Written to `out_path` (CONFLICT
    when it exists), or by default to `<dataset>/contact-sheet.png`, the next free name when taken
    (kohya ignores files at the dataset's top level). Returns the path written."""
    if thumb < 32:
        raise invalid("thumb", "must be at least 32 px")
    entries: list[tuple[Path, Image.Image | None, str]] = []
    for folder, _, _ in _repeat_dirs(dataset_dir):
        for path in sorted(_images_in(folder), key=_original_first):
            small: Image.Image | None = None
            try:
                with Image.open(path) as im:
                    im.load()
                    small = flatten(im, (255, 255, 255))
                small.thumbnail((thumb, thumb), Image.Resampling.LANCZOS)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
                small = None
            caption = _read_caption(path.with_suffix(CAPTION_EXT))
            text = " ".join(caption.split()) if caption is not None else "(no caption)"
            entries.append((path, small, text))
    if not entries:
        raise invalid("dataset_dir", f"no images in {dataset_dir}")

    font = ImageFont.load_default()
    pad = 8
    ascent, descent = font.getmetrics() if isinstance(font, ImageFont.FreeTypeFont) else (10, 2)
    line_h = ascent + descent + 2
    cols = columns or min(8, max(1, math.ceil(math.sqrt(len(entries)))))
    texts = [[e[0].name, *_wrap(e[2], font, thumb, 8)] for e in entries]
    rows = [range(i, min(i + cols, len(entries))) for i in range(0, len(entries), cols)]
    row_heights = [thumb + pad + line_h * max(len(texts[i]) for i in row) + pad for row in rows]
    header_h = line_h + 2 * pad
    width = pad + cols * (thumb + pad)
    sheet = Image.new("RGB", (width, header_h + sum(row_heights)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    originals = sum(1 for e in entries if not is_mirrored_name(e[0]))
    draw.text((pad, pad), f"{dataset_dir.name}: {originals} originals, {len(entries) - originals} mirrored",
              fill=(0, 0, 0), font=font)
    y = header_h
    for row, row_h in zip(rows, row_heights, strict=True):
        for col, i in enumerate(row):
            x = pad + col * (thumb + pad)
            image = entries[i][1]
            if image is None:
                draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill=(255, 200, 200))
                draw.text((x + 4, y + 4), "unreadable", fill=(160, 0, 0), font=font)
            else:
                sheet.paste(image, (x + (thumb - image.width) // 2, y + (thumb - image.height) // 2))
                draw.rectangle((x - 1, y - 1, x + thumb, y + thumb), outline=(200, 200, 200))
            for n, line in enumerate(texts[i]):
                colour = (90, 90, 90) if n == 0 else (0, 0, 0)
                draw.text((x, y + thumb + pad // 2 + n * line_h), line, fill=colour, font=font)
        y += row_h

    data = _png_bytes(sheet)
    if out_path is not None:
        if not create_new(out_path, data):
            raise PlasmaError(ErrorCode.CONFLICT, f"{out_path} exists; choose another name", field="out")
        return out_path
    for candidate in _numbered(dataset_dir / CONTACT_SHEET_NAME):
        if create_new(candidate, data):
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover
