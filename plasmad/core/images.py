"""Telling a generated image from a broken one, without trusting whoever made it."""

from __future__ import annotations

import io
from typing import cast

from PIL import Image

from plasmad.core.errors import ErrorCode, PlasmaError

#: What makes a UNet give NaN (all black) or nothing at all, and what to change.
ONE_COLOUR_ADVICE = (
    "the UNet most likely produced NaN (fp16 on Apple GPUs does this): run it at fp32 "
    "(PLASMA_UNET_DTYPE=fp32) or start ComfyUI with --force-upcast-attention, then submit it again"
)


def one_colour(png: bytes) -> str | None:
    """The colour (#rrggbb) if every pixel of the image has it, else None (blocking).

    Raises OSError/ValueError/SyntaxError when the bytes are not an image."""
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        rgb = im.convert("RGB")
    # Per band (lowest, highest): an RGB image has three bands, so a tuple of three pairs.
    bands = cast(tuple[tuple[int, int], ...], rgb.getextrema())
    lows = [lo for lo, hi in bands if lo == hi]
    return "#" + "".join(f"{lo:02x}" for lo in lows) if len(lows) == 3 else None


def check_generated(png: bytes, what: str) -> None:
    """Refuse bytes that are not an image, or an image that is all one colour (blocking).

    NaNs in fp16 on Apple GPUs decode to an all-black image with no error, and a blank of any
    other colour is no picture either: never keep one as a page or a dataset image."""
    try:
        colour = one_colour(png)
    except (OSError, SyntaxError, ValueError) as exc:
        raise PlasmaError(ErrorCode.COMFYUI_REJECTED, f"{what}: not an image ({exc})") from None
    if colour is not None:
        shade = "all black" if colour == "#000000" else f"all one colour ({colour})"
        raise PlasmaError(
            ErrorCode.BAD_IMAGE, f"{what} is {shade}: {ONE_COLOUR_ADVICE}", details={"colour": colour}
        )
