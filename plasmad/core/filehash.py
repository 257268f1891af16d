"""SHA-256 of model and image files, cached in the state dir by (path, size, mtime, inode).

A page's fingerprints (plasmad.generation.fingerprints) name the exact checkpoint, LoRA,
ControlNet model and images that made it. Hashing a 2 GB checkpoint takes seconds (about 4 s on
a loaded 2-core CI box, less on an M1's SSD), so:

- A file is hashed once per version: the cache row is keyed by its path and its size, mtime and
  inode. A file rewritten in place changes its mtime, one moved over the old name its inode.
- Never on the event loop: stats and cache lookups run in worker threads; a big file is hashed on
  one thread of its own (big files are read one at a time, and the default pool, which every
  SQLite call and file write of the daemon uses, is never tied up by a 2 GB read), a small one
  (a pose image) in the default pool at once, so it never waits behind a checkpoint.
- `prefetch` starts hashing when a job is queued; whoever needs the result later (the worker, when
  it publishes the image) awaits the same task. A file asked for twice is hashed once.

The same database remembers the version of each model file ComfyUI last rendered with
(`changed_since_render`): ComfyUI keeps a loaded LoRA or checkpoint by its name, so a file
replaced under the same name is not reloaded unless its cache is cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from plasmad.core.store import now

log = logging.getLogger(__name__)

#: Files from this size on are hashed on the hasher's own thread (checkpoints, LoRAs, ControlNets).
BIG_FILE_BYTES = 64 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
AUTOV2_CHARS = 10  #: the short hash model sites show ("AutoV2"): the SHA-256's first 10 hex digits

SCHEMA = """
CREATE TABLE IF NOT EXISTS hashes (
    path      TEXT PRIMARY KEY,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    inode     INTEGER NOT NULL,
    sha256    TEXT NOT NULL,
    hashed_at TEXT NOT NULL
);
-- The version of each model file as ComfyUI last rendered with it.
CREATE TABLE IF NOT EXISTS rendered (
    path      TEXT PRIMARY KEY,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    inode     INTEGER NOT NULL
);
"""


class HashingStopped(Exception):
    """The hasher was closed (the daemon is stopping) while a file was being read."""


class FileChanged(Exception):
    """The file changed while it was being hashed."""


@dataclass(frozen=True)
class FileVersion:
    """What tells one version of a file from another without reading it."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileVersion:
        st = os.stat(path)  # follows symlinks: the version of the file that is read
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass(frozen=True)
class FileHash:
    path: Path
    size: int
    sha256: str

    @property
    def autov2(self) -> str:
        return autov2(self.sha256)


def autov2(sha256: str) -> str:
    return sha256[:AUTOV2_CHARS]


def _key(path: Path) -> str:
    return str(path.resolve())


class HashCache:
    """The SQLite table of known hashes (blocking: called from worker threads only).

    A connection per call: calls come from several threads, and each is one short statement."""

    def __init__(self, db_path: Path) -> None:
        self._path = db_path
        self._ready = False
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if not self._ready:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.closing(sqlite3.connect(self._path, timeout=30)) as db:
                    db.executescript(SCHEMA)
                self._ready = True
        with contextlib.closing(sqlite3.connect(self._path, timeout=30)) as db, db:
            yield db

    def get(self, path: Path, version: FileVersion) -> str | None:
        with self._db() as db:
            row = db.execute(
                "SELECT sha256 FROM hashes WHERE path = ? AND size = ? AND mtime_ns = ? AND inode = ?",
                (_key(path), version.size, version.mtime_ns, version.inode),
            ).fetchone()
        return str(row[0]) if row else None

    def put(self, path: Path, version: FileVersion, sha256: str) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?)",
                (_key(path), version.size, version.mtime_ns, version.inode, sha256, now()),
            )

    def swap_rendered(self, versions: dict[Path, FileVersion]) -> list[Path]:
        """Record `versions` as the ones ComfyUI renders with now; the paths whose last recorded
        version differs (a file replaced since ComfyUI last used it)."""
        changed: list[Path] = []
        with self._db() as db:
            for path, v in versions.items():
                key = _key(path)
                row = db.execute(
                    "SELECT size, mtime_ns, inode FROM rendered WHERE path = ?", (key,)
                ).fetchone()
                if row is not None and tuple(row) != (v.size, v.mtime_ns, v.inode):
                    changed.append(path)
                db.execute(
                    "INSERT OR REPLACE INTO rendered VALUES (?, ?, ?, ?)", (key, v.size, v.mtime_ns, v.inode)
                )
        return changed


