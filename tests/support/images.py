"""Pictures drawn with Pillow for the dataset tests: a standing figure (asymmetric, like Spyke) and
reference sheets of them on a plain background, as an artist's sheet would be."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from plasmad import dataset as ds

WHITE = (255, 255, 255)
COLOURS = [(200, 60, 40), (40, 120, 200), (60, 160, 70), (150, 70, 170), (220, 160, 30)]


def draw_figure(
    draw: ImageDraw.ImageDraw, x: int, y: int, h: int, colour: tuple[int, int, int]
) -> tuple[int, ...]:
    """A standing figure of height h at (x, y) top-left; returns its bounding box. Asymmetric, like
    Spyke: a bracer on one forearm and a pauldron on the other knee."""
    w = int(h * 0.4)
    cx = x + w // 2
    head = int(h * 0.18)
    outline = (20, 20, 20)
    skin = (240, 200, 170)
    draw.ellipse((cx - head // 2, y, cx + head // 2, y + head), fill=skin, outline=outline, width=2)
    hair = [(cx - head // 2, y + 4), (cx, y), (cx + head // 2, y + 4), (cx, y + head // 3)]
    draw.polygon(hair, fill=colour)
    body_top, body_bottom = y + head + 2, y + int(h * 0.6)
    draw.rectangle((cx - w // 4, body_top, cx + w // 4, body_bottom), fill=colour, outline=outline, width=2)
    draw.rectangle((x, body_top + 4, cx - w // 4, body_top + 14), fill=colour, outline=outline)  # arm
    draw.rectangle((cx + w // 4, body_top + 4, x + w, body_top + 14), fill=colour, outline=outline)  # arm
    draw.rectangle((x, body_top + 4, x + 10, body_top + 14), fill=(90, 90, 90))  # bracer, one side only
    draw.rectangle((cx - w // 4, body_bottom, cx - 3, y + h), fill=(60, 60, 80), outline=outline)  # leg
    draw.rectangle((cx + 3, body_bottom, cx + w // 4, y + h), fill=(60, 60, 80), outline=outline)  # leg
    draw.rectangle((cx + 3, y + int(h * 0.75), cx + w // 4 + 4, y + int(h * 0.8)), fill=(180, 180, 190))
    return (x, y, x + w + 1, y + h + 1)


def make_sheet(path: Path, figures: int, *, background: tuple[int, int, int] = WHITE, h: int = 280,
               extras: bool = True, mode: str = "RGB") -> list[tuple[int, ...]]:
    """A reference sheet: `figures` figures in a row on a plain background, plus a speck and a small
    label that suggest must ignore. Returns the figures' boxes."""
    width = 40 + figures * 150
    sheet = Image.new("RGB", (width, h + 80), background)
    draw = ImageDraw.Draw(sheet)
    boxes = [draw_figure(draw, 40 + i * 150, 30, h, COLOURS[i % len(COLOURS)]) for i in range(figures)]
    if extras:
        draw.rectangle((5, h + 70, 7, h + 72), fill=(0, 0, 0))  # a speck
        draw.rectangle((60, h + 45, 110, h + 55), fill=(30, 30, 30))  # a label under the first figure
    if mode == "RGBA":
        rgba = sheet.convert("RGBA")
        rgba.putalpha(ds._foreground_mask(sheet, background))  # the background becomes transparent
        rgba.save(path)
    else:
        sheet.save(path)
    return boxes
