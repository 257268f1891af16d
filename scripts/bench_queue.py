"""Benchmark (not a test): a chapter-sized queue costs what a small one does (issue 10, item 8).

Against a real plasmad process and its real SQLite file, with up to --jobs generations queued
behind one that never ends (a FAKE ComfyUI that takes the first prompt and hangs: ComfyUI itself
plays no part in what is measured, it only keeps the queue full), it prints, each against a
baseline measured in the same run:

  1. listing N queued jobs (GET /jobs?status=queued&limit=N), N = 50..--jobs: the time per job
     against N = 50's (goal: about 1, i.e. linear in N);
  2. GET /jobs/:id of the last queued job with 1 queued and with --jobs queued (goal: ratio ~1);
  3. GET /jobs/:id at --rate requests/s, alone and while GET /jobs?limit=500 is served over and
     over: p50 / p99 / max (goal: p99 under 5 ms while the lists are served).

    .venv/bin/python scripts/bench_queue.py [--jobs 1000] [--rate 500] [--seconds 5] [--code DIR]

--code runs the plasmad of another checkout (the same measurements, to compare).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fakes.fake_comfyui import FakeComfyUI  # noqa: E402  (the repo on the path first)
from tests.support.modelfiles import CHECKPOINT_SD15, make_models_dir  # noqa: E402

LIST_SIZES = (50, 100, 200, 500, 1000)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


async def timed(http: aiohttp.ClientSession, url: str) -> float:
    t0 = time.perf_counter()
    async with http.get(url) as resp:
        await resp.read()
        assert resp.status == 200, resp.status
    return time.perf_counter() - t0


async def best_of(http: aiohttp.ClientSession, url: str, times: int) -> float:
    """The median of `times` requests (after one not counted: connection, caches)."""
    await timed(http, url)
    return statistics.median([await timed(http, url) for _ in range(times)])


class Queue:
    """Generations queued through the API, behind one the FAKE ComfyUI holds forever."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base, self.ids = http, base, []

    async def fill(self, queued: int) -> None:
        while len(self.ids) < queued + 1:  # + the running one
            body = {"prompt": "spyke_plasma_v1, standing", "seed": len(self.ids), "steps": 20}
            async with self.http.post(f"{self.base}/jobs", json=body) as resp:
                job = await resp.json()
                assert resp.status == 202, job
            self.ids.append(job["id"])


async def list_costs(q: Queue, sizes: list[int]) -> None:
    print("1. listing N queued jobs, N of N queued: GET /jobs?status=queued&limit=N (median of 5)")
    base_per_job = 0.0
    for n in sizes:
        await q.fill(n)
        t = await best_of(q.http, f"{q.base}/jobs?status=queued&limit={n}", 5)
        per_job = t / n
        base_per_job = base_per_job or per_job
        print(f"   N={n:5d}: {ms(t)}  {per_job * 1e6:7.1f} µs a job  ratio to N={sizes[0]}: "
              f"{per_job / base_per_job:5.2f}")  # fmt: skip


async def one_job(q: Queue, queued: int) -> float:
    """GET /jobs/:id of the last of `queued` queued jobs (median of 200)."""
    await q.fill(queued)
    return await best_of(q.http, f"{q.base}/jobs/{q.ids[queued]}", 200)


async def paced_gets(http: aiohttp.ClientSession, url: str, rate: float, seconds: float) -> list[float]:
    """GET `url` at `rate` a second for `seconds` (open loop: a slow answer does not delay the
    next request); the latency of each."""
    loop = asyncio.get_running_loop()
    start, latencies, tasks = loop.time(), [], []

    async def one() -> None:
        latencies.append(await timed(http, url))

    for i in range(int(rate * seconds)):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return latencies


async def latency_under_lists(q: Queue, rate: float, seconds: float) -> bool:
    print(f"3. GET /jobs/:id at {rate:.0f}/s for {seconds:.0f} s, alone and while GET /jobs?limit=500 runs")
    await q.fill(500)
    url = f"{q.base}/jobs/{q.ids[min(500, len(q.ids) - 1)]}"
    alone = await paced_gets(q.http, url, rate, seconds)
    lists, stop = 0, asyncio.Event()

    async def lister() -> None:
        nonlocal lists
        async with aiohttp.ClientSession() as other:  # its own connection, like another client
            while not stop.is_set():
                await timed(other, f"{q.base}/jobs?status=queued&limit=500")
                lists += 1

    task = asyncio.create_task(lister())
    await asyncio.sleep(0.2)  # the first list is under way
    loaded = await paced_gets(q.http, url, rate, seconds)
    stop.set()
    await task
    for label, values in (("alone", alone), (f"with {lists} lists of 500", loaded)):
        q99 = statistics.quantiles(values, n=100)[98]
        print(f"   {label:>22}: p50 {ms(statistics.median(values))}  p99 {ms(q99)}  max {ms(max(values))}")
    p99 = statistics.quantiles(loaded, n=100)[98]
    passed = p99 < 0.005
    verdict = "PASS" if passed else "FAIL"
    print(f"   p99 while listing: {p99 * 1000:.2f} ms -> {verdict} against the 5 ms goal")
    return passed


@contextmanager
def plasmad(root: Path, comfy_url: str, code: Path) -> Iterator[str]:
    (root / "none.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLASMA_", "COMFYUI_"))}
    env.update(
        PYTHONPATH=str(code),
        PLASMA_STATE_DIR=str(root / "state"),
        PLASMA_SOCKET=str(root / "s"),
        PLASMA_HTTP_PORT="0",
        PLASMA_CONFIG=str(root / "none.toml"),
        PLASMA_CHECKPOINT=CHECKPOINT_SD15,
        COMFYUI_URL=comfy_url,
        COMFYUI_DIR=str(root / "ComfyUI"),
    )
    with (root / "plasmad.log").open("wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "plasmad.daemon"], env=env, stdout=log, stderr=log)
    try:
        runtime = root / "state" / "runtime.json"
        deadline = time.monotonic() + 60
        while not runtime.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"plasmad did not start:\n{(root / 'plasmad.log').read_text()}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{json.loads(runtime.read_text())['httpPort']}"
    finally:
        daemon.terminate()
        daemon.wait(60)


async def bench(args: argparse.Namespace, root: Path) -> bool:
    fake = FakeComfyUI()
    fake.scenario = "hang"  # the first job runs for ever; the rest stay queued
    runner = web.AppRunner(fake.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    make_models_dir(root / "ComfyUI")
    try:
        with plasmad(root, f"http://127.0.0.1:{port}", args.code) as base:
            connector = aiohttp.TCPConnector(limit=200)
            async with aiohttp.ClientSession(connector=connector) as http:
                q = Queue(http, base)
                print(f"plasmad from {args.code}; {os.cpu_count()} cores")
                alone = await one_job(q, 1)
                await list_costs(q, [n for n in LIST_SIZES if n <= args.jobs])  # the queue grows
                full = await one_job(q, args.jobs)
                print("2. GET /jobs/:id of the last queued job (median of 200)")
                print(f"   1 queued: {ms(alone)}   {args.jobs} queued: {ms(full)}   "
                      f"ratio {full / alone:.2f} (goal ~1)")  # fmt: skip
                return await latency_under_lists(q, args.rate, args.seconds)
    finally:
        for event in fake._hang.values():
            event.set()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1000, help="most jobs queued (default 1000)")
    parser.add_argument("--rate", type=float, default=500.0, help="GET /jobs/:id a second (default 500)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each paced run lasts")
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout whose plasmad runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plasma-bench-queue-") as tmp:
        passed = asyncio.run(bench(args, Path(tmp)))
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
