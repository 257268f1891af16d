"""A FAKE ComfyUI *process*, for plasmad's managed mode: what a real ComfyUI will not do on demand.

Run as a ComfyUI folder's `main.py` (the test writes a two-line main.py that calls `main()`), it
takes ComfyUI's command line, serves the scripted FakeComfyUI (tests/fakes/fake_comfyui.py) on
`--port`, and records what happened to it. Behaviour, from the environment:

  FAKE_COMFY_CONTROL       a folder: `started` gets "pid argv-json" per start, `signals` gets
                           "pid SIGNAME" per signal received; files put there steer it:
                           `die` (contents: an exit code) makes it exit at once, and is consumed,
                           `scenario` sets FakeComfyUI.scenario (normal, hang, ...)
  FAKE_COMFY_START_DELAY   seconds to wait before listening (ComfyUI loads for a while)
  FAKE_COMFY_DIE_AFTER     seconds after listening to exit with code 3, in every incarnation
  FAKE_COMFY_IGNORE_TERM   1: record SIGTERM and carry on (SIGKILL is the only way out)
  FAKE_COMFY_GRANDCHILD    1: start a sleeping child of its own (its pid in `grandchild`), which
                           only a signal to the whole process group ends
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from aiohttp import web

from tests.fakes.fake_comfyui import FakeComfyUI


def _port(argv: list[str]) -> int:
    return int(argv[argv.index("--port") + 1]) if "--port" in argv else 8188


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


async def serve(argv: list[str]) -> int:
    control = Path(os.environ["FAKE_COMFY_CONTROL"])
    control.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (a test double: blocking is fine)
    pid = os.getpid()
    _append(control / "started", f"{pid} {json.dumps(argv)}")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    ignore_term = os.environ.get("FAKE_COMFY_IGNORE_TERM") == "1"

    def on_signal(sig: signal.Signals) -> None:
        _append(control / "signals", f"{pid} {sig.name}")
        if not (sig == signal.SIGTERM and ignore_term):
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    if os.environ.get("FAKE_COMFY_GRANDCHILD") == "1":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # noqa: ASYNC220
        (control / "grandchild").write_text(str(child.pid))

    await asyncio.sleep(float(os.environ.get("FAKE_COMFY_START_DELAY", "0")))
    peer = FakeComfyUI()
    peer.argv = ["main.py", *argv]
    runner = web.AppRunner(peer.app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", _port(argv)).start()
    die_after = os.environ.get("FAKE_COMFY_DIE_AFTER")
    deadline = loop.time() + float(die_after) if die_after else None
    while not stop.is_set():
        die = control / "die"
        if die.exists():
            code = int(die.read_text().strip() or "1")
            die.unlink()
            os._exit(code)  # a crash: no cleanup, sockets dropped by the kernel
        if deadline is not None and loop.time() > deadline:
            os._exit(3)
        scenario = control / "scenario"
        if scenario.exists():
            peer.scenario = scenario.read_text().strip()
        await asyncio.sleep(0.05)
    for event in peer._hang.values():
        event.set()
    await runner.cleanup()
    return 0


def main() -> None:
    sys.exit(asyncio.run(serve(sys.argv[1:])))
