"""Faults made real on a real ComfyUI: a test's own demo ComfyUI that it may stop, kill, freeze
(SIGSTOP) and start again on the same port; a ComfyUI folder of its own for managed mode (its own
models/, so a test can add a LoRA without touching the shared demo folder); a LoRA built to miss
the demo checkpoint's keys.

The session's `comfyui` fixture is shared by every test: never fault it, start one of these.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests.support.processes import COMFY_DIR, COMFY_PYTHON, DEMO_CHECKPOINT, DEMO_LORA, free_port, wait_http

T = TypeVar("T")

START_TIMEOUT_S = 180.0  # ComfyUI imports torch: 5-8 s on an idle machine, far more on a busy one


class OwnComfyUI:
    """A real demo ComfyUI run by one test, on a fixed port (a restart is the same server to
    plasmad), in its own process group (SIGSTOP reaches all of it and nothing else)."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output_dir = root / "comfy-output"
        self.log = root / "own-comfyui.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> OwnComfyUI:
        with self.log.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [
                    str(COMFY_PYTHON), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                    "--force-fp16", "--fp32-vae", "--output-directory", str(self.output_dir),
                    "--disable-auto-launch",
                ],
                cwd=COMFY_DIR,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )  # fmt: skip
        self.starts += 1
        wait_http(f"{self.url}/system_stats", START_TIMEOUT_S, self.proc)
        return self

    def _group(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """A crash: SIGKILL, nothing cleaned up, connections dropped by the kernel."""
        self._group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self) -> None:
        """Stopped the ordinary way (Ctrl-C in its terminal)."""
        self._group(signal.SIGTERM)
        if self.proc is not None:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def freeze(self) -> None:
        self._group(signal.SIGSTOP)

    def thaw(self) -> None:
        self._group(signal.SIGCONT)

    def close(self) -> None:
        self.thaw()  # a stopped process takes SIGKILL too, but its group may hold others
        self.kill()


def comfy_copy(root: Path) -> Path:
    """A ComfyUI folder for managed mode with models of its own: main.py is the demo's (Python
    runs it from its real folder), the checkpoint and LoRA are hard links (no 500 MB copy), and
    ComfyUI must be started with `--base-directory` this folder to read its models here."""
    folder = root / "ComfyUI"
    (folder / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (folder / "main.py").symlink_to(COMFY_DIR / "main.py")
    for kind, name in (("checkpoints", DEMO_CHECKPOINT), ("loras", DEMO_LORA)):
        target = folder / "models" / kind / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(COMFY_DIR / "models" / kind / name, target)
        except OSError:  # another filesystem
            shutil.copy2(COMFY_DIR / "models" / kind / name, target)
    return folder


def write_missing_keys_lora(path: Path, rank: int = 4) -> Path:
    """A real SD 1.5 LoRA (kohya's key names, zero weights) whose modules name UNet blocks the tiny
    demo checkpoint lacks (it has two levels, not four): ComfyUI logs "lora key not loaded" for
    each and still reports success."""
    tensors: dict[str, list[int]] = {}
    for block in (7, 8, 10, 11):
        base = f"lora_unet_input_blocks_{block}_1_transformer_blocks_0"
        for proj, width in (("attn1_to_q", 320), ("attn2_to_k", 768), ("attn2_to_v", 768)):
            tensors[f"{base}_{proj}.lora_down.weight"] = [rank, width]
            tensors[f"{base}_{proj}.lora_up.weight"] = [320, rank]
            tensors[f"{base}_{proj}.alpha"] = []
    metadata = {"ss_base_model_version": "sd_v1", "ss_network_dim": str(rank)}
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, shape in tensors.items():
        size = 2 * max(1, _product(shape))  # F16
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(offset))
    return path


def _product(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def wait_until(check: Callable[[], T], what: str, timeout: float = 60.0, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
    return value
