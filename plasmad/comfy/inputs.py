"""Images handed to ComfyUI through its input/ folder (CTRL-01): a filesystem copy, not POST /upload/image.

A user's image is read once, checked with Pillow, and written into COMFYUI_DIR/input/ under a name
made of its content's hash, `plasma-<sha256[:16]>.<ext>`. The name never comes from the user, so it
cannot lead out of input/ however the source path is spelled (symlinks in it are simply followed
for reading). The same content always gets the same name, so a second request reuses the file and
nothing is ever overwritten. Staged files are kept: a page's workflow JSON names them, and running
that workflow again (PIPE-05) needs them.

Blocking: call these through asyncio.to_thread from the event loop.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from plasmad.core.errors import ErrorCode, PlasmaError, invalid
from plasmad.core.fsutil import create_new, same_content

NAME_PREFIX = "plasma-"
HASH_CHARS = 16  # 64 bits of sha256: a collision among one artist's pose images is not a concern
# A pose or init image is a page-sized picture; far bigger is a wrong path (a video, a disk image).
MAX_INPUT_BYTES = 64 * 1024 * 1024
# Formats ComfyUI's LoadImage reads, with the suffix the staged copy gets. Anything else is refused
# rather than converted: converting would make the copy differ from the hashed original.
SUFFIXES = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "MPO": ".jpg",  # a phone's JPEG with a depth frame; LoadImage uses its first frame only
    "WEBP": ".webp",
    "BMP": ".bmp",
    "GIF": ".gif",
    "TIFF": ".tiff",
}
# EXIF orientations that turn the picture a quarter: LoadImage applies them (exif_transpose).
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class SourceImage:
    """A user's image, read and checked, not yet in ComfyUI's input/."""

    path: str  #: the path as the request gave it (recorded in the generation log)
    data: bytes = field(repr=False)
    sha256: str
    format: str
    width: int  #: as ComfyUI's LoadImage sees it: EXIF orientation applied
    height: int

    @property
    def name(self) -> str:
        """The file name in input/: from the content only, never from the user."""
        return f"{NAME_PREFIX}{self.sha256[:HASH_CHARS]}{SUFFIXES[self.format]}"


def read_image(path_text: str, field_name: str) -> SourceImage:
    """Read `path_text` once and check that it is one image ComfyUI can load; 400 naming the field if not."""
    path = Path(path_text).expanduser()
    if not path.is_absolute():
        # The daemon's working directory means nothing to the caller (plasmactl sends absolute paths).
        raise invalid(field_name, f"{path_text!r} must be an absolute path")
    data = _read_regular_file(path, path_text, field_name)
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = str(img.format)
            width, height = img.size
            frames = int(getattr(img, "n_frames", 1))
            img.verify()  # checksums (PNG CRCs); fails fast on junk. Must come right after open.
        with Image.open(io.BytesIO(data)) as img:
            orientation = img.getexif().get(_EXIF_ORIENTATION)
            img.load()  # a full decode: a truncated file fails here, not in ComfyUI
    except UnidentifiedImageError:
        raise invalid(field_name, f"{path_text!r} is not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise invalid(field_name, f"{path_text!r} is not a readable image ({exc})") from None
    if fmt not in SUFFIXES:
        raise invalid(field_name, f"{path_text!r} is a {fmt} image; use PNG, JPEG or WebP")
    if frames > 1 and fmt != "MPO":
        # LoadImage turns every frame into a batch entry: a batch of one is the only safe size.
        raise invalid(field_name, f"{path_text!r} has {frames} frames; one still image only (batch size 1)")
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return SourceImage(
        path=path_text,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        format=fmt,
        width=width,
        height=height,
    )


def _read_regular_file(path: Path, path_text: str, field_name: str) -> bytes:
    # O_NONBLOCK: opening a FIFO must not hang the worker thread waiting for a writer.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise invalid(field_name, f"{path_text!r} does not exist") from None
    except PermissionError:
        raise invalid(field_name, f"{path_text!r} is not readable (permission denied)") from None
    except OSError as exc:
        raise invalid(field_name, f"{path_text!r} cannot be opened ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)  # of what was opened, not of what the name points at now
        if not stat.S_ISREG(st.st_mode):
            what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise invalid(field_name, f"{path_text!r} is {what}")
        if st.st_size > MAX_INPUT_BYTES:
            raise invalid(field_name, f"{path_text!r} is over {MAX_INPUT_BYTES // 2**20} MiB")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_INPUT_BYTES + 1)
        except OSError as exc:
            raise invalid(field_name, f"{path_text!r} cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_INPUT_BYTES:
        raise invalid(field_name, f"{path_text!r} is over {MAX_INPUT_BYTES // 2**20} MiB")
    if not data:
        raise invalid(field_name, f"{path_text!r} is empty")
    return data


def stage(image: SourceImage, input_dir: Path) -> Path:
    """Put `image` into ComfyUI's input/ under its content-hash name; reuse an identical copy."""
    dest = input_dir / image.name
    try:
        input_dir.mkdir(exist_ok=True)
        if same_content(dest, image.data) or create_new(dest, image.data) or same_content(dest, image.data):
            return dest
    except OSError as exc:
        raise PlasmaError(
            ErrorCode.NOT_CONFIGURED,
            f"cannot write into ComfyUI's input folder {input_dir}: {exc.strerror or exc}",
            field="COMFYUI_DIR",
        ) from None
    # Same name, other bytes: something else wrote there. Never overwrite it.
    raise PlasmaError(
        ErrorCode.CONFLICT,
        f"{dest} exists with other content; plasmad never overwrites it (move it away and retry)",
    )
