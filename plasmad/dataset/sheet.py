"""The contact sheet: one PNG with every training image and its caption under it.

Owns the sheet's drawing (thumbnails, wrapped captions, originals each followed by its flip) and
where it is written: beside the image folder, where kohya does not look.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from plasmad.core.errors import ErrorCode, PlasmaError, invalid
from plasmad.core.fsutil import create_new
from plasmad.dataset.captions import MIRRORED_SUFFIX, _read_caption
from plasmad.dataset.crops import _numbered
from plasmad.dataset.images import _png_bytes, flatten
from plasmad.dataset.layout import CAPTION_EXT, _images_in, _repeat_dirs, is_mirrored_name

CONTACT_SHEET_NAME = "contact-sheet.png"


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




def _original_first(path: Path) -> tuple[str, bool]:
    """Sort key: each original directly followed by its mirrored copy."""
    stem = path.stem.lower()
    return stem.removesuffix(MIRRORED_SUFFIX), stem.endswith(MIRRORED_SUFFIX)


def contact_sheet(
    dataset_dir: Path, out_path: Path | None = None, *, thumb: int = 160, columns: int | None = None
) -> Path:
    """One PNG with every training image and its caption under it. Written to `out_path` (CONFLICT
    when it exists), or by default to `<dataset>/contact-sheet.png`, the next free name when taken
    (kohya ignores files at the dataset's top level). Returns the path written."""
    if thumb < 32:
        raise invalid("thumb", "must be at least 32 px")
    entries = _entries(dataset_dir, thumb)
    if not entries:
        raise invalid("dataset_dir", f"no images in {dataset_dir}")
    data = _png_bytes(_draw(dataset_dir.name, entries, thumb, columns))
    if out_path is not None:
        if not create_new(out_path, data):
            raise PlasmaError(ErrorCode.CONFLICT, f"{out_path} exists; choose another name", field="out")
        return out_path
    for candidate in _numbered(dataset_dir / CONTACT_SHEET_NAME):
        if create_new(candidate, data):
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


_Entry = tuple[Path, Image.Image | None, str]  #: an image, its thumbnail (None: unreadable), its caption


def _entries(dataset_dir: Path, thumb: int) -> list[_Entry]:
    """Every image of the dataset's image folders, each original followed by its flip."""
    entries: list[_Entry] = []
    for folder, _, _ in _repeat_dirs(dataset_dir):
        for path in sorted(_images_in(folder), key=_original_first):
            small = _thumbnail(path, thumb)
            caption = _read_caption(path.with_suffix(CAPTION_EXT))
            text = " ".join(caption.split()) if caption is not None else "(no caption)"
            entries.append((path, small, text))
    return entries


def _thumbnail(path: Path, thumb: int) -> Image.Image | None:
    try:
        with Image.open(path) as im:
            im.load()
            small = flatten(im, (255, 255, 255))
        small.thumbnail((thumb, thumb), Image.Resampling.LANCZOS)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return small


def _draw(name: str, entries: list[_Entry], thumb: int, columns: int | None) -> Image.Image:
    """A header line, then a grid of cells: the thumbnail, the file name and the wrapped caption."""
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
    draw.text((pad, pad), f"{name}: {originals} originals, {len(entries) - originals} mirrored",
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
    return sheet
