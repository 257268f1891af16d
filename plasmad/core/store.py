"""The job store: one SQLite file in the state dir, the truth about every job.

A job is written here before the API answers 202, and every state change goes through here, so a
restart (kill -9 included) finds every queued job and every job that was running. sqlite3 blocks,
so each call runs in a worker thread; one connection, serialised by a lock, is plenty for a queue
that runs one job at a time.

Views read differently (issue 10: a chapter-sized queue costs what a small one does). A job's
view never needs its graph, so view reads leave it in SQLite (`json_remove`), and the reads a
client polls (one job by id, an indexed lookup of 10-50 µs; the queued seqs that tell how many
jobs are ahead of it, read once per commit) run on a read-only connection of their own, directly:
in WAL mode a reader never waits for the writer, and the hop to a thread (~110 µs) would cost
more than the query.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from plasmad.core.states import JobKind, JobStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- FIFO order
    id           TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    status       TEXT NOT NULL,
    request      TEXT NOT NULL,   -- JSON, as validated, seed filled in
    prompt_id    TEXT,            -- ComfyUI prompt id of the current attempt, stored before POST /prompt
    step         INTEGER,
    total        INTEGER,
    result       TEXT,            -- JSON
    error        TEXT,            -- JSON: PlasmaError.to_dict()
    attempts     INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
"""
#: Rows decoded in one go on the event loop before it serves others (~0.1 ms; see jobs.ops).
ROWS_PER_TURN = 10
_QUEUED_SEQS = "SELECT seq FROM jobs WHERE status = ? ORDER BY seq"  #: a covering scan of jobs_status
#: What a view reads of a job: every column but the graph (and the log's extras) in `result`.
_VIEW_SELECT = (
    "SELECT seq, id, kind, status, request, prompt_id, step, total,"
    " json_remove(result, '$.graph', '$.logExtra') AS result, error, attempts, created_at,"
    " started_at, finished_at FROM jobs"
)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Job:
    id: str
    kind: JobKind
    status: JobStatus
    request: dict[str, Any]
    created_at: str = field(default_factory=now)
    prompt_id: str | None = None
    step: int | None = None
    total: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    seq: int = 0


_JSON_COLUMNS = ("request", "result", "error")
_COLUMNS = (
    "id",
    "kind",
    "status",
    "request",
    "prompt_id",
    "step",
    "total",
    "result",
    "error",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
)


class JobStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None  #: read-only, used on the event loop only
        self._queued: list[int] | None = None  #: the queued seqs as of `_queued_version`
        self._queued_version: int | None = None

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
        # WAL + NORMAL: a committed job survives a crash or kill -9 of the daemon (the OS has the
        # write); only a power cut can lose the last commits. FULL would fsync every progress tick.
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        self._db = db
        # timeout=0: when SQLite is busy the read fails at once and is asked again through a thread
        # (`_read`); waiting out the busy lock here would hold the event loop for up to 5 s.
        reader = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, check_same_thread=False, timeout=0)
        reader.row_factory = sqlite3.Row
        self._reader = reader

    async def close(self) -> None:
        def _close() -> None:
            with self._lock:
                if self._reader is not None:
                    self._reader.close()
                    self._reader = None
                if self._db is not None:
                    self._db.close()
                    self._db = None

        await asyncio.to_thread(_close)

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            if self._db is None:
                raise RuntimeError("job store is closed")
            return self._db.execute(sql, args).fetchall()

    async def _q(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return await asyncio.to_thread(self._run, sql, args)

    async def add(self, job: Job) -> Job:
        values = [_encode(c, getattr(job, c)) for c in _COLUMNS]
        marks = ", ".join("?" * len(_COLUMNS))
        rows = await self._q(
            f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({marks}) RETURNING seq", *values
        )
        job.seq = int(rows[0]["seq"])
        return job

    async def get(self, job_id: str) -> Job | None:
        rows = await self._q("SELECT * FROM jobs WHERE id = ?", job_id)
        return _decode(rows[0]) if rows else None

    async def update(self, job_id: str, **changes: Any) -> None:
        unknown = set(changes) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job columns: {sorted(unknown)}")
        sets = ", ".join(f"{c} = ?" for c in changes)
        await self._q(
            f"UPDATE jobs SET {sets} WHERE id = ?", *(_encode(c, v) for c, v in changes.items()), job_id
        )

    async def set_status_if(self, job_id: str, expected: JobStatus, **changes: Any) -> bool:
        """Change a job only if it is still in `expected` (a cancel racing the worker loses cleanly)."""
        sets = ", ".join(f"{c} = ?" for c in changes)
        args = (*(_encode(c, v) for c, v in changes.items()), job_id, expected.value)
        rows = await self._q(f"UPDATE jobs SET {sets} WHERE id = ? AND status = ? RETURNING id", *args)
        return bool(rows)

    async def requeue(self, job_id: str, states: frozenset[JobStatus]) -> bool:
        """Put a job that ended in one of `states` back in the queue as it was queued: its id, seq,
        request and state kept; its error, times, progress and attempt count cleared."""
        marks = ", ".join("?" * len(states))
        rows = await self._q(
            "UPDATE jobs SET status = ?, error = NULL, started_at = NULL, finished_at = NULL,"
            f" step = NULL, total = NULL, attempts = 0 WHERE id = ? AND status IN ({marks}) RETURNING id",
            JobStatus.QUEUED.value,
            job_id,
            *(s.value for s in states),
        )
        return bool(rows)

    async def recent(
        self, status: JobStatus | None = None, kind: JobKind | None = None, limit: int = 50
    ) -> list[Job]:
        clause, args = _filter(status, kind)
        rows = await self._q(f"SELECT * FROM jobs {clause} ORDER BY seq DESC LIMIT ?", *args, limit)
        return [_decode(r) for r in rows]

    async def next_queued(self) -> Job | None:
        rows = await self._q(
            "SELECT * FROM jobs WHERE status = ? ORDER BY seq LIMIT 1", JobStatus.QUEUED.value
        )
        return _decode(rows[0]) if rows else None

    async def count(self, status: JobStatus) -> int:
        rows = await self._q("SELECT COUNT(*) AS n FROM jobs WHERE status = ?", status.value)
        return int(rows[0]["n"])

    # --- reads for views (issue 10): no graph, and the polled ones without a thread hop ------------------

    def _read_now(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row] | None:
        """`sql` on the read-only connection, on the caller's thread; None when SQLite is busy (a
        WAL recovery, say), for the caller to ask through a thread instead."""
        if self._reader is None:
            raise RuntimeError("job store is closed")
        try:
            return self._reader.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return None

    async def _read(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        rows = self._read_now(sql, args)
        return rows if rows is not None else await self._q(sql, *args)

    async def get_for_view(self, job_id: str) -> Job | None:
        """A job as its view shows it: `result` without the graph. For views only: never write it
        back. One indexed lookup, read directly on the calling (event loop) thread."""
        rows = await self._read(f"{_VIEW_SELECT} WHERE id = ?", job_id)
        return _decode(rows[0]) if rows else None

    async def queued_ahead(self, seq: int) -> int:
        """How many queued jobs are ahead of the one with `seq`.

        A COUNT over the status index costs in proportion to the queue (70 µs for 1,000 here),
        and every client polls every job: so the queued seqs are read once (one indexed query)
        and kept until the next commit, which SQLite's `data_version` tells (any write by the
        other connection changes it); a job's place is then a bisection."""
        version = self._read_now("PRAGMA data_version", ())
        if version is not None and version[0][0] == self._queued_version and self._queued is not None:
            return bisect.bisect_left(self._queued, seq)
        queued = self._read_now(_QUEUED_SEQS, (JobStatus.QUEUED.value,))
        if version is None or queued is None:  # SQLite busy: count through a thread, keep nothing
            self._queued = None
            rows = await self._q(
                "SELECT COUNT(*) AS n FROM jobs WHERE status = ? AND seq < ?", JobStatus.QUEUED.value, seq
            )
            return int(rows[0]["n"])
        self._queued, self._queued_version = [int(r["seq"]) for r in queued], version[0][0]
        return bisect.bisect_left(self._queued, seq)

    async def recent_for_view(
        self, status: JobStatus | None = None, kind: JobKind | None = None, limit: int = 50
    ) -> tuple[list[Job], list[int]]:
        """`recent` as views show it (no graph), and the seqs of every queued job in order (from
        which each listed job's place in the queue is told without a query per job). The rows
        are read in a thread and decoded here a slice at a time, letting other requests through
        between slices (decoding 500 rows at once would hold the event loop for milliseconds)."""
        clause, args = _filter(status, kind)

        def read() -> tuple[list[sqlite3.Row], list[int]]:
            rows = self._run(f"{_VIEW_SELECT} {clause} ORDER BY seq DESC LIMIT ?", (*args, limit))
            queued = self._run(_QUEUED_SEQS, (JobStatus.QUEUED.value,))
            return rows, [int(r["seq"]) for r in queued]

        rows, queued = await asyncio.to_thread(read)
        jobs: list[Job] = []
        for start in range(0, len(rows), ROWS_PER_TURN):
            if start:
                await asyncio.sleep(0)
            jobs.extend(_decode(r) for r in rows[start : start + ROWS_PER_TURN])
        return jobs, queued

    async def in_states(self, kind: JobKind, states: frozenset[JobStatus]) -> list[Job]:
        marks = ", ".join("?" * len(states))
        rows = await self._q(
            f"SELECT * FROM jobs WHERE kind = ? AND status IN ({marks}) ORDER BY seq",
            kind.value,
            *(s.value for s in states),
        )
        return [_decode(r) for r in rows]


def _encode(column: str, value: Any) -> Any:
    if column in _JSON_COLUMNS:
        return None if value is None else json.dumps(value, sort_keys=True)
    if isinstance(value, (JobKind, JobStatus)):
        return value.value
    return value


def _filter(status: JobStatus | None, kind: JobKind | None) -> tuple[str, list[str]]:
    """The WHERE clause (or none) and its arguments for a listing of jobs."""
    where, args = [], []
    if status is not None:
        where.append("status = ?")
        args.append(status.value)
    if kind is not None:
        where.append("kind = ?")
        args.append(kind.value)
    return (f"WHERE {' AND '.join(where)}" if where else ""), args


def _decode(row: sqlite3.Row) -> Job:
    data = {c: row[c] for c in _COLUMNS}
    for c in _JSON_COLUMNS:
        data[c] = json.loads(data[c]) if data[c] is not None else None
    data["kind"] = JobKind(data["kind"])
    data["status"] = JobStatus(data["status"])
    return Job(seq=int(row["seq"]), **data)
