"""plasmad.training.kohya against real kohya output (shared/fixtures/kohya) and a FAKE trainer.

The parser and the outcome rules are checked on the captured bytes of five real runs; run_kohya
runs tests/fakes/fake_kohya.py (a FAKE that replays those bytes) as a real child process, so
pipes, process groups and signals are real.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TypeVar

import pytest

from plasmad.comfy.modelfiles import safetensors_complete
from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.training.checkpoints import scan_checkpoints
from plasmad.training.kohya.command import KohyaParams, build_command, kohya_cwd
from plasmad.training.kohya.outcome import OOM_ADVICE, classify_outcome
from plasmad.training.kohya.output import (
    TAIL_LINE_CHARS,
    CheckpointSaved,
    ErrorLine,
    Event,
    KohyaOutputParser,
    Progress,
)
from plasmad.training.kohya.preflight import preflight
from plasmad.training.kohya.runner import RunResult, run_kohya
from tests.fakes import fake_kohya
from tests.support.kohya import answer, fake_python, sd_scripts

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tests" / "fakes" / "fake_kohya.py"
CASES = ("success", "no_data", "sigkill", "bad_checkpoint", "cpu_oom")
NAME = "spyke_plasma_v1"  # the output_name of the captured runs


FIXTURES = fake_kohya.fixtures_dir()
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"no kohya fixtures at {FIXTURES}")


def fixture(case: str, name: str) -> bytes:
    return (FIXTURES / case / name).read_bytes()


def parse(
    case: str, chunk_sizes: tuple[int, int] | None = None, seed: int = 0
) -> tuple[list[Event], list[str]]:
    """Feed a case's stdout, then its stderr, in chunks of random size (None: all at once)."""
    parser = KohyaOutputParser()
    rng = random.Random(seed)
    events: list[Event] = []
    for stream in ("stdout", "stderr"):
        data = fixture(case, f"{stream}.log")
        while data:
            size = rng.randint(*chunk_sizes) if chunk_sizes else len(data)
            events += parser.feed(stream, data[:size])
            data = data[size:]
        events += parser.flush(stream)
    return events, parser.tail


T = TypeVar("T")


def of_type(events: list[Event], kind: type[T]) -> list[T]:
    return [e for e in events if isinstance(e, kind)]


# --------------------------------------------------------------------------------------------
# The parser, on real output


@needs_fixtures
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("sizes", [(1, 1), (1, 7), (1, 300), (4000, 9000)])
def test_chunking_never_changes_the_events(case: str, sizes: tuple[int, int]) -> None:
    whole = parse(case)
    for seed in range(3):
        assert parse(case, sizes, seed) == whole


@needs_fixtures
def test_success_progress_and_checkpoints() -> None:
    events, tail = parse("success")
    progress = of_type(events, Progress)
    assert progress[0] == Progress(0, 6, None, None, None)
    assert progress[1] == Progress(1, 6, None, 2.30, 11.0)
    assert progress[2] == Progress(1, 6, 1.21, 2.30, 11.0)
    assert progress[-1] == Progress(6, 6, 1.05, 1.80, 0.0)
    # Each step is drawn twice (without, then with the loss); the identical last redraw is dropped.
    assert [p.step for p in progress] == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    checkpoints = of_type(events, CheckpointSaved)
    assert [c.step for c in checkpoints] == [2, 4, 6, None]
    assert checkpoints[-1].path.name == f"{NAME}.safetensors"
    assert of_type(events, ErrorLine) == []
    assert tail[-1] == "steps: 100%|██████████| 6/6 [00:10<00:00,  1.80s/it, avr_loss=1.05]"
    assert "model saved." in tail
    assert "  num epochs / epoch数: 1" in tail  # the Japanese survives byte-split decoding


