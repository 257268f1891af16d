"""Images: colours, the sheet's background, flattening, normalisation to 512 px, pixel hashes.

Owns what is done to one picture before it becomes a training image: reading it upright, finding its
plain background from the border, compositing transparency, fitting and padding it to a square, and
the pixel hash that tells two files of the same picture apart from two pictures.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageColor, ImageOps

from plasmad.core.errors import invalid, not_found
from plasmad.core.limits import DATASET_IMAGE_SIZE, DATASET_MAX_UPSCALE

RGB = tuple[int, int, int]


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
