"""The contact sheet of a reproduction or consistency check: the pictures side by side, labelled.

One row: the reference first (the page, or run 1), then every run, each with its verdict under it
(identical, or the SSIM and the largest pixel difference). A scored region (`crop`) is outlined
on every picture. Small renders are enlarged with hard pixel edges, so a one-pixel difference of a
64 px test image stays visible. Blocking: call through asyncio.to_thread.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from plasmad.core.fsutil import replace_atomic

CELL = 256  #: the longer side of a picture on the sheet, px
PAD = 10
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MISSING = (225, 225, 225)
OUTLINE = (230, 30, 30)


@dataclass(frozen=True)
class Cell:
    image: Path | None  #: None: the run has no picture (its job failed)
    lines: list[str]  #: the label under it


def _picture(path: Path | None) -> tuple[Image.Image, float] | None:
    """The picture fitted to the cell, and the scale it was drawn at."""
    if path is None:
        return None
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (OSError, SyntaxError, ValueError):
        return None
    scale = min(CELL / rgb.width, CELL / rgb.height)
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    return ImageOps.contain(rgb, (CELL, CELL), resample), scale


def draw(title: str, cells: list[Cell], out: Path, crop: dict[str, int] | None = None) -> Path:
    """Draw the sheet and write it to `out` (temp + rename: a reader never sees half of it)."""
    font = ImageFont.load_default()
    line_h = int(font.getbbox("Ag")[3]) + 4
    label_lines = max((len(c.lines) for c in cells), default=1)
    top = PAD + line_h + PAD
    width = PAD + len(cells) * (CELL + PAD)
    height = top + CELL + PAD + label_lines * line_h + PAD
    sheet = Image.new("RGB", (max(width, 400), height), BACKGROUND)
    pen = ImageDraw.Draw(sheet)
    pen.text((PAD, PAD), title, fill=INK, font=font)
    for i, cell in enumerate(cells):
        x = PAD + i * (CELL + PAD)
        fitted = _picture(cell.image)
        if fitted is None:
            pen.rectangle((x, top, x + CELL - 1, top + CELL - 1), fill=MISSING)
            pen.text((x + PAD, top + CELL // 2), "no picture", fill=INK, font=font)
        else:
            picture, scale = fitted
            left, upper = x + (CELL - picture.width) // 2, top + (CELL - picture.height) // 2
            sheet.paste(picture, (left, upper))
            if crop is not None:
                box = [crop["x"], crop["y"], crop["x"] + crop["width"], crop["y"] + crop["height"]]
                x0, y0, x1, y1 = (round(v * scale) for v in box)
                outline = (left + x0, upper + y0, left + x1 - 1, upper + y1 - 1)
                pen.rectangle(outline, outline=OUTLINE, width=2)
        for n, line in enumerate(cell.lines):
            pen.text((x, top + CELL + PAD + n * line_h), line, fill=INK, font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    replace_atomic(out, buffer.getvalue())
    return out