@needs_fixtures
def test_sigkill_splits_the_bar_from_the_traceback_written_after_it() -> None:
    events, tail = parse("sigkill")
    assert of_type(events, Progress)[-1] == Progress(4, 6, 1.08, 1.70, 3.0)
    assert [c.step for c in of_type(events, CheckpointSaved)] == [2, 4]
    errors = [e.text for e in of_type(events, ErrorLine)]
    assert errors[0] == "Traceback (most recent call last):"
    assert errors[-1].startswith("subprocess.CalledProcessError: Command")
    assert errors[-1].endswith("died with <Signals.SIGKILL: 9>.")
    bar = tail.index("steps:  67%|██████▋   | 4/6 [00:06<00:03,  1.70s/it, avr_loss=1.08]")
    assert tail[bar + 1] == "Traceback (most recent call last):"


@needs_fixtures
def test_no_data_has_an_error_line_and_no_training_progress() -> None:
    events, tail = parse("no_data")
    assert of_type(events, Progress) == []  # the "0it" and dataset bars are not training steps
    [error] = of_type(events, ErrorLine)
    assert error.text.startswith("No data found. Please verify arguments")
    assert "0it [00:00, ?it/s]" in tail


@needs_fixtures
@pytest.mark.parametrize(
    ("case", "last_error"),
    [
        ("bad_checkpoint", 'ValueError: The provided pretrained_model_name_or_path "'),
        ("cpu_oom", "RuntimeError: unable to mmap 2132625238 bytes"),
    ],
)
def test_exception_lines(case: str, last_error: str) -> None:
    events, _ = parse(case)
    errors = [e.text for e in of_type(events, ErrorLine)]
    assert any(e.startswith(last_error) for e in errors)
    assert errors[0] == "Traceback (most recent call last):"


def test_it_per_second_and_hours() -> None:
    parser = KohyaOutputParser()
    events = parser.feed(
        "stderr", "\rsteps:  50%|█████     | 300/600 [00:01<1:02:03,  2.50it/s, avr_loss=0.5]\n".encode()
    )
    assert events == [Progress(300, 600, 0.5, 0.4, 3723.0)]


def test_a_bar_is_reported_before_the_next_redraw_ends_it() -> None:
    parser = KohyaOutputParser()
    first = "\rsteps:  17%|█▋        | 1/6 [00:02<00:11,  2.30s/it]".encode()
    assert parser.feed("stderr", first[:20]) == []  # not a whole bar yet
    assert parser.feed("stderr", first[20:]) == [Progress(1, 6, None, 2.3, 11.0)]
    # The "\r" that ends it arrives with the next state: no second event for the first one.
    second = "\rsteps:  17%|█▋        | 1/6 [00:02<00:11,  2.30s/it, avr_loss=1.21]".encode()
    assert parser.feed("stderr", second) == [Progress(1, 6, 1.21, 2.3, 11.0)]


def test_crlf_checkpoint_lines_and_a_missing_last_newline() -> None:
    parser = KohyaOutputParser()
    events = parser.feed("stdout", b"\r\nsaving checkpoint: /x/lora-step00000002.safetensors\r\nmodel")
    assert events == [CheckpointSaved(Path("/x/lora-step00000002.safetensors"), 2)]
    assert parser.flush("stdout") == []
    assert parser.tail == ["saving checkpoint: /x/lora-step00000002.safetensors", "model"]


def test_tail_is_bounded_in_lines_and_width() -> None:
    parser = KohyaOutputParser(tail_lines=5)
    for n in range(100):
        parser.feed("stdout", f"line {n}\n".encode())
    assert parser.tail == [f"line {n}" for n in range(95, 100)]
    parser.feed("stderr", b"x" * 100_000 + b" died with <Signals.SIGKILL: 9>.\n")
    assert all(len(line) <= TAIL_LINE_CHARS + 3 for line in parser.tail)
    assert parser.tail[-1].endswith("died with <Signals.SIGKILL: 9>.")  # the end of a long line stays


# --------------------------------------------------------------------------------------------
# Outcomes


