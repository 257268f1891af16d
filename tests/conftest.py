"""Shared fixtures: a real ComfyUI server, a real plasmad process, and their settings.

The ComfyUI server is the demo one that `scripts/setup-comfyui.sh` installs under `.demo/`; it is
started once per test session on a free port. Tests that need it are marked `comfyui`; they are
skipped when `.demo/` is missing, except under CI (CI=true), where a missing server is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO = Path(os.environ.get("PLASMA_DEMO_DIR", REPO / ".demo"))
COMFY_DIR = DEMO / "ComfyUI"
COMFY_PYTHON = DEMO / "comfy-venv" / "bin" / "python"
DEMO_CHECKPOINT = "plasma-demo-sd15.safetensors"
DEMO_LORA = "spyke_plasma_demo.safetensors"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class ComfyServer:
    url: str
    dir: Path
    output_dir: Path
    log: Path


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    if not (COMFY_PYTHON.exists() and (COMFY_DIR / "models" / "checkpoints" / DEMO_CHECKPOINT).exists()):
        message = f"the demo ComfyUI is not set up in {DEMO} (run scripts/setup-comfyui.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    out = tmp_path_factory.mktemp("comfy-output")
    log = out.parent / "comfyui.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                str(COMFY_PYTHON),
                "main.py",
                "--cpu",
                "--listen",
                "127.0.0.1",
                "--port",
                str(port),
                "--force-fp16",
                "--fp32-vae",
                "--output-directory",
                str(out),
                "--disable-auto-launch",
            ],
            cwd=COMFY_DIR,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/system_stats", 120, proc)
        yield ComfyServer(url=f"http://127.0.0.1:{port}", dir=COMFY_DIR, output_dir=out, log=log)
    finally:
        stop_process(proc)


@dataclass
class DaemonEnv:
    """Settings for one plasmad, in a fresh state dir and pipeline dir."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return Path(self.env["PLASMA_STATE_DIR"])

    @property
    def pipeline_dir(self) -> Path:
        return Path(self.env["PLASMA_PIPELINE_DIR"])

    @property
    def socket(self) -> Path:
        return Path(self.env["PLASMA_SOCKET"])


@pytest.fixture
def daemon_env(tmp_path: Path) -> Iterator[DaemonEnv]:
    # A short socket path: AF_UNIX paths are capped at ~104 bytes, and pytest's tmp paths are long.
    run_dir = Path(tempfile.mkdtemp(prefix="pl-", dir="/tmp"))
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    env = {
        "PLASMA_STATE_DIR": str(tmp_path / "state"),
        "PLASMA_PIPELINE_DIR": str(pipeline),
        "PLASMA_SOCKET": str(run_dir / "s"),
        "PLASMA_HTTP_PORT": "0",
        "PLASMA_CHECKPOINT": DEMO_CHECKPOINT,
        # fp16 on a CPU is ~100x slower than fp32; the fp16 default is covered by one test.
        "PLASMA_UNET_DTYPE": "fp32",
        "PLASMA_CONFIG": str(tmp_path / "none.toml"),
        "PLASMA_HISTORY_POLL": "0.2",
        "PLASMA_SHUTDOWN_GRACE": "5",
    }
    (tmp_path / "none.toml").write_text("")
    yield DaemonEnv(root=tmp_path, env=env)
    shutil.rmtree(run_dir, ignore_errors=True)


class DaemonProcess:
    """A real plasmad process (python -m plasmad.daemon) with its own state dir."""

    def __init__(self, denv: DaemonEnv, startup_timeout: float = 30) -> None:
        self.denv = denv
        self.log = denv.root / f"plasmad-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PLASMA_", "COMFYUI_", "KOHYA_"))}
        env.update(denv.env)
        with self.log.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "plasmad.daemon"], env=env, stdout=log_file, stderr=subprocess.STDOUT
            )
        runtime = denv.state_dir / "runtime.json"
        deadline = time.monotonic() + startup_timeout  # a managed ComfyUI starts first
        # After a kill -9 the old runtime file is still there: wait for the one naming this pid.
        while (info := _read_json(runtime)).get("pid") != self.proc.pid:
            if self.proc.poll() is not None:
                raise RuntimeError(f"plasmad exited {self.proc.returncode}: {self.log.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(self.log.read_text())
            time.sleep(0.05)
        self.port = int(info["httpPort"])
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        stop_process(self.proc, 30)
        return self.proc.returncode

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        hdrs.update(headers or {})
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def wait_job(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, job = self.http("GET", f"/jobs/{job_id}")
            if job["status"] in ("succeeded", "failed", "cancelled", "interrupted"):
                return dict(job)
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} did not finish: {job}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


@pytest.fixture
def start_daemon(daemon_env: DaemonEnv) -> Iterator[Any]:
    started: list[DaemonProcess] = []

    def start(**extra_env: str) -> DaemonProcess:
        daemon_env.env.update(extra_env)
        d = DaemonProcess(daemon_env)
        started.append(d)
        return d

    yield start
    for d in started:
        stop_process(d.proc)
