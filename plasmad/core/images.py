"""Telling a generated image from a broken one, without trusting whoever made it."""

from __future__ import annotations

import io

from PIL import Image

from plasmad.core.errors import ErrorCode, PlasmaError


def check_generated(png: bytes, what: str) -> None:
    """Refuse bytes that are not an image, or an image that is all black (blocking).

    NaNs in fp16 on Apple GPUs decode to an all-black image with no error: never keep one."""
    try:
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            extrema = im.convert("L").getextrema()
    except (OSError, SyntaxError, ValueError) as exc:
        raise PlasmaError(ErrorCode.COMFYUI_REJECTED, f"{what}: not an image ({exc})") from None
    if extrema == (0, 0):
        raise PlasmaError(ErrorCode.COMFYUI_REJECTED, f"{what} is all black: NaN in fp16?")