def fixture_outcome(case: str, *, cancelled: bool = False) -> tuple[str, str, str | None]:
    _, tail = parse(case)
    exit_code = int(fixture(case, "exit_code"))
    final = f"{NAME}.safetensors" in fixture(case, "files_written.txt").decode().split()
    outcome = classify_outcome(exit_code, None, final, tail, cancelled)
    return outcome.kind, outcome.reason, outcome.advice


@needs_fixtures
def test_outcome_of_each_real_run() -> None:
    assert fixture_outcome("success")[0] == "succeeded"

    kind, reason, advice = fixture_outcome("no_data")
    assert (kind, reason) == (
        "no_data",
        "No data found. Please verify arguments (train_data_dir must be the parent of folders with images)",
    )
    assert advice is not None and "10_spyke_plasma_v1" in advice

    kind, reason, advice = fixture_outcome("sigkill")
    assert kind == "out_of_memory" and "SIGKILL" in reason and advice == OOM_ADVICE

    kind, reason, advice = fixture_outcome("bad_checkpoint")
    assert kind == "failed"
    assert reason.startswith('ValueError: The provided pretrained_model_name_or_path "')
    assert reason.endswith("is neither a valid local path nor a valid repo id. Please check the parameter.")
    assert advice is not None and "checkpoint" in advice

    kind, reason, advice = fixture_outcome("cpu_oom")
    assert kind == "out_of_memory" and "Cannot allocate memory" in reason and advice == OOM_ADVICE


def test_oom_advice_says_what_to_do() -> None:
    for words in ("apps", "resolution", "batch size at 1", "network_dim"):
        assert words in OOM_ADVICE


@needs_fixtures
def test_success_needs_the_final_file() -> None:
    _, tail = parse("success")
    outcome = classify_outcome(0, None, False, tail, False)
    assert outcome.kind == "failed" and "no final LoRA" in outcome.reason
    kind = classify_outcome(1, None, True, tail, False).kind
    assert kind == "failed"  # a file and a crash: not a success, but the reason says the file is there
    assert "may still be usable" in classify_outcome(1, None, True, tail, False).reason


