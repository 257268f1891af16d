"""FAKE python of kohya's venv, for tests only: lets plasmad drive the FAKE trainer exactly as it
drives the real one, with no test hook in the daemon.

`write_fake_python(folder)` writes an executable `python` (its interpreter is the one running the
tests) that plasmad is given as KOHYA_PYTHON, with KOHYA_SCRIPT = tests/fakes/fake_kohya.py:

- `python -c <probe>` (kohya.preflight) prints the answer a kohya venv on an Apple GPU gives;
- `python -m accelerate.commands.launch [--opt value]... script args...` (a training) drops the
  launcher and its options and becomes `python script args...` (exec: same pid, same process
  group), so the FAKE trainer replays its captured run in place of accelerate + train_network.py.

FAKE_PYTHON_ARGV_LOG, if set, names a file that gets the argv it was called with, as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.support.kohya import answer

REPO = Path(__file__).resolve().parents[2]
FAKE_KOHYA = REPO / "tests" / "fakes" / "fake_kohya.py"

_BODY = r"""
import json, os, sys
ANSWER = json.loads(__ANSWER__)
args = sys.argv[1:]
if os.environ.get("FAKE_PYTHON_ARGV_LOG") and args[:1] != ["-c"]:
    with open(os.environ["FAKE_PYTHON_ARGV_LOG"], "w") as f:
        json.dump(args, f)
if args[:1] == ["-c"]:
    print("PLASMA_PROBE " + json.dumps(ANSWER), flush=True)
    sys.exit(0)
if args[:2] == ["-m", "accelerate.commands.launch"]:
    args = args[2:]
    while args and args[0].startswith("--"):
        args = args[2:]  # the launcher's own options: --num_cpu_threads_per_process 2
os.execv(sys.executable, [sys.executable, *args])
"""


def probe_answer(device: str = "mps", accelerate: str = "1.10.1") -> dict[str, object]:
    """The probe's answer from the artist's kohya venv (PyTorch pinned at 2.5.1, INFRA-03)."""
    return answer(device, accelerate) | {"torch": "2.5.1"}


def write_fake_python(folder: Path, answer: dict[str, object] | None = None) -> Path:
    path = folder / "bin" / "python"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = _BODY.replace("__ANSWER__", repr(json.dumps(answer or probe_answer())))
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path
