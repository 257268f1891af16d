"""File writing that never leaves a half-written file and never overwrites a user's file.

Blocking: call these through asyncio.to_thread from the event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import filecmp
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def _temp_beside(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """A temp file in the destination's folder (same filesystem: rename and link are atomic),
    filled by `write` and flushed to disk, readable by all like any file we publish."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _publish_new(tmp: Path, path: Path) -> bool:
    """Link `tmp` into place as `path` unless something is there; False if something is.

    link(2) fails when the name exists, so two writers can never both win the same name.
    """
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def replace_atomic(path: Path, data: bytes) -> None:
    """Replace (or create) `path` in one step: readers see the old file or the new one, never half."""
    tmp = _temp_beside(path, lambda f: f.write(data))
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_new(path: Path, write: Callable[[BinaryIO], object]) -> bool:
    """Create `path` with what `write` writes into it, only if nothing is there yet; False if
    something is. For files written piece by piece (a LoRA rewritten header first)."""
    return _publish_new(_temp_beside(path, write), path)


def create_new(path: Path, data: bytes) -> bool:
    """Create `path` with `data` only if nothing is there yet; False if something is."""
    return write_new(path, lambda f: f.write(data))


def same_content(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


def copy_new(src: Path, path: Path) -> bool:
    """create_new for a file too big to hold in memory (a LoRA): streamed, then linked into place."""
    with src.open("rb") as f:
        return write_new(path, lambda out: shutil.copyfileobj(f, out, 1024 * 1024))


def same_file_content(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (streamed; sizes compared first)."""
    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if missing), across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
