"""Benchmark (not a test): does the first hash of a big checkpoint hold up the jobs already queued?

A page's fingerprints need the SHA-256 of its checkpoint; the first hash of a 2 GB file takes
seconds. plasmad starts it when the job is queued, off the event loop, and waits for it only when
that job publishes its image. This measures, on the tiny demo model, a queued job's start (from the
end of the job before it to its own start, both stamped by plasmad) and its render, alone and while
a job submitted after it makes plasmad hash a fresh 2 GiB file, alternating the two so both see the
same machine load; then the ratios. Also the hash itself: first time, and from the cache.

    .venv/bin/python scripts/bench_fingerprints.py [--trials 5] [--gib 2]

It starts its own plasmad with a managed demo ComfyUI (scripts/setup-comfyui.sh first). The big
file is sparse (a real SD 1.5 header, then zeros): it takes no disk space, but is read in full.
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
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
DEMO = Path(os.environ.get("PLASMA_DEMO_DIR", REPO / ".demo"))
CHECKPOINT = "plasma-demo-sd15.safetensors"
BODY = {"prompt": "spyke_plasma_v1, standing", "steps": 2, "resolution": {"width": 64, "height": 64}}


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def submit(http: aiohttp.ClientSession, base: str, body: dict[str, Any]) -> str:
    async with http.post(f"{base}/jobs", json=body) as resp:
        job = await resp.json()
        assert resp.status == 202, job
        return str(job["id"])


async def ended(http: aiohttp.ClientSession, base: str, job_id: str) -> dict[str, Any]:
    while True:
        async with http.get(f"{base}/jobs/{job_id}", params={"wait": "60"}) as resp:
            job: dict[str, Any] = await resp.json()
        if job["status"] not in ("queued", "running"):
            return job


def big_checkpoint(folder: Path, size: int) -> Path:
    """A fresh name each time (a first hash): the demo checkpoint's header, then a sparse tail."""
    with (folder / CHECKPOINT).open("rb") as f:
        head = f.read(8)
        head += f.read(int.from_bytes(head, "little"))
    path = folder / f"plasma-bench-big-{uuid.uuid4().hex[:8]}.safetensors"
    path.write_bytes(head)
    os.truncate(path, size)
    return path


async def hashed(log: Path, path: Path, timeout: float = 600) -> float:
    """Wait for plasmad's log line saying it hashed `path`; the seconds it says it took."""
    deadline = time.monotonic() + timeout
    needle = f"hashed {await asyncio.to_thread(path.resolve)} "
    while time.monotonic() < deadline:
        for line in (await asyncio.to_thread(log.read_text)).splitlines():
            if needle in line:
                return float(line.split(" in ")[-1].split(" s")[0])
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{path} was not hashed")


async def trial(
    http: aiohttp.ClientSession, base: str, seed: int, big: Path | None
) -> tuple[float, float, str | None]:
    """One queued job behind another: the gap between the two (ms) and its render (s)."""
    before = await submit(http, base, {**BODY, "seed": seed})
    queued = await submit(http, base, {**BODY, "seed": seed + 1})
    other = await submit(http, base, {**BODY, "seed": seed + 2, "checkpoint": big.name}) if big else None
    first, job = await ended(http, base, before), await ended(http, base, queued)
    assert job["status"] == "succeeded", job
    if other is not None:
        async with http.post(f"{base}/jobs/{other}/cancel", json={}) as resp:
            assert resp.status == 200, await resp.text()
    gap = (stamp(job["startedAt"]) - stamp(first["finishedAt"])) * 1000
    return gap, stamp(job["finishedAt"]) - stamp(job["startedAt"]), other


async def bench(args: argparse.Namespace, base: str, log: Path, models: Path) -> None:
    size = int(args.gib * 1024**3)
    alone: list[tuple[float, float]] = []
    loaded: list[tuple[float, float]] = []
    hash_s: list[float] = []
    async with aiohttp.ClientSession() as http:
        await ended(http, base, await submit(http, base, {**BODY, "seed": 10**6}))  # warm up
        for i in range(args.trials):
            gap, render, _ = await trial(http, base, 10 * i, None)
            alone.append((gap, render))
            big = await asyncio.to_thread(big_checkpoint, models, size)
            try:
                gap, render, _ = await trial(http, base, 10 * i + 5, big)
                loaded.append((gap, render))
                hash_s.append(await hashed(log, big))  # before the next trial: no overlap
            finally:
                big.unlink()
    print(f"trials: {args.trials}; a job queued behind another, 64x64, 2 steps (tiny demo model)")
    print(f"first hash of a {args.gib:g} GiB file: median {statistics.median(hash_s):.1f} s "
          f"({size / statistics.median(hash_s) / 1e6:.0f} MB/s)")  # fmt: skip
    for label, index, unit in (("start after the job before it", 0, "ms"), ("render", 1, "s")):
        a = statistics.median(x[index] for x in alone)
        b = statistics.median(x[index] for x in loaded)
        print(f"{label:>30}: alone {a:8.2f} {unit}  while hashing {b:8.2f} {unit}  ratio {b / a:.2f}")


def start_daemon(root: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    (root / "none.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLASMA_", "COMFYUI_"))}
    env.update(
        PLASMA_STATE_DIR=str(root / "state"), PLASMA_SOCKET=str(root / "s"), PLASMA_HTTP_PORT="0",
        PLASMA_CONFIG=str(root / "none.toml"), PLASMA_UNET_DTYPE="fp32", PLASMA_CHECKPOINT=CHECKPOINT,
        COMFYUI_MANAGED="1", COMFYUI_DIR=str(DEMO / "ComfyUI"), COMFYUI_ARGS="--cpu",
        COMFYUI_PYTHON=str(DEMO / "comfy-venv" / "bin" / "python"), COMFYUI_URL=f"http://127.0.0.1:{port}",
    )  # fmt: skip
    with (root / "plasmad.out").open("wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "plasmad.daemon"], env=env, stdout=out, stderr=out)
    runtime = root / "state" / "runtime.json"
    deadline = time.monotonic() + 240
    while not runtime.exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"plasmad did not start:\n{(root / 'plasmad.out').read_text()}")
        time.sleep(0.1)
    return daemon, f"http://127.0.0.1:{json.loads(runtime.read_text())['httpPort']}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--gib", type=float, default=2.0, help="size of the file hashed, GiB")
    parser.add_argument("--port", type=int, default=8186, help="port of the managed demo ComfyUI")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plasma-bench-") as tmp:
        root = Path(tmp)
        daemon, base = start_daemon(root, args.port)
        try:
            models = DEMO / "ComfyUI" / "models" / "checkpoints"
            asyncio.run(bench(args, base, root / "state" / "logs" / "plasmad.log", models))
        finally:
            daemon.terminate()
            daemon.wait(60)


if __name__ == "__main__":
    main()
