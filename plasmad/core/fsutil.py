"""File writing that never leaves a half-written file and never overwrites a user's file.

Every file is written under a temp name beside its destination, `.<name>.<random>.plasma.tmp`,
then linked or renamed into place. A kill -9 mid-write leaves such a temp file; the names say
they are ours, so `sweep_stale_temps` removes old ones at start and nothing else.

Blocking: call these through asyncio.to_thread from the event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import filecmp
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from plasmad.core.errors import ErrorCode, PlasmaError, storage_error

TEMP_SUFFIX = ".plasma.tmp"  #: the end of every temp file name of ours (and of nobody else's)
#: Free space a folder must have before a render is sent for it: a 512x768 page is under 1.5 MB.
MIN_FREE_BYTES = 2 * 1024 * 1024


def _temp_beside(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """A temp file in the destination's folder (same filesystem: rename and link are atomic),
    filled by `write` and flushed to disk, readable by all like any file we publish."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = tmp  # a failed write names no file: say where (storage_errors reads it)
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


def stage(path: Path, data: bytes) -> Path:
    """`data` written (and flushed) to a temp file beside `path`, not yet published: the bytes
    are on disk before any name is taken, so a full disk fails here and leaves nothing."""
    return _temp_beside(path, lambda f: f.write(data))


def link_new(tmp: Path, path: Path) -> bool:
    """Publish a `stage`d file as `path` unless something is there (False then); `tmp` stays,
    for another name or for the caller to remove."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False


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


# --- storage faults: said so, checked before work is spent, leftovers swept ----------------------------


@contextlib.contextmanager
def storage_errors(folder: Path, then: str = "") -> Iterator[None]:
    """Turn a disk-full, read-only or permission OSError into a STORAGE PlasmaError naming the
    folder and what to do (`then`: how to carry on afterwards); other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        err = storage_error(exc, folder, then)
        if err is None:
            raise
        raise err from exc


def check_writable(folder: Path, min_free: int = MIN_FREE_BYTES, then: str = "") -> None:
    """Refuse (STORAGE) a folder that cannot take a new file now: created if missing, a probe file
    written, flushed and removed (the one test that holds for root, read-only mounts and quotas
    alike), and at least `min_free` bytes free."""
    with storage_errors(folder, then):
        folder.mkdir(parents=True, exist_ok=True)
        stage(folder / "probe", b"plasmad write check\n").unlink()
        info = os.statvfs(folder)
    free = info.f_bavail * info.f_frsize
    if free < min_free:
        raise PlasmaError(
            ErrorCode.STORAGE,
            f"cannot write to {folder}: only {free // 1024} KB free, a page needs up to "
            f"{min_free // 1024} KB; free some space there" + (f", then {then}" if then else ""),
            details={"folder": str(folder), "errno": "ENOSPC", "freeBytes": free},
        )


def sweep_stale_temps(folders: Iterable[Path], older_than_s: float) -> list[Path]:
    """Remove our temp files (`*.plasma.tmp`, a kill -9's leftovers) older than `older_than_s`
    from `folders` (not their subfolders); the ones removed. Anything else is left alone, and a
    folder that is missing or unreadable is skipped."""
    cutoff = time.time() - older_than_s
    removed = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if not (entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX)):
                continue
            try:
                old = entry.stat(follow_symlinks=False).st_mtime < cutoff
                if old and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:
                continue
    return removed
