"""Thumbnails for the board's grids, cached on disk (blocking: call through asyncio.to_thread).

A grid of 512x768 PNGs would move megabytes per screen; a 256 px JPEG is a few kilobytes. Each
thumbnail is made once, in a thread, and kept in `<state>/thumbnails/` under a key of the image's
path, byte size and modification time and the thumbnail's size: an image written anew (a new
mtime) gets a new thumbnail, and nothing has to be invalidated. Images are never rewritten in
place here, so old keys are only left behind when a file is replaced by hand.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from plasmad.core.errors import ErrorCode, PlasmaError, not_found
from plasmad.core.fsutil import replace_atomic

FOLDER = "thumbnails"
QUALITY = 85  #: JPEG quality: no visible loss at grid size


def thumbnail(image: Path, size: int, cache: Path) -> Path:
    """The cached thumbnail of `image` (its longer side `size` px), made now if missing."""
    try:
        info = image.stat()
    except FileNotFoundError:
        raise not_found(f"image {image.name}") from None
    key = hashlib.sha256(
        f"{image.resolve()}\0{info.st_size}\0{info.st_mtime_ns}\0{size}".encode()
    ).hexdigest()[:32]
    out = cache / key[:2] / f"{key}.jpg"
    if out.is_file():
        return out
    replace_atomic(out, _render(image, size))  # two requests at once both write the same bytes
    return out


def _render(image: Path, size: int) -> bytes:
    try:
        with Image.open(image) as im:
            im.draft("RGB", (size, size))  # JPEG sources decode at a fraction of their size
            small = ImageOps.exif_transpose(im).convert("RGB")
            small.thumbnail((size, size))  # only ever smaller: a small image stays as it is
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise PlasmaError(ErrorCode.CONFLICT, f"{image.name} is not a readable image: {exc}") from None
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=QUALITY, optimize=True)
    return buffer.getvalue()