class FileHasher:
    """SHA-256 of files, cached, computed off the event loop; see the module's docstring."""

    def __init__(self, db_path: Path) -> None:
        self.cache = HashCache(db_path)
        self._big = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plasma-hash")
        self._tasks: dict[Path, asyncio.Task[FileHash]] = {}
        self._stop = threading.Event()

    def prefetch(self, paths: Iterable[Path]) -> None:
        """Start hashing `paths` in the background (call from the event loop; returns at once)."""
        for path in paths:
            self._task(path)

    async def sha256(self, path: Path) -> FileHash:
        """The file's hash: from the cache, from a hash already under way, or computed now.

        Raises OSError if the file cannot be read, HashingStopped once the hasher is closed."""
        # shield: a caller cancelled while waiting does not cancel the hash others may await.
        return await asyncio.shield(self._task(path))

    def _task(self, path: Path) -> asyncio.Task[FileHash]:
        task = self._tasks.get(path)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._hash(path), name=f"hash {path.name}")
            self._tasks[path] = task
            task.add_done_callback(lambda t: self._forget(path, t))
        return task

    def _forget(self, path: Path, task: asyncio.Task[FileHash]) -> None:
        if self._tasks.get(path) is task:
            del self._tasks[path]
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Read here so a prefetch nobody awaited does not warn; whoever awaits sees it too.
            log.debug("hashing %s failed: %s", path, exc)

    async def _hash(self, path: Path) -> FileHash:
        for _ in range(3):  # a file rewritten while it is read is read again
            version = await asyncio.to_thread(FileVersion.of, path)
            cached = await asyncio.to_thread(self.cache.get, path, version)
            if cached is not None:
                return FileHash(path, version.size, cached)
            pool = self._big if version.size >= BIG_FILE_BYTES else None
            started = asyncio.get_running_loop().time()
            try:
                digest = await asyncio.get_running_loop().run_in_executor(pool, self._digest, path, version)
            except FileChanged:
                continue
            await asyncio.to_thread(self.cache.put, path, version, digest)
            seconds = asyncio.get_running_loop().time() - started
            log.info("hashed %s (%d bytes) in %.1f s: %s", path, version.size, seconds, autov2(digest))
            return FileHash(path, version.size, digest)
        raise FileChanged(f"{path} kept changing while it was hashed")

    def _digest(self, path: Path, version: FileVersion) -> str:
        """Read and hash the file (blocking). hashlib releases the GIL on big buffers."""
        h = hashlib.sha256()
        buffer = bytearray(CHUNK_BYTES)
        view = memoryview(buffer)
        with path.open("rb", buffering=0) as f:
            while n := f.readinto(view):
                if self._stop.is_set():
                    raise HashingStopped(f"stopped while hashing {path}")
                h.update(view[:n])
        if FileVersion.of(path) != version:
            raise FileChanged(str(path))
        return h.hexdigest()

    async def changed_since_render(self, paths: Iterable[Path]) -> list[Path]:
        """Record the files' versions as the ones ComfyUI now renders with; those that changed
        since it last rendered with them (a file it no longer has is left out)."""

        def versions() -> dict[Path, FileVersion]:
            found = {}
            for path in paths:
                with contextlib.suppress(OSError):
                    found[path] = FileVersion.of(path)
            return found

        found = await asyncio.to_thread(versions)
        return await asyncio.to_thread(self.cache.swap_rendered, found)

    async def close(self) -> None:
        """Stop: a big file being read is dropped (it is hashed again when next needed)."""
        self._stop.set()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self._big.shutdown, wait=True, cancel_futures=True)
