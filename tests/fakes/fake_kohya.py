"""FAKE kohya `train_network.py`, for tests only: it replays a real, captured run.

kohya's sd-scripts need torch, a 2 GB checkpoint and minutes to hours; this stands in for them.
It writes the bytes the real program wrote (shared/fixtures/kohya/<case>/stdout.log and
stderr.log) in small chunks split anywhere (mid-line, mid-UTF-8 character), interleaving the two
streams the way the real run did (a checkpoint line after the bar reached its step), creates the
files the real run left in --output_dir (tiny but valid .safetensors), and exits with the real
exit code. It accepts the argv of
`plasmad.training.kohya.command.build_command(..., use_accelerate=False)` and reads only
--output_dir and --output_name from it.

Environment:
  FAKE_KOHYA_CASE         success | no_data | sigkill | bad_checkpoint | cpu_oom (default success)
  FAKE_KOHYA_FIXTURES     the fixture folder (default: <repo>/tests/fixtures/kohya)
  FAKE_KOHYA_DELAY        seconds between pieces of output (default 0.002: a run takes < 1 s)
  FAKE_KOHYA_SLOW         1: also sleep FAKE_KOHYA_STEP_DELAY seconds (default 1) before each
                          training step, so that a test can cancel mid-training
  FAKE_KOHYA_SIGNAL_LOG   a file that gets a line `<role> <pid> <SIGNAME>` per signal received
  FAKE_KOHYA_IGNORE_TERM  1: record SIGTERM/SIGINT and carry on (only SIGKILL stops it)
  FAKE_KOHYA_CHILD        1: first start a child in the same process group, as accelerate's
                          launcher starts the trainer; the child sleeps (60 s at most), records
                          signals like its parent and writes its pid to FAKE_KOHYA_CHILD_PID
  FAKE_KOHYA_SELF_KILL    1 (sigkill case): SIGKILL itself where the trainer died, instead of
                          replaying the launcher's `died with <Signals.SIGKILL: 9>` and exit 1
  FAKE_KOHYA_ARGV_LOG     a file to write {"argv", "cwd", "env"} to, as JSON
  FAKE_KOHYA_CHECKPOINT_FILE  a real LoRA whose bytes every checkpoint gets (default: an empty but
                          valid safetensors), so that a real ComfyUI can sample the checkpoints
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

CASES = ("success", "no_data", "sigkill", "bad_checkpoint", "cpu_oom")
REPO_ROOT = Path(__file__).resolve().parents[2]
# Where the accelerate launcher's own traceback starts: the trainer was dead by then.
LAUNCHER_TRACEBACK = b'Traceback (most recent call last):\n  File "/home/artist/kohya_ss/venv/bin/accelerate"'
STEP_BAR = re.compile(rb"steps:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")
CHECKPOINT_LINE = re.compile(rb"saving checkpoint: \S*?([^/\s]+\.safetensors)")
STEP_FILE = re.compile(rb"-step(\d+)\.safetensors")


def fixtures_dir() -> Path:
    """The captured runs, copied into the repo from shared/fixtures/kohya (byte for byte)."""
    if env := os.environ.get("FAKE_KOHYA_FIXTURES"):
        return Path(env)
    return REPO_ROOT / "tests" / "fixtures" / "kohya"


def record_signals(role: str) -> None:
    log = os.environ.get("FAKE_KOHYA_SIGNAL_LOG")
    ignore = os.environ.get("FAKE_KOHYA_IGNORE_TERM") == "1"

    def handler(signum: int, _frame: object) -> None:
        if log:
            with open(log, "a") as f:
                f.write(f"{role} {os.getpid()} {signal.Signals(signum).name}\n")
        if not ignore:
            # Die of the signal itself, as an unprepared process would.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def run_child() -> None:
    record_signals("child")
    pid_file = Path(os.environ["FAKE_KOHYA_CHILD_PID"])
    tmp = pid_file.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.rename(pid_file)  # the parent waits for the name: handlers are in place by then
    deadline = time.monotonic() + 60  # never outlive a broken test for long
    while time.monotonic() < deadline:
        time.sleep(0.05)


def start_child() -> None:
    pid_file = Path(os.environ["FAKE_KOHYA_CHILD_PID"])
    subprocess.Popen([sys.executable, __file__], env={**os.environ, "FAKE_KOHYA_ROLE": "child"})
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def placeholder_safetensors() -> bytes:
    """A valid .safetensors with no tensors: an 8-byte header length, then the JSON header."""
    header = json.dumps({"__metadata__": {"written_by": "fake_kohya"}}).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header


def pieces(data: bytes, stream: str) -> list[bytes]:
    """Lines, and tqdm redraws split before their '\\r', as the real program wrote them."""
    if stream == "stdout":
        return data.splitlines(True)
    # A traceback is written by whichever process died, right after a bar that has no newline.
    return [p for p in re.split(rb"(?<=\n)|(?=\r)|(?=Traceback \(most recent call last\))", data) if p]


def replay(case_dir: Path, output_dir: Path, output_name: str) -> int:
    stdout = (case_dir / "stdout.log").read_bytes()
    stderr = (case_dir / "stderr.log").read_bytes()
    exit_code = int((case_dir / "exit_code").read_text().strip())
    files = [
        line.strip() for line in (case_dir / "files_written.txt").read_text().splitlines() if line.strip()
    ]
    self_kill = os.environ.get("FAKE_KOHYA_SELF_KILL") == "1"
    if self_kill and LAUNCHER_TRACEBACK in stderr:
        stderr = stderr[: stderr.index(LAUNCHER_TRACEBACK)]

    delay = float(os.environ.get("FAKE_KOHYA_DELAY", "0.002"))
    step_delay = (
        float(os.environ.get("FAKE_KOHYA_STEP_DELAY", "1")) if os.environ.get("FAKE_KOHYA_SLOW") else 0
    )
    rng = random.Random(0)
    output_dir.mkdir(parents=True, exist_ok=True)
    # The capture named its LoRA spyke_plasma_v1 in /home/artist/...: use the names we were given.
    fixture_name = files[0].split("-step")[0].removesuffix(".safetensors") if files else output_name
    files = [name.replace(fixture_name, output_name, 1) for name in files]
    written: set[str] = set()

    checkpoint_file = os.environ.get("FAKE_KOHYA_CHECKPOINT_FILE")
    checkpoint = Path(checkpoint_file).read_bytes() if checkpoint_file else placeholder_safetensors()

    def write_file(name: str) -> None:
        if name in files and name not in written:
            written.add(name)
            (output_dir / name).write_bytes(checkpoint)

    def renamed(line: bytes) -> bytes:
        m = CHECKPOINT_LINE.search(line)
        if m is None:
            return line
        name = m.group(1).decode().replace(fixture_name, output_name, 1)
        return line[: m.start()] + f"saving checkpoint: {output_dir.resolve() / name}\n".encode()

    out_pieces = [renamed(line) for line in pieces(stdout, "stdout")]
    err_pieces = pieces(stderr, "stderr")
    # The steps bar appears with the "epoch 1/1" line; a traceback after the last stdout line.
    training_start = next(
        (n + 1 for n, line in enumerate(out_pieces) if line.startswith(b"epoch ")), len(out_pieces)
    )
    i = j = 0
    bar_step = 0
    last_drawn = -1

    def gated_out(piece: bytes) -> bool:
        # A checkpoint is announced once the bar has reached its step; the final one at the end.
        m = CHECKPOINT_LINE.search(piece)
        if m is None:
            return False
        step = STEP_FILE.search(m.group(1))
        bars_left = any(STEP_BAR.search(p) for p in err_pieces[j:])
        return (bar_step < int(step.group(1))) if step else bars_left

    def gated_err(piece: bytes) -> bool:
        if piece.startswith(b"Traceback"):
            return i < len(out_pieces)
        bar = STEP_BAR.search(piece)
        if bar is None:
            return False
        if i < training_start:
            return True
        # ... and the bar moves past a step only after that step's checkpoint line.
        for later in out_pieces[i:]:
            m = CHECKPOINT_LINE.search(later)
            step = STEP_FILE.search(m.group(1)) if m else None
            if step and int(step.group(1)) < int(bar.group(1)):
                return True
        return False

    while i < len(out_pieces) or j < len(err_pieces):
        take_out = j >= len(err_pieces) or (
            i < len(out_pieces)
            and not gated_out(out_pieces[i])
            and (gated_err(err_pieces[j]) or i / len(out_pieces) <= j / len(err_pieces))
        )
        if take_out:
            piece, fd = out_pieces[i], 1
            i += 1
        else:
            piece, fd = err_pieces[j], 2
            j += 1
            bar = STEP_BAR.search(piece)
            if bar:
                bar_step = int(bar.group(1))
                if bar_step > last_drawn and bar_step > 0 and step_delay:
                    time.sleep(step_delay)  # "training" the step
                last_drawn = bar_step
        # Chunks split anywhere, a UTF-8 character included.
        while piece:
            size = rng.randint(1, 48)
            os.write(fd, piece[:size])
            piece = piece[size:]
        if fd == 1 and (m := CHECKPOINT_LINE.search(out_pieces[i - 1])):
            write_file(m.group(1).decode())
        time.sleep(delay)

    for name in files:  # whatever the output did not announce
        write_file(name)
    if self_kill:
        os.kill(os.getpid(), signal.SIGKILL)
    return exit_code


def main() -> int:
    if os.environ.get("FAKE_KOHYA_ROLE") == "child":
        run_child()
        return 0
    record_signals("main")
    parser = argparse.ArgumentParser(description="FAKE kohya train_network.py (tests only)")
    parser.add_argument("--output_dir", type=Path, default=Path("."))
    parser.add_argument("--output_name", default="last")
    args, _ignored = parser.parse_known_args()
    if log := os.environ.get("FAKE_KOHYA_ARGV_LOG"):
        env = {k: v for k, v in os.environ.items() if k.startswith(("PYTHON", "PYTORCH"))}
        Path(log).write_text(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": env}))
    if os.environ.get("FAKE_KOHYA_CHILD") == "1":
        start_child()
    case = os.environ.get("FAKE_KOHYA_CASE", "success")
    if case not in CASES:
        print(f"fake_kohya: unknown FAKE_KOHYA_CASE {case!r}", file=sys.stderr)
        return 2
    return replay(fixtures_dir() / case, args.output_dir, args.output_name)


if __name__ == "__main__":
    sys.exit(main())
