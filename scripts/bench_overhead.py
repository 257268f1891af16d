"""Benchmark (not a test): what plasmad adds to a job, against the same graph posted straight to ComfyUI.

For N jobs on the tiny demo model it prints the time from submit to the image file on disk,
through plasmad (HTTP POST /jobs, then a long poll GET /jobs/:id?wait=60 that answers when the
job has ended: the file is written by then) and directly (WebSocket, POST /prompt, wait for the
end, /history, /view, write the file), alternating the two so both see the same machine load, and
the difference per job.
Goal: plasmad adds under 50 ms a job.

    .venv/bin/python scripts/bench_overhead.py [--jobs 10] [--size 64] [--steps 2]

It starts its own plasmad with a managed demo ComfyUI (scripts/setup-comfyui.sh first), or
attaches to yours with --comfyui-url URL --comfyui-dir DIR.
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
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent


async def through_plasmad(http: aiohttp.ClientSession, base: str, body: dict[str, Any]) -> tuple[float, str]:
    t0 = time.perf_counter()
    async with http.post(f"{base}/jobs", json=body) as resp:
        job = await resp.json()
        assert resp.status == 202, job
    while job["status"] in ("queued", "running"):
        # A long poll: plasmad answers the moment the job ends. (A busy poll would take CPU from
        # ComfyUI itself on a 2-core machine and slow the very job it times.)
        async with http.get(f"{base}/jobs/{job['id']}", params={"wait": "60"}) as resp:
            job = await resp.json()
    if job["status"] != "succeeded":
        raise RuntimeError(job)
    elapsed = time.perf_counter() - t0
    assert await asyncio.to_thread(Path(job["outputs"][0]).exists)
    return elapsed, job["id"]


async def direct(http: aiohttp.ClientSession, comfy: str, graph: dict[str, Any], out: Path) -> float:
    t0 = time.perf_counter()
    client_id, prompt_id = uuid.uuid4().hex, str(uuid.uuid4())
    async with http.ws_connect(f"ws{comfy[4:]}/ws?clientId={client_id}") as ws:
        async with http.post(
            f"{comfy}/prompt", json={"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        ) as resp:
            assert resp.status == 200, await resp.text()
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            if event["type"] == "execution_success" and event["data"].get("prompt_id") == prompt_id:
                break
    entry: dict[str, Any] = {}
    while not entry:
        async with http.get(f"{comfy}/history/{prompt_id}") as resp:
            entry = (await resp.json()).get(prompt_id, {})
    image = next(i for node in entry["outputs"].values() for i in node.get("images", []))
    params = {"filename": image["filename"], "subfolder": image["subfolder"], "type": "output"}
    async with http.get(f"{comfy}/view", params=params) as resp:
        data = await resp.read()
    await asyncio.to_thread(out.write_bytes, data)
    return time.perf_counter() - t0


async def bench(args: argparse.Namespace, base: str, comfy: str, out_dir: Path) -> None:
    body = {
        "prompt": "spyke_plasma_v1, standing",
        "steps": args.steps,
        "resolution": {"width": args.size, "height": args.size},
    }
    ours: list[float] = []
    theirs: list[float] = []
    async with aiohttp.ClientSession() as http:
        # Warm up both paths (model load, first-request costs).
        _, job_id = await through_plasmad(http, base, {**body, "seed": 10**6})
        async with http.get(f"{base}/jobs/{job_id}/workflow") as resp:
            graph = await resp.json()
        sampler = next(k for k, n in graph.items() if n["class_type"] == "KSampler")
        saver = next(k for k, n in graph.items() if n["class_type"] == "SaveImage")
        graph[saver]["inputs"]["filename_prefix"] = "bench/direct"
        graph[sampler]["inputs"]["seed"] = 10**6 + 1
        await direct(http, comfy, graph, out_dir / "warmup.png")
        for i in range(args.jobs):
            # Distinct seeds: an identical graph would be served from ComfyUI's cache.
            elapsed, _ = await through_plasmad(http, base, {**body, "seed": 2 * i})
            ours.append(elapsed)
            graph[sampler]["inputs"]["seed"] = 2 * i + 1
            theirs.append(await direct(http, comfy, graph, out_dir / f"direct-{i}.png"))
    mean_ours, mean_theirs = statistics.mean(ours), statistics.mean(theirs)
    diffs = [a - b for a, b in zip(ours, theirs, strict=True)]
    print(f"jobs: {args.jobs} at {args.size}x{args.size}, {args.steps} steps (tiny demo model)")
    for label, values in (("through plasmad", ours), ("straight to ComfyUI", theirs)):
        mean, median = statistics.mean(values) * 1000, statistics.median(values) * 1000
        print(f"{label:>20}: mean {mean:8.1f} ms  median {median:8.1f} ms")
    print(f"ratio: {mean_ours / mean_theirs:.3f}")
    overhead = statistics.median(diffs) * 1000
    print(
        f"plasmad adds (median of per-job differences): {overhead:.1f} ms a job "
        f"-> {'PASS' if overhead < 50 else 'FAIL'} against the 50 ms goal"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--comfyui-url")
    parser.add_argument("--comfyui-dir")
    parser.add_argument("--port", type=int, default=8187, help="port of the managed demo ComfyUI")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plasma-bench-") as tmp:
        root = Path(tmp)
        (root / "none.toml").write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PLASMA_", "COMFYUI_"))}
        env.update(
            PLASMA_STATE_DIR=str(root / "state"),
            PLASMA_SOCKET=str(root / "s"),
            PLASMA_HTTP_PORT="0",
            PLASMA_CONFIG=str(root / "none.toml"),
            PLASMA_CHECKPOINT=os.environ.get("PLASMA_CHECKPOINT", "plasma-demo-sd15.safetensors"),
        )
        if args.comfyui_url:
            env.update(COMFYUI_URL=args.comfyui_url, COMFYUI_DIR=args.comfyui_dir or "")
        else:
            demo = Path(os.environ.get("PLASMA_DEMO_DIR", REPO / ".demo"))
            env.update(
                COMFYUI_MANAGED="1",
                COMFYUI_DIR=str(demo / "ComfyUI"),
                COMFYUI_ARGS="--cpu",
                COMFYUI_PYTHON=str(demo / "comfy-venv" / "bin" / "python"),
                COMFYUI_URL=f"http://127.0.0.1:{args.port}",
            )
        with (root / "plasmad.log").open("wb") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "plasmad.daemon"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            runtime = root / "state" / "runtime.json"
            deadline = time.monotonic() + 240
            while not runtime.exists():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"plasmad did not start:\n{(root / 'plasmad.log').read_text()}")
                time.sleep(0.1)
            port = json.loads(runtime.read_text())["httpPort"]
            out = root / "direct"
            out.mkdir()
            asyncio.run(bench(args, f"http://127.0.0.1:{port}", env["COMFYUI_URL"], out))
        finally:
            daemon.terminate()
            daemon.wait(60)


if __name__ == "__main__":
    main()
