"""Real processes for the tests: the demo ComfyUI server and plasmad, run as child processes.

The demo ComfyUI is the one `scripts/setup-comfyui.sh` installs under `.demo/` (PLASMA_DEMO_DIR
overrides it); tests/conftest.py starts it once per session (the `comfyui` fixture). `DaemonProcess`
is a real `python -m plasmad.daemon` with its own state dir (`DaemonEnv`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
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
    extra_loras: Path | None = None  #: a loras folder this ComfyUI also reads (test-built LoRAs)
    pid: int | None = None


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

    def wait_for(
        self, path: str, check: Callable[[dict[str, Any]], bool], timeout: float = 30, interval: float = 0.1
    ) -> Any:
        """GET `path` until it answers 200 with a body that passes `check`; that body."""
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.http("GET", path)
            if status == 200 and check(body):
                return body
            assert time.monotonic() < deadline, body
            time.sleep(interval)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}




def remove_from_comfyui(comfyui: ComfyServer, paths: list[Path]) -> None:
    """Remove what a test put in the shared demo ComfyUI (promoted LoRAs, sample copies, staged
    training images), then plasmad's own folders there if they are left empty."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for own in ("plasma-samples", "plasma-train"):
        for root in (comfyui.dir / "models" / "loras", comfyui.dir / "input"):
            try:
                (root / own).rmdir()
            except OSError:
                pass  # another test's files are still there
