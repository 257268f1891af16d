"""Fault injection: a chapter run that survives ComfyUI and plasmad being killed at random points.

A real plasmad and a real ComfyUI (the demo model, tiny pages), ten pages queued through
`POST /pages`, then SIGKILL at seeded random moments to ComfyUI (its whole process group; started
again on the same port, as the artist would) or to plasmad (started again on the same state dir,
as launchd would), until every page has ended. Then it counts, from the files alone:

  pages done     jobs that succeeded and whose image is on disk
  pages failed   jobs that ended any other way
  duplicates     a page written twice (a second version of a page queued once) or a job with
                 more than one entry in the generation log
  leftovers      temporary files (`.*.tmp`) and images or workflows without a log entry

The goal is 10 / 0 / 0 / 0. Not a test (its timing is the machine's): run it with
`make fault-injection`, or `.venv/bin/python scripts/fault_injection.py --seed 7 --faults 8`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEMO = Path(os.environ.get("PLASMA_DEMO_DIR", REPO / ".demo"))
COMFY_DIR = DEMO / "ComfyUI"
COMFY_PYTHON = DEMO / "comfy-venv" / "bin" / "python"
CHECKPOINT = "plasma-demo-sd15.safetensors"
FINISHED = ("succeeded", "failed", "cancelled", "interrupted")


def say(start: float, message: str) -> None:
    print(f"[{time.monotonic() - start:6.1f} s] {message}", flush=True)


def http(url: str, method: str = "GET", body: Any = None, timeout: float = 10) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@dataclass
class Run:
    """The two processes under test, and how to start each again."""

    root: Path
    port: int
    comfy: subprocess.Popen[bytes] | None = None
    daemon: subprocess.Popen[bytes] | None = None
    daemon_url: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def comfy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_comfyui(self) -> None:
        with (self.root / "comfyui.log").open("ab") as log:
            self.comfy = subprocess.Popen(
                [
                    str(COMFY_PYTHON), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                    "--force-fp16", "--fp32-vae", "--output-directory", str(self.root / "comfy-output"),
                    "--disable-auto-launch",
                ],
                cwd=COMFY_DIR, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        wait_http(f"{self.comfy_url}/system_stats", 300, self.comfy)

    def start_plasmad(self) -> None:
        runtime = self.root / "state" / "runtime.json"
        with (self.root / "plasmad.log").open("ab") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "plasmad.daemon"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while True:  # after a SIGKILL the old runtime file is still there: wait for ours
            try:
                info = json.loads(runtime.read_text())
            except (OSError, ValueError):
                info = {}
            if info.get("pid") == self.daemon.pid:
                break
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"plasmad did not start; see {self.root / 'plasmad.log'}")
            time.sleep(0.05)
        self.daemon_url = f"http://127.0.0.1:{info['httpPort']}"

    def kill_comfyui(self) -> None:
        if self.comfy is not None and self.comfy.poll() is None:
            os.killpg(self.comfy.pid, signal.SIGKILL)
            self.comfy.wait()

    def kill_plasmad(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait()

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(40)
            except subprocess.TimeoutExpired:
                self.kill_plasmad()
        self.kill_comfyui()


def prepare(root: Path, pages: int, port: int) -> Run:
    pipeline = root / "pipeline"
    for page in range(1, pages + 1):
        prompt = pipeline / "prompts" / "ch-01" / f"p{page:03d}.txt"
        prompt.parent.mkdir(parents=True, exist_ok=True)
        prompt.write_text(f"spyke_plasma_v1, page {page}, rooftop\nnegative: blurry\n")
    (root / "none.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLASMA_", "COMFYUI_", "KOHYA_"))}
    env.update(
        PYTHONPATH=str(REPO),
        PLASMA_STATE_DIR=str(root / "state"),
        PLASMA_PIPELINE_DIR=str(pipeline),
        PLASMA_SOCKET=str(root / "s"),
        PLASMA_HTTP_PORT="0",
        PLASMA_CONFIG=str(root / "none.toml"),
        PLASMA_CHECKPOINT=CHECKPOINT,
        PLASMA_HISTORY_POLL="0.2",
        PLASMA_SHUTDOWN_GRACE="5",
        COMFYUI_URL=f"http://127.0.0.1:{port}",
        COMFYUI_DIR=str(COMFY_DIR),
    )
    return Run(root=root, port=port, env=env)


def statuses(run: Run, ids: list[str]) -> dict[str, str]:
    """Each job's status (asked of whichever plasmad runs now)."""
    found = {}
    for job_id in ids:
        try:
            _, job = http(f"{run.daemon_url}/jobs/{job_id}", timeout=5)
            found[job_id] = job["status"]
        except OSError:
            found[job_id] = "?"
    return found


