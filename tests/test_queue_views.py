"""A chapter-sized queue costs what a small one does (issue 10, item 8): what the views ask SQLite.

The speed itself is measured by scripts/bench_queue.py (`make bench-queue`), never in a test;
here: a queued job's place costs no more with a long queue (one indexed read of the queued seqs
per write, a bisection per view), a list of any length asks SQLite twice, a view never carries
the graph, and the reads a client polls go to the read-only connection without a thread (falling
back to one when SQLite is busy).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from plasmad.core.states import JobStatus
from plasmad.core.store import JobStore
from tests.support.app import Api, OpenApi


@contextmanager
def statements(store: JobStore) -> Iterator[dict[str, list[str]]]:
    """The SQL each of the store's two connections runs meanwhile."""
    seen: dict[str, list[str]] = {"writer": [], "reader": []}
    connections = {"writer": store._db, "reader": store._reader}
    for name, db in connections.items():
        assert db is not None
        db.set_trace_callback(seen[name].append)
    try:
        yield seen
    finally:
        for db in connections.values():
            assert db is not None
            db.set_trace_callback(None)


@pytest.fixture
async def queued(open_api: OpenApi) -> tuple[Api, list[str]]:
    api = await open_api(start_worker=False)  # nothing runs: every job stays queued
    return api, [await api.submit(seed=i) for i in range(12)]


async def test_a_queued_jobs_place_costs_the_same_however_long_the_queue(
    queued: tuple[Api, list[str]],
) -> None:
    api, ids = queued
    store = api.stack.store
    with statements(store) as sql:
        job = await api.job(ids[-1])
        again = await api.job(ids[-2])
    assert job["waitingFor"] == "the worker; 11 jobs ahead"
    assert again["waitingFor"] == "the worker; 10 jobs ahead"
    assert sql["writer"] == []  # no thread hop, no lock shared with the worker
    # Nothing was written since the queued seqs were last read (by the last submit's own view):
    # a job's place is a bisection of them; SQLite is asked for the row and its data_version.
    assert [q.split()[0] for q in sql["reader"]] == ["SELECT", "PRAGMA", "SELECT", "PRAGMA"], sql
    assert (await api.job(ids[0]))["waitingFor"] == "the worker"
    assert (await api.job(ids[1]))["waitingFor"] == "the worker; 1 job ahead"

    assert store._reader is not None
    plan = store._reader.execute(
        "EXPLAIN QUERY PLAN SELECT seq FROM jobs WHERE status = ? ORDER BY seq", ("queued",)
    ).fetchall()
    assert "USING COVERING INDEX jobs_status" in " ".join(str(row["detail"]) for row in plan)

    await api.post(f"/jobs/{ids[3]}/cancel")  # a write: the places are read again
    with statements(store) as sql:
        assert (await api.job(ids[-1]))["waitingFor"] == "the worker; 10 jobs ahead"
    assert any(q.startswith("SELECT seq FROM jobs WHERE status") for q in sql["reader"]), sql
    await api.post(f"/jobs/{ids[3]}/retry")
    assert (await api.job(ids[-1]))["waitingFor"] == "the worker; 11 jobs ahead"


async def test_a_list_asks_sqlite_twice_however_long_and_agrees_with_each_job(
    queued: tuple[Api, list[str]],
) -> None:
    api, ids = queued
    with statements(api.stack.store) as sql:
        resp = await api.client.get("/jobs", params={"status": "queued", "limit": "1000"})
        listed = await resp.json()
    assert resp.status == 200 and resp.content_type == "application/json"
    assert [j["id"] for j in listed] == ids[::-1]
    assert len(sql["writer"]) == 2 and sql["reader"] == []  # the rows, the queued seqs
    for view in listed[::5]:
        single = await api.job(view["id"])
        assert view == single  # the same view, ahead count included
        assert "graph" not in (view["result"] or {})
    assert (await (await api.client.get("/jobs", params={"limit": "0"})).json())["error"]["field"] == "limit"
    assert await (await api.client.get("/jobs", params={"status": "failed"})).json() == []


async def test_views_leave_the_graph_in_sqlite(queued: tuple[Api, list[str]]) -> None:
    api, ids = queued
    store = api.stack.store
    full, light = await store.get(ids[0]), await store.get_for_view(ids[0])
    assert full is not None and light is not None
    assert "graph" in (full.result or {}) and "graph" not in (light.result or {})
    assert {k: v for k, v in (full.result or {}).items() if k not in ("graph", "logExtra")} == light.result
    assert (await (await api.client.get(f"/jobs/{ids[0]}/workflow")).json()) == (full.result or {})["graph"]


async def test_a_busy_reader_falls_back_to_the_thread(
    queued: tuple[Api, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, ids = queued
    store = api.stack.store

    class Busy:
        def execute(self, *args: Any) -> Any:
            raise sqlite3.OperationalError("database is locked")

        def close(self) -> None:
            pass

    real = store._reader
    monkeypatch.setattr(store, "_reader", Busy())
    job = await api.job(ids[2])
    assert job["status"] == JobStatus.QUEUED and job["waitingFor"] == "the worker; 2 jobs ahead"
    monkeypatch.setattr(store, "_reader", real)
