"""A FAKE kohya install for the preflight: sd-scripts' layout and a python that answers its probe.

`fake_python` writes a `python` that ignores `-c PROBE` and prints what kohya.preflight's probe
would (`answer`), so the preflight can be judged without torch or accelerate. The FAKE python that
also stands in for `accelerate launch` is tests/fakes/fake_kohya_python.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def sd_scripts(tmp: Path) -> Path:
    script = tmp / "sd-scripts" / "train_network.py"
    (script.parent / "library").mkdir(parents=True)
    script.write_text("# FAKE train_network.py\n")
    return script


def fake_python(tmp: Path, answer: dict[str, object] | None, *, exit_code: int = 0, sleep: float = 0) -> Path:
    """A FAKE python that ignores `-c PROBE` and answers as the probe would."""
    path = tmp / "bin" / "python"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = "" if answer is None else "PLASMA_PROBE " + json.dumps(answer)
    path.write_text(
        f"#!{sys.executable}\n"
        "import sys, time\n"
        f"time.sleep({sleep})\n"
        "print('torch: some warning on stdout')\n"
        f"print({line!r})\n"
        "print('probe went wrong', file=sys.stderr)\n"
        f"sys.exit({exit_code})\n"
    )
    path.chmod(0o755)
    return path


def answer(device: str, accelerate: str = "1.10.1") -> dict[str, object]:
    """What the probe reports from a kohya venv whose torch sees `device`."""
    return {
        "python": "3.11.9",
        "torch": "2.6.0",
        "torchvision": "0.21.0",
        "device": device,
        "accelerate": accelerate,
        "installed": {"torchvision": True, "bitsandbytes": False, "xformers": False, "triton": False},
    }
