"""Fixtures shared by several test files; the helpers behind them live in tests/support/.

`comfyui` is the demo ComfyUI server that `scripts/setup-comfyui.sh` installs under `.demo/`,
started once per test session on a free port. Tests that need it are marked `comfyui`; they are
skipped when `.demo/` is missing, except under CI (CI=true), where a missing server is a failure.
`daemon_env` and `start_daemon` run real plasmad processes (tests/support/processes.py).

`open_api` and `api` are the real app in-process over the FAKE ComfyUI (tests/support/app.py);
`daemon` is plasmad's socket API in a background thread, for plasmactl (tests/support/cli.py).
A test file may define its own `api` or `daemon` (a real plasmad process, say): it takes precedence.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.support.app import Api, OpenApi, start_api
from tests.support.cli import DaemonThread
from tests.support.processes import (
    COMFY_DIR,
    COMFY_PYTHON,
    DEMO,
    DEMO_CHECKPOINT,
    ComfyServer,
    DaemonEnv,
    DaemonProcess,
    free_port,
    stop_process,
    wait_http,
)

# --- real processes: the demo ComfyUI, plasmad ----------------------------------------------------------


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
    # LoRAs a test builds (one that misses the checkpoint's keys, one with NaN weights) go here,
    # where this ComfyUI finds them, never into the demo's own models folder.
    extra = tmp_path_factory.mktemp("comfy-extra-models")
    (extra / "loras").mkdir()
    paths = f"plasma_tests:\n    base_path: {extra}\n    loras: loras\n"
    (extra / "extra_model_paths.yaml").write_text(paths)
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
                "--extra-model-paths-config",
                str(extra / "extra_model_paths.yaml"),
                "--disable-auto-launch",
            ],
            cwd=COMFY_DIR,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/system_stats", 120, proc)
        yield ComfyServer(
            url=f"http://127.0.0.1:{port}", dir=COMFY_DIR, output_dir=out, log=log,
            extra_loras=extra / "loras", pid=proc.pid,
        )  # fmt: skip
    finally:
        stop_process(proc)



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
        # PLASMA_UNET_DTYPE is left to `auto`: fp32 on this CPU-only ComfyUI (fp16 would be ~100x
        # slower here); an explicit fp16 is covered by one test.
        "PLASMA_CONFIG": str(tmp_path / "none.toml"),
        "PLASMA_HISTORY_POLL": "0.2",
        "PLASMA_SHUTDOWN_GRACE": "5",
    }
    (tmp_path / "none.toml").write_text("")
    yield DaemonEnv(root=tmp_path, env=env)
    shutil.rmtree(run_dir, ignore_errors=True)



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


# --- in-process: the app over the FAKE ComfyUI, the socket API for plasmactl ---------------------------


@pytest.fixture
async def open_api(tmp_path: Path) -> AsyncIterator[OpenApi]:
    """Opens an Api; `start_worker=False` leaves jobs queued, `comfyui_url` overrides the fake's."""
    async with AsyncExitStack() as exits:
        yield functools.partial(start_api, exits, tmp_path)


@pytest.fixture
async def api(open_api: OpenApi) -> Api:
    return await open_api()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonThread]:
    d = DaemonThread(tmp_path).start()
    yield d
    d.stop()
