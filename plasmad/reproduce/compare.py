"""Comparing two renders: pixel-identical or not, the largest difference, and SSIM.

SSIM is scikit-image's `structural_similarity` on the RGB pixels (1.0: the same picture; a render
whose colours drift by a few levels, as on an Apple GPU, stays close to 1; another composition
falls far below). numpy and scikit-image are imported on first use: the daemon starts without them.
Blocking: call through asyncio.to_thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    import numpy as np

SSIM_WINDOW = 7  #: scikit-image's default window, px: a region must be at least this big


@dataclass(frozen=True)
class Comparison:
    identical: bool
    max_diff: int | None  #: None when the sizes differ
    ssim: float | None
    note: str | None = None


def load(path: Path, crop: dict[str, int] | None = None) -> np.ndarray[Any, Any]:
    """The image's RGB pixels (uint8, height x width x 3), cut to `crop` ({x, y, width, height})."""
    import numpy as np

    with Image.open(path) as im:
        rgb = im.convert("RGB")
        if crop is not None:
            rgb = rgb.crop((crop["x"], crop["y"], crop["x"] + crop["width"], crop["y"] + crop["height"]))
        return np.asarray(rgb, dtype=np.uint8)


def compare(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> Comparison:
    import numpy as np
    from skimage.metrics import structural_similarity

    if a.shape != b.shape:
        size_a, size_b = f"{a.shape[1]}x{a.shape[0]}", f"{b.shape[1]}x{b.shape[0]}"
        return Comparison(False, None, None, f"sizes differ: {size_a} and {size_b}")
    max_diff = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
    if max_diff == 0:
        return Comparison(True, 0, 1.0)
    side = min(a.shape[0], a.shape[1])
    window = min(SSIM_WINDOW, side if side % 2 else side - 1)
    ssim = float(
        structural_similarity(a, b, channel_axis=2, data_range=255, win_size=window)  # type: ignore[no-untyped-call]
    )
    return Comparison(False, max_diff, round(ssim, 6))


def matrix(images: list[np.ndarray[Any, Any] | None]) -> list[list[float | None]]:
    """SSIM of every image against every image (None where one is missing or sizes differ)."""
    out: list[list[float | None]] = []
    for i, a in enumerate(images):
        row: list[float | None] = []
        for j, b in enumerate(images):
            if a is None or b is None:
                row.append(None)
            elif j < i:
                row.append(out[j][i])  # symmetric
            else:
                row.append(compare(a, b).ssim)
        out.append(row)
    return out


def crop_fits(crop: dict[str, int], width: int, height: int) -> bool:
    return crop["x"] + crop["width"] <= width and crop["y"] + crop["height"] <= height