def inject(run: Run, ids: list[str], rng: random.Random, faults: int, start: float) -> None:
    """Kill ComfyUI or plasmad `faults` times, each at a random moment of a randomly chosen page's
    run (spread over the chapter), then let the run finish."""
    pages = sorted(rng.sample(range(len(ids)), min(faults, len(ids))))
    pages += sorted(rng.choices(range(len(ids)), k=faults - len(pages)))
    for n, page in enumerate(sorted(pages), 1):
        job_id = ids[page]
        while (state := statuses(run, [job_id])[job_id]) not in ("running", *FINISHED):
            time.sleep(0.2)
        if state in FINISHED:
            time.sleep(rng.uniform(0.0, 1.0))  # it went by: somewhere between two jobs, then
        else:
            time.sleep(rng.uniform(0.0, 2.0))
        what = f"during page {page + 1} ({job_id}, {statuses(run, [job_id])[job_id]})"
        if rng.random() < 0.5:
            say(start, f"fault {n}: SIGKILL ComfyUI (pid {run.comfy.pid if run.comfy else '?'}) {what}")
            run.kill_comfyui()
            time.sleep(rng.uniform(0.0, 3.0))
            run.start_comfyui()
            say(start, "ComfyUI answers again")
        else:
            say(start, f"fault {n}: SIGKILL plasmad (pid {run.daemon.pid if run.daemon else '?'}) {what}")
            run.kill_plasmad()
            time.sleep(rng.uniform(0.0, 2.0))
            run.start_plasmad()
            say(start, f"plasmad is back at {run.daemon_url}")


def wait_all(run: Run, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = {i: http(f"{run.daemon_url}/jobs/{i}")[1] for i in ids}
        if all(j["status"] in FINISHED for j in jobs.values()) or time.monotonic() > deadline:
            return jobs
        time.sleep(1.0)


def count(root: Path, jobs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pages done / failed, duplicates and leftovers, judged from the files."""
    chapter = root / "pipeline" / "output" / "ch-01"
    raw = chapter / "raw"
    log_file = chapter / "generation-log.json"
    entries = json.loads(log_file.read_text()) if log_file.exists() else []
    logged = {e["imageFile"].rsplit("/", 1)[-1] for e in entries}
    images = sorted(p.name for p in raw.glob("*.png")) if raw.exists() else []
    done = [
        j
        for j in jobs.values()
        if j["status"] == "succeeded" and all(Path(o).is_file() for o in j["outputs"])
    ]
    per_job: dict[str, int] = {}
    for e in entries:
        per_job[e["jobId"]] = per_job.get(e["jobId"], 0) + 1
    per_page: dict[str, int] = {}
    for name in images:
        page = name.rsplit("_v", 1)[0]
        per_page[page] = per_page.get(page, 0) + 1
    duplicates = sum(n - 1 for n in per_job.values()) + sum(n - 1 for n in per_page.values())
    temps = [p for p in root.rglob("*.tmp") if "comfy-output" not in p.parts]
    orphans = [n for n in images if n not in logged]
    workflows = [p.name for p in raw.glob("*.workflow.json")] if raw.exists() else []
    lone = [w for w in workflows if w.replace(".workflow.json", ".png") not in images]
    return {
        "done": len(done),
        "failed": len(jobs) - len(done),
        "duplicates": duplicates,
        "leftovers": len(temps) + len(orphans) + len(lone),
        "leftover_files": [str(p) for p in temps] + orphans + lone,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--faults", type=int, default=6, help="kills, ComfyUI or plasmad (seeded)")
    parser.add_argument("--size", type=int, default=192, help="page width and height (pixels)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs, files)")
    args = parser.parse_args()
    if not COMFY_PYTHON.exists():
        print(f"the demo ComfyUI is not set up in {DEMO} (make comfyui)", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="plasma-faults-"))
    run = prepare(root, args.pages, 20000 + rng.randrange(20000))
    start = time.monotonic()
    try:
        run.start_comfyui()
        run.start_plasmad()
        say(start, f"ComfyUI at {run.comfy_url}, plasmad at {run.daemon_url}; queueing {args.pages} pages")
        body = {"resolution": {"width": args.size, "height": args.size}, "steps": args.steps}
        ids = []
        for page in range(1, args.pages + 1):
            status, job = http(f"{run.daemon_url}/pages", "POST", {"chapter": 1, "page": page, **body})
            assert status == 202, job
            ids.append(job["id"])
        inject(run, ids, rng, args.faults, start)
        jobs = wait_all(run, ids, 900)
        ended = all(j["status"] in FINISHED for j in jobs.values())
        say(start, "every page has ended" if ended else "gave up waiting")
        attempts = sum(len((j.get("result") or {}).get("attempts", [])) for j in jobs.values())
    finally:
        run.stop()
    result = count(root, jobs)
    for j in jobs.values():
        if j["status"] != "succeeded":
            print(f"  {j['id']}: {j['status']}: {(j.get('error') or {}).get('message')}")
    for name in result["leftover_files"]:
        print(f"  leftover: {name}")
    print(f"seed {args.seed}, {args.faults} faults, {attempts} attempts ComfyUI did not finish (retried)")
    print(f"pages done:    {result['done']}")
    print(f"pages failed:  {result['failed']}")
    print(f"duplicates:    {result['duplicates']}")
    print(f"leftovers:     {result['leftovers']}")
    print(f"(files and logs in {root})" if args.keep else "")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    figures = (result["done"], result["failed"], result["duplicates"], result["leftovers"])
    return 0 if figures == (args.pages, 0, 0, 0) else 1


if __name__ == "__main__":
    sys.exit(main())
