"""Storage faults made real: a tiny tmpfs that fills up (ENOSPC), remounted read-only (EROFS), a
folder a non-root user may not write (EACCES). We are root in CI and on the dev machines; where
mounting is refused the tests that need it are skipped, saying why."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

PAGE = 4096  #: tmpfs counts file data in pages


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax: 64k, 4m) mounted at `path` for the block."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        # Lazy: a file the daemon still has open must not keep the mount (and the test) alive.
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def remount(path: Path, mode: str) -> None:
    """`ro` or `rw` for a tmpfs mounted by `tmpfs`."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)


def fill(folder: Path, leave_pages: int = 0) -> Path:
    """Fill the filesystem of `folder` to the last page, then give `leave_pages` pages back; the
    filler file (remove it to make room)."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            try:
                os.write(fd, b"\0" * (64 * PAGE))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        pages = -(-os.fstat(fd).st_size // PAGE)
        os.ftruncate(fd, max(pages - leave_pages, 0) * PAGE)
        os.fsync(fd)
    finally:
        os.close(fd)
    return filler


def free_bytes(folder: Path) -> int:
    info = os.statvfs(folder)
    return info.f_bavail * info.f_frsize
