"""The crops file (DATA-01) and `suggest`: which boxes of a character sheet become training images.

Owns crops.json (the Crop and CropSpec models, parsing, loading, the checks before a build, writing
it without replacing a file) and the figure search on a plain sheet that proposes face, bust and
full-body crops for the artist to describe.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from PIL import Image, ImageChops, ImageColor, ImageFilter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from plasmad.core.errors import ErrorCode, PlasmaError, invalid, not_found
from plasmad.core.fsutil import create_new
from plasmad.dataset.captions import MIRRORED_SUFFIX, _field_problem, _tags
from plasmad.dataset.images import RGB, _background_stats, _open_image, colour_hex, flatten

PLACEHOLDER = "TODO"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}")

# suggest: how far a pixel may be from the background colour and still be background (JPEG noise,
# antialiasing), and the grid the figure search runs on (the sheet is reduced to at most this).
_BG_TOLERANCE = 24
_SUGGEST_GRID = 256


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


def _figures_in(mask: Image.Image) -> list[Figure]:
    """Figures in a sheet's foreground mask: connected regions, small gaps bridged, specks and text
    labels (much smaller than the tallest figure) dropped. Rows top to bottom, left to right within a row."""
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