@pytest.mark.parametrize(
    ("exit_code", "sig", "line"),
    [
        (None, signal.SIGKILL, "steps:  67%"),
        (137, None, "steps:  67%"),
        (1, None, "RuntimeError: MPS backend out of memory (MPS allocated: 9.1 GB, other allocations: ...)"),
        (1, None, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB"),
        (1, None, "subprocess.CalledProcessError: Command '[...]' died with <Signals.SIGKILL: 9>."),
    ],
)
def test_out_of_memory_signs(exit_code: int | None, sig: int | None, line: str) -> None:
    outcome = classify_outcome(exit_code, sig, False, ["Traceback (most recent call last):", line], False)
    assert outcome.kind == "out_of_memory" and outcome.advice == OOM_ADVICE
    error = outcome.as_error()
    assert error is not None and error.code == ErrorCode.OUT_OF_MEMORY


def test_cancelled_wins_unless_the_lora_was_finished() -> None:
    assert classify_outcome(None, signal.SIGKILL, False, [], True).kind == "cancelled"
    assert classify_outcome(None, signal.SIGTERM, False, [], True).as_error() is None
    assert classify_outcome(0, None, True, [], True).kind == "succeeded"


def test_other_failures() -> None:
    outcome = classify_outcome(None, signal.SIGTERM, False, ["steps: ..."], False)
    assert outcome.kind == "failed" and "SIGTERM" in outcome.reason
    error = outcome.as_error()
    assert error is not None and error.code == ErrorCode.TRAINING_FAILED
    assert classify_outcome(2, None, False, [], False).reason == "kohya exited with code 2"
    fp16 = "ValueError: fp16 mixed precision requires a GPU (not 'mps')."
    assert "accelerate" in (classify_outcome(1, None, False, [fp16], False).advice or "")


# --------------------------------------------------------------------------------------------
# The command line


def params(tmp: Path, **changes: object) -> KohyaParams:
    p = KohyaParams(
        checkpoint=tmp / "ckpt.safetensors",
        train_data_dir=tmp / "train",
        reg_data_dir=tmp / "reg",
        output_dir=tmp / "out",
        output_name=NAME,
        steps=6,
        save_every_n_steps=2,
        resolution=64,
        network_dim=32,
        network_alpha=16,
        learning_rate=1e-4,
        mixed_precision="no",
        seed=42,
    )
    for key, value in changes.items():
        setattr(p, key, value)
    return p


def flags(args: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n, arg in enumerate(args):
        if arg.startswith("--"):
            value = args[n + 1] if n + 1 < len(args) and not args[n + 1].startswith("--") else None
            out[arg] = value
    return out


@needs_fixtures
def test_command_is_the_one_that_ran_for_the_fixtures(tmp_path: Path) -> None:
    readme = (FIXTURES / "README.md").read_text()
    block = readme.split("accelerate launch", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    expected = flags(block.split()[block.split().index("train_network.py") + 1 :])

    script = tmp_path / "sd-scripts" / "train_network.py"
    argv, env = build_command(Path("/venv/bin/python"), script, params(tmp_path))
    launcher = ["-m", "accelerate.commands.launch", "--num_cpu_threads_per_process", "2"]
    assert argv[:6] == ["/venv/bin/python", *launcher, str(script)]
    got = flags(argv[6:])
    # The fixtures were captured before bucketing was added (issue 11: without it kohya refuses a
    # dataset image larger than --resolution); the opt-in real-kohya tests run with it.
    bucketing = {"--enable_bucket", "--min_bucket_reso", "--max_bucket_reso", "--bucket_reso_steps"}
    assert got.keys() == expected.keys() | bucketing
    paths = {"--pretrained_model_name_or_path", "--train_data_dir", "--reg_data_dir", "--output_dir"}
    for flag, value in expected.items():
        if flag == "--learning_rate":
            assert float(got[flag] or "nan") == float(value or "nan")
        elif flag not in paths:
            assert got[flag] == value, flag
    assert got["--pretrained_model_name_or_path"] == str(tmp_path / "ckpt.safetensors")
    assert env == {"PYTORCH_ENABLE_MPS_FALLBACK": "1", "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    assert kohya_cwd(script) == script.parent


def test_batch_size_one_and_plain_adamw_always(tmp_path: Path) -> None:
    argv, _ = build_command(
        Path("python"), Path("train_network.py"), params(tmp_path, mixed_precision="fp16")
    )
    got = flags(argv)
    assert (got["--train_batch_size"], got["--optimizer_type"], got["--mixed_precision"]) == (
        "1",
        "AdamW",
        "fp16",
    )
    assert not any("8bit" in arg.lower() for arg in argv)
    assert argv[0] == "python"  # a bare name stays a PATH lookup
    assert argv[1:3] == ["-m", "accelerate.commands.launch"]


@pytest.mark.parametrize(
    "extra",
    [
        ["--train_batch_size", "4"],
        ["--train_batch_size=4"],
        ["--optimizer_type", "AdamW8bit"],
        ["--optimizer", "AdamW8bit"],
        ["--use_8bit_adam"],
        ["--mixed_precision", "bf16"],
    ],
)
def test_extra_args_cannot_override_the_safety_settings(tmp_path: Path, extra: list[str]) -> None:
    with pytest.raises(PlasmaError) as err:
        build_command(Path("python"), Path("t.py"), params(tmp_path, extra_args=extra))
    assert err.value.code == ErrorCode.INVALID_INPUT and err.value.field == "extra_args"


def test_extra_args_go_before_ours(tmp_path: Path) -> None:
    extra = ["--tokenizer_cache_dir", "/cache"]
    argv, _ = build_command(
        Path("python"), Path("t.py"), params(tmp_path, extra_args=extra), use_accelerate=False
    )
    assert argv[2:4] == extra
    assert argv[1] == os.path.abspath("t.py")  # direct: the script right after python


def test_optional_flags_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    p = params(Path("rel"), reg_data_dir=None, save_every_n_steps=0)
    argv, _ = build_command(Path("venv/bin/python"), Path("t.py"), p, use_accelerate=False)
    got = flags(argv)
    assert "--reg_data_dir" not in got and "--save_every_n_steps" not in got
    # kohya runs in its own folder, so every path must be absolute.
    assert argv[0] == str(tmp_path / "venv/bin/python")
    assert got["--train_data_dir"] == str(tmp_path / "rel" / "train")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("resolution", 1024),
        ("resolution", 500),
        ("steps", 0),
        ("steps", 10**6),
        ("output_name", "../escape"),
        ("output_name", ""),
        ("network_dim", 0),
        ("mixed_precision", "bf16"),
    ],
)
def test_limits_are_enforced(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(PlasmaError) as err:
        build_command(Path("python"), Path("t.py"), params(tmp_path, **{field: value}))
    assert err.value.code == ErrorCode.INVALID_INPUT


# --------------------------------------------------------------------------------------------
# Checkpoint files


def write_safetensors(path: Path, data: bytes = b"\0" * 8) -> None:
    header = json.dumps({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, len(data)]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)


def test_scan_checkpoints(tmp_path: Path) -> None:
    for name in (
        "lora-step00000004.safetensors",
        "lora-step00000002.safetensors",
        "lora.safetensors",
        "other-step00000001.safetensors",
        "lora-step00000003.safetensors.tmp",
        "lora.json",
    ):
        write_safetensors(tmp_path / name)
    (tmp_path / "lora-step00000009.safetensors").mkdir()
    assert scan_checkpoints(tmp_path, "lora") == [
        (2, tmp_path / "lora-step00000002.safetensors"),
        (4, tmp_path / "lora-step00000004.safetensors"),
        (None, tmp_path / "lora.safetensors"),
    ]
    assert scan_checkpoints(tmp_path / "missing", "lora") == []


def test_safetensors_complete(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    write_safetensors(good)
    assert safetensors_complete(good)
    short = tmp_path / "short.safetensors"
    short.write_bytes(good.read_bytes()[:-1])  # killed while saving
    assert not safetensors_complete(short)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert not safetensors_complete(tmp_path / "junk.safetensors")
    assert not safetensors_complete(tmp_path / "absent.safetensors")


# --------------------------------------------------------------------------------------------
# Running the FAKE trainer


class Run:
    """One run_kohya of the fake, with what it reported."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.out = tmp / "out"
        self.log = tmp / "logs" / "train.log"
        self.signal_log = tmp / "signals.txt"
        self.child_pid_file = tmp / "child.pid"
        self.events: list[Event] = []
        self.cancel = asyncio.Event()

    async def __call__(
        self, case: str, *, cancel_at_step: int | None = None, term_timeout: float = 5.0, **env: str
    ) -> RunResult:
        p = params(self.tmp, output_dir=self.out, output_name="mylora")
        argv, extra_env = build_command(Path(sys.executable), FAKE, p, use_accelerate=False)
        extra_env |= {
            "FAKE_KOHYA_CASE": case,
            "FAKE_KOHYA_FIXTURES": str(FIXTURES),
            "FAKE_KOHYA_DELAY": "0.001",
            "FAKE_KOHYA_SIGNAL_LOG": str(self.signal_log),
            "FAKE_KOHYA_CHILD_PID": str(self.child_pid_file),
            **env,
        }

        def on_event(event: Event) -> None:
            self.events.append(event)
            if cancel_at_step is not None and isinstance(event, Progress) and event.step >= cancel_at_step:
                self.cancel.set()

        cwd = kohya_cwd(FAKE)
        return await run_kohya(argv, extra_env, cwd, self.log, on_event, self.cancel, term_timeout)

    def signals(self) -> list[str]:
        if not self.signal_log.exists():
            return []
        return [line.split()[0] + " " + line.split()[2] for line in self.signal_log.read_text().splitlines()]

    def files(self) -> list[str]:
        return sorted(path.name for path in self.out.iterdir()) if self.out.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")  # a killed orphan may linger as a zombie until init reaps it
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


async def wait_dead(pid: int) -> bool:
    for _ in range(50):
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


@needs_fixtures
async def test_run_success(tmp_path: Path) -> None:
    run = Run(tmp_path)
    argv_log = tmp_path / "argv.json"
    result = await run("success", FAKE_KOHYA_ARGV_LOG=str(argv_log))
    assert (result.exit_code, result.signal, result.cancelled, result.killed) == (0, None, False, False)

    files = ["mylora-step00000002.safetensors", "mylora-step00000004.safetensors"]
    files += ["mylora-step00000006.safetensors", "mylora.safetensors"]
    assert run.files() == files
    found = scan_checkpoints(run.out, "mylora")
    assert [step for step, _ in found] == [2, 4, 6, None]
    assert all(safetensors_complete(path) for _, path in found)
    assert result.checkpoints == [run.out.resolve() / name for name in files]
    assert [e.path for e in of_type(run.events, CheckpointSaved)] == result.checkpoints
    assert result.last_progress == Progress(6, 6, 1.05, 1.80, 0.0) == of_type(run.events, Progress)[-1]
    assert classify_outcome(0, None, (run.out / "mylora.safetensors").exists(), result.tail, False).kind == (
        "succeeded"
    )

    # The log holds every byte of both streams (interleaved as they came).
    old = f"/home/artist/plasma/loras/run-success/{NAME}".encode()
    expected = fixture("success", "stdout.log").replace(old, str(run.out.resolve() / "mylora").encode())
    expected += fixture("success", "stderr.log")
    assert Counter(run.log.read_bytes()) == Counter(expected)

    # What the trainer got: its own folder as cwd, unbuffered output, the MPS fallback.
    seen = json.loads(argv_log.read_text())
    assert seen["cwd"] == str(FAKE.parent)
    assert seen["env"]["PYTHONUNBUFFERED"] == "1" and seen["env"]["PYTORCH_ENABLE_MPS_FALLBACK"] == "1"
    assert "--train_batch_size" in seen["argv"]


@needs_fixtures
async def test_run_no_data(tmp_path: Path) -> None:
    run = Run(tmp_path)
    result = await run("no_data")
    assert result.exit_code == 0 and run.files() == []
    outcome = classify_outcome(result.exit_code, result.signal, False, result.tail, result.cancelled)
    assert outcome.kind == "no_data"
    assert any(isinstance(e, ErrorLine) and e.text.startswith("No data found") for e in run.events)


@needs_fixtures
async def test_run_killed_under_accelerate_keeps_checkpoints(tmp_path: Path) -> None:
    run = Run(tmp_path)
    result = await run("sigkill")
    assert (result.exit_code, result.signal) == (1, None)  # the launcher survived and reported it
    assert run.files() == ["mylora-step00000002.safetensors", "mylora-step00000004.safetensors"]
    assert len(result.checkpoints) == 2
    outcome = classify_outcome(result.exit_code, result.signal, False, result.tail, result.cancelled)
    assert outcome.kind == "out_of_memory"


@needs_fixtures
async def test_run_killed_directly(tmp_path: Path) -> None:
    run = Run(tmp_path)
    result = await run("sigkill", FAKE_KOHYA_SELF_KILL="1")
    assert (result.exit_code, result.signal) == (None, signal.SIGKILL)
    assert result.last_progress is not None and result.last_progress.step == 4
    assert classify_outcome(None, result.signal, False, result.tail, False).kind == "out_of_memory"


@needs_fixtures
async def test_cancel_sends_sigterm_to_the_group(tmp_path: Path) -> None:
    run = Run(tmp_path)
    started = time.monotonic()
    result = await run(
        "success", cancel_at_step=1, FAKE_KOHYA_SLOW="1", FAKE_KOHYA_STEP_DELAY="0.3", FAKE_KOHYA_CHILD="1"
    )
    assert time.monotonic() - started < 5
    assert (result.cancelled, result.killed, result.signal) == (True, False, signal.SIGTERM)
    assert result.last_progress is not None and result.last_progress.step < 3  # stopped mid-training
    assert sorted(run.signals()) == ["child SIGTERM", "main SIGTERM"]
    assert await wait_dead(int(run.child_pid_file.read_text()))
    assert classify_outcome(result.exit_code, result.signal, False, result.tail, result.cancelled).kind == (
        "cancelled"
    )
    assert run.files() == []  # cancelled at step 1, before the first checkpoint


@needs_fixtures
async def test_cancel_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    run = Run(tmp_path)
    started = time.monotonic()
    result = await run(
        "success",
        cancel_at_step=1,
        term_timeout=0.5,
        FAKE_KOHYA_SLOW="1",
        FAKE_KOHYA_STEP_DELAY="0.3",
        FAKE_KOHYA_IGNORE_TERM="1",
        FAKE_KOHYA_CHILD="1",
    )
    assert time.monotonic() - started < 5
    assert (result.cancelled, result.killed, result.signal) == (True, True, signal.SIGKILL)
    assert result.last_progress is not None and result.last_progress.step < 6
    assert sorted(run.signals()) == ["child SIGTERM", "main SIGTERM"]  # both were asked first
    assert await wait_dead(int(run.child_pid_file.read_text()))


@needs_fixtures
async def test_an_orphan_holding_the_output_is_killed(tmp_path: Path) -> None:
    # The fake exits 0 but leaves a child that keeps its stdout and stderr open, as a trainer
    # would whose launcher died first.
    run = Run(tmp_path)
    started = time.monotonic()
    result = await run("success", term_timeout=0.5, FAKE_KOHYA_CHILD="1")
    assert time.monotonic() - started < 5  # the child would sleep 60 s
    assert (result.exit_code, result.cancelled, result.killed) == (0, False, False)
    assert await wait_dead(int(run.child_pid_file.read_text()))


@needs_fixtures
async def test_a_failing_event_handler_does_not_stop_training(tmp_path: Path) -> None:
    seen: list[Event] = []

    async def on_event(event: Event) -> None:
        seen.append(event)
        raise RuntimeError("listener bug")

    p = params(tmp_path, output_dir=tmp_path / "out", output_name="mylora")
    argv, env = build_command(Path(sys.executable), FAKE, p, use_accelerate=False)
    env |= {"FAKE_KOHYA_CASE": "success", "FAKE_KOHYA_FIXTURES": str(FIXTURES), "FAKE_KOHYA_DELAY": "0"}
    result = await run_kohya(argv, env, kohya_cwd(FAKE), tmp_path / "log", on_event, asyncio.Event())
    assert result.exit_code == 0 and len(result.checkpoints) == 4
    assert len(of_type(seen, Progress)) == 13


async def test_a_missing_python_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(PlasmaError) as err:
        argv = [str(tmp_path / "nope" / "python"), "x.py"]
        await run_kohya(argv, {}, tmp_path, tmp_path / "log", print, asyncio.Event())
    assert err.value.code == ErrorCode.NOT_CONFIGURED


# --------------------------------------------------------------------------------------------
# Preflight


@pytest.mark.parametrize(
    ("device", "accelerate", "precision", "warning"),
    [
        ("cuda", "0.30.0", "fp16", None),
        ("mps", "1.10.1", "fp16", None),  # 1.10 > 1.8: versions compare as numbers
        ("mps", "1.8.0", "fp16", None),
        ("mps", "1.7.0", "no", "1.8 or newer"),
        ("cpu", "1.10.1", "no", "10x slower"),
    ],
)
async def test_preflight_decides_precision(
    tmp_path: Path, device: str, accelerate: str, precision: str, warning: str | None
) -> None:
    report = await preflight(fake_python(tmp_path, answer(device, accelerate)), sd_scripts(tmp_path))
    assert report.ok, report.errors
    assert (report.device, report.mixed_precision) == (device, precision)
    versions = (report.torch_version, report.accelerate_version, report.python_version)
    assert versions == ("2.6.0", accelerate, "3.11.9")
    assert report.installed["bitsandbytes"] is False
    if warning is None:
        assert report.warnings == []
    else:
        assert any(warning in w for w in report.warnings)
    report.raise_for_errors()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"torch": None, "torch_error": "ModuleNotFoundError: No module 'torch'"}, "torch cannot be"),
        ({"accelerate": None, "accelerate_error": "ModuleNotFoundError"}, "accelerate cannot be imported"),
        ({"torchvision": None, "installed": {"torchvision": False}}, "torchvision cannot be imported"),
    ],
)
async def test_preflight_errors_from_the_probe(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    report = await preflight(fake_python(tmp_path, answer("mps") | changes), sd_scripts(tmp_path))
    assert not report.ok and any(message in e for e in report.errors)
    with pytest.raises(PlasmaError) as err:
        report.raise_for_errors()
    assert err.value.code == ErrorCode.NOT_CONFIGURED


async def test_preflight_missing_files(tmp_path: Path) -> None:
    report = await preflight(tmp_path / "no" / "python", tmp_path / "no" / "train_network.py")
    assert len(report.errors) == 2 and report.device is None
    assert "KOHYA_PYTHON" in report.errors[0] and "KOHYA_SCRIPT" in report.errors[1]


async def test_preflight_probe_failures(tmp_path: Path) -> None:
    script = sd_scripts(tmp_path)
    report = await preflight(fake_python(tmp_path, None, exit_code=1), script)
    assert report.errors == [f"the probe in {tmp_path / 'bin' / 'python'} failed (exit 1): probe went wrong"]

    started = time.monotonic()
    report = await preflight(fake_python(tmp_path, answer("cpu"), sleep=30), script, probe_timeout=0.5)
    assert time.monotonic() - started < 5
    assert len(report.errors) == 1 and "did not answer" in report.errors[0]


async def test_preflight_probe_code_in_a_python_without_torch(tmp_path: Path) -> None:
    # The real probe, run by the interpreter of these tests (which has no torch, like the daemon's).
    report = await preflight(Path(sys.executable), sd_scripts(tmp_path))
    assert report.python_version == platform.python_version()
    if report.torch_version is None:
        assert any("torch cannot be imported" in e for e in report.errors)
    assert set(report.installed) == {"torchvision", "bitsandbytes", "xformers", "triton"}


async def test_preflight_warns_when_the_script_is_not_in_sd_scripts(tmp_path: Path) -> None:
    script = tmp_path / "train_network.py"
    script.write_text("")
    report = await preflight(fake_python(tmp_path, answer("cuda")), script)
    assert report.ok and any("library/" in w for w in report.warnings)


@pytest.mark.skipif(
    not (os.environ.get("KOHYA_PYTHON") and os.environ.get("KOHYA_SCRIPT")),
    reason="set KOHYA_PYTHON and KOHYA_SCRIPT to check a real kohya install",
)
async def test_preflight_real_kohya() -> None:
    report = await preflight(Path(os.environ["KOHYA_PYTHON"]), Path(os.environ["KOHYA_SCRIPT"]))
    print(report)
    assert report.ok, report.errors
    assert report.device in ("cuda", "mps", "cpu")
    assert re.match(r"\d+\.\d+", report.torch_version or "")
