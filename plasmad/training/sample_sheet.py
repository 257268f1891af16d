"""The contact sheet for choosing a LoRA checkpoint (LORA-02): one labelled grid, rows = checkpoints,
columns = prompts, every cell drawn with the same seed per column, so a row-to-row difference is the
checkpoint's doing. Blocking (Pillow): call it through asyncio.to_thread.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from plasmad.core.fsutil import replace_atomic

CELL = 256  #: the longer side of a cell, px
LABEL_WIDTH = 150
PAD = 8
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MISSING = (225, 225, 225)

_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def _wrap(text: str, font: _Font, width: int, max_lines: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], lines[max_lines - 1] + " ..."]
    return lines


def compose(
    title: str,
    rows: list[str],
    columns: list[str],
    cells: list[list[Path | None]],
    out: Path,
    *,
    cell: int = CELL,
) -> Path:
    """Draw the grid and write it to `out` atomically (a reader never sees half a sheet). A cell
    whose image is None (its job failed) is drawn grey with a word saying so."""
    font: _Font = ImageFont.load_default()
    line_height = int(font.getbbox("Ag")[3]) + 3
    column_lines = [_wrap(text, font, cell - 2 * PAD, 4) for text in columns]
    header = (
        PAD + line_height + PAD + max((len(lines) for lines in column_lines), default=1) * line_height + PAD
    )
    width = LABEL_WIDTH + len(columns) * (cell + PAD) + PAD
    height = header + len(rows) * (cell + PAD) + PAD
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, PAD), title, fill=INK, font=font)
    for c, lines in enumerate(column_lines):
        x = LABEL_WIDTH + c * (cell + PAD)
        for n, line in enumerate(lines):
            draw.text((x, PAD + line_height + PAD + n * line_height), line, fill=INK, font=font)
    for r, label in enumerate(rows):
        y = header + r * (cell + PAD)
        for n, line in enumerate(_wrap(label, font, LABEL_WIDTH - 2 * PAD, 6)):
            draw.text((PAD, y + n * line_height), line, fill=INK, font=font)
        for c in range(len(columns)):
            x = LABEL_WIDTH + c * (cell + PAD)
            path = cells[r][c] if c < len(cells[r]) else None
            picture = _load(path, cell)
            if picture is None:
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=MISSING)
                draw.text(
                    (x + PAD, y + cell // 2), "failed" if path is None else "unreadable", fill=INK, font=font
                )
            else:
                sheet.paste(picture, (x + (cell - picture.width) // 2, y + (cell - picture.height) // 2))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    replace_atomic(out, buffer.getvalue())
    return out


def _load(path: Path | None, cell: int) -> Image.Image | None:
    if path is None:
        return None
    try:
        with Image.open(path) as im:
            im.load()
            # Up or down to the cell: a 64 px test image becomes visible, a 512x768 one fits.
            return ImageOps.contain(im.convert("RGB"), (cell, cell), Image.Resampling.LANCZOS)
    except (OSError, SyntaxError, ValueError):
        return None
