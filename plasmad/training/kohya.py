"""Running kohya's sd-scripts `train_network.py`: its command line, its output, its outcome.

Everything plasmad knows about kohya lives here, and all of it was measured against real runs
(shared/fixtures/kohya: a success and four failures, captured byte for byte):

- progress is tqdm on stderr, `steps:  50%|...| 3/6 [00:05<00:05, 1.83s/it, avr_loss=1.08]`,
  redrawn with `\\r`; checkpoints are announced on stdout as `saving checkpoint: <path>`;
- a missing dataset exits 0 with no file, so success is "the final file exists", never the exit
  code alone;
- under `accelerate launch` a trainer killed for lack of memory shows up as the launcher exiting 1
  with `died with <Signals.SIGKILL: 9>`.

Only `errors` and `limits` are imported from plasmad: the training supervisor composes this.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import inspect
import json
import logging
import os
import queue
import re
import shutil
import signal as signals
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

from plasmad.core import limits
from plasmad.core.errors import ErrorCode, PlasmaError, invalid

logger = logging.getLogger(__name__)

Stream: TypeAlias = Literal["stdout", "stderr"]
MixedPrecision: TypeAlias = Literal["fp16", "no"]
Device: TypeAlias = Literal["cuda", "mps", "cpu"]
OutcomeKind: TypeAlias = Literal["succeeded", "no_data", "out_of_memory", "cancelled", "failed"]

TAIL_LINES: Final = 200  # enough to hold a whole traceback plus the launcher's own after it
MAX_LINE_CHARS: Final = 16_384  # a line without an end is cut here, so runaway output stays bounded
TAIL_LINE_CHARS: Final = 2_000  # longer tail lines keep their start and their end
PROBE_TIMEOUT_S: Final = 60.0
# Older accelerate refuses fp16 on an Apple GPU ("fp16 mixed precision requires a GPU (not 'mps')").
FP16_MPS_MIN_ACCELERATE: Final = (1, 8)

# The environment kohya runs with, on top of the daemon's own.
KOHYA_ENV: Final[Mapping[str, str]] = {
    # Ops that MPS lacks fall back to the CPU instead of failing the run.
    "PYTORCH_ENABLE_MPS_FALLBACK": "1",
    # Progress and "saving checkpoint" lines must reach us when printed, not when a buffer fills.
    "PYTHONUNBUFFERED": "1",
    # kohya prints Japanese; a daemon started without a UTF-8 locale must not crash on it.
    "PYTHONIOENCODING": "utf-8",
}


# --------------------------------------------------------------------------------------------
# The command line


@dataclass
class KohyaParams:
    """One LoRA training (LORA-01). Batch size and optimizer are not parameters: they are fixed."""

    checkpoint: Path
    train_data_dir: Path
    output_dir: Path
    output_name: str
    reg_data_dir: Path | None = None
    steps: int = limits.TRAIN_DEFAULT_STEPS
    save_every_n_steps: int = limits.TRAIN_DEFAULT_SAVE_EVERY  # 0: no intermediate checkpoints
    resolution: int = limits.TRAIN_MAX_RESOLUTION
    network_dim: int = limits.TRAIN_DEFAULT_NETWORK_DIM
    network_alpha: float = limits.TRAIN_DEFAULT_NETWORK_ALPHA
    learning_rate: float = limits.TRAIN_DEFAULT_LEARNING_RATE
    mixed_precision: MixedPrecision = "no"  # take PreflightReport.mixed_precision
    seed: int = 42
    extra_args: list[str] = field(default_factory=list)  # from config, e.g. --tokenizer_cache_dir DIR


# Flags build_command sets itself. extra_args may not touch them: a config line must never raise
# the batch size or swap the optimizer for AdamW8bit (bitsandbytes has no Apple GPU support).
_MANAGED_FLAGS: Final = frozenset(
    {
        "--pretrained_model_name_or_path",
        "--train_data_dir",
        "--reg_data_dir",
        "--output_dir",
        "--output_name",
        "--network_module",
        "--network_dim",
        "--network_alpha",
        "--resolution",
        "--train_batch_size",
        "--max_train_steps",
        "--save_every_n_steps",
        "--mixed_precision",
        "--optimizer_type",
        "--use_8bit_adam",
        "--learning_rate",
        "--save_model_as",
        "--caption_extension",
        "--seed",
        "--console_log_simple",
    }
)
_OUTPUT_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _check_params(p: KohyaParams) -> None:
    """The hardware limits, checked once more where they turn into a process."""
    if not _OUTPUT_NAME_RE.fullmatch(p.output_name):
        raise invalid("output_name", "letters, digits, '.', '_' and '-' only (it becomes a file name)")
    if not 1 <= p.steps <= limits.TRAIN_MAX_STEPS:
        raise invalid("steps", f"must be between 1 and {limits.TRAIN_MAX_STEPS}")
    if p.save_every_n_steps < 0:
        raise invalid("save_every_n_steps", "must be 0 (off) or more")
    if not limits.MIN_SIZE <= p.resolution <= limits.TRAIN_MAX_RESOLUTION:
        raise invalid("resolution", f"must be between {limits.MIN_SIZE} and {limits.TRAIN_MAX_RESOLUTION}")
    if p.resolution % limits.SIZE_MULTIPLE:
        raise invalid("resolution", f"must be a multiple of {limits.SIZE_MULTIPLE}")
    if p.network_dim < 1 or p.network_alpha <= 0 or p.learning_rate <= 0:
        raise invalid("network", "network_dim, network_alpha and learning_rate must be positive")
    if p.mixed_precision not in ("fp16", "no"):
        raise invalid("mixed_precision", "must be 'fp16' or 'no'")
    for arg in p.extra_args:
        if arg.split("=", 1)[0] in _MANAGED_FLAGS:
            raise invalid("extra_args", f"{arg} is set by Plasma and may not be overridden")
        if "8bit" in arg.lower():
            raise invalid("extra_args", f"{arg}: 8-bit optimizers do not run on this machine")


def _abs(path: Path) -> str:
    # kohya runs in its own folder, so a relative path would point somewhere else there.
    return os.path.abspath(path)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def build_command(
    kohya_python: Path,
    kohya_script: Path,
    p: KohyaParams,
    *,
    use_accelerate: bool = True,
) -> tuple[list[str], dict[str, str]]:
    """The argv and the extra environment (on top of os.environ) for one training.

    Run it with cwd `kohya_cwd(kohya_script)`: sd-scripts imports its own `library` package.
    `use_accelerate=False` runs the script directly (tests, with a fake trainer); for real runs
    the launcher is `python -m accelerate.commands.launch`, which ties it to kohya's own venv.
    """
    _check_params(p)
    python = str(kohya_python)
    argv = [python if os.sep not in python else _abs(kohya_python)]
    if use_accelerate:
        argv += ["-m", "accelerate.commands.launch", "--num_cpu_threads_per_process", "2"]
    argv.append(_abs(kohya_script))
    # Before ours: argparse keeps the last value, so ours would win even past the check above.
    argv += p.extra_args
    argv += ["--pretrained_model_name_or_path", _abs(p.checkpoint)]
    argv += ["--train_data_dir", _abs(p.train_data_dir)]
    if p.reg_data_dir is not None:
        argv += ["--reg_data_dir", _abs(p.reg_data_dir)]
    argv += [
        "--output_dir", _abs(p.output_dir),
        "--output_name", p.output_name,
        "--network_module", "networks.lora",
        "--network_dim", str(p.network_dim),
        "--network_alpha", _number(p.network_alpha),
        "--resolution", f"{p.resolution},{p.resolution}",
        "--train_batch_size", str(limits.BATCH_SIZE),
        "--max_train_steps", str(p.steps),
    ]  # fmt: skip
    if p.save_every_n_steps > 0:
        argv += ["--save_every_n_steps", str(p.save_every_n_steps)]
    argv += [
        "--mixed_precision", p.mixed_precision,
        "--optimizer_type", "AdamW",
        "--learning_rate", _number(p.learning_rate),
        "--save_model_as", "safetensors",
        "--caption_extension", ".txt",
        "--seed", str(p.seed),
        "--console_log_simple",
    ]  # fmt: skip
    return argv, dict(KOHYA_ENV)


def kohya_cwd(kohya_script: Path) -> Path:
    """The folder kohya must run in: the one holding train_network.py and its `library`."""
    return Path(_abs(kohya_script)).parent


# --------------------------------------------------------------------------------------------
# The output


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float | None  # kohya's running average (avr_loss); absent on a step's first draw
    sec_per_step: float | None
    eta_seconds: float | None


@dataclass(frozen=True)
class CheckpointSaved:
    path: Path  # as kohya printed it
    step: int | None  # None for the final file


@dataclass(frozen=True)
class ErrorLine:
    text: str


Event: TypeAlias = Progress | CheckpointSaved | ErrorLine

_SEPARATOR_RE: Final = re.compile(r"[\r\n]")
_BAR_RE: Final = re.compile(
    r"(?P<desc>[^|]*?)\s*(?P<pct>\d{1,3})%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*"
    r"\[(?P<info>[^\]]*)\](?P<rest>.*)",
    re.DOTALL,
)
_RATE_RE: Final = re.compile(r"(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>s/it|it/s)")
_CHECKPOINT_RE: Final = re.compile(r"saving checkpoint: (?P<path>.+?)\s*$")
_STEP_FILE_RE: Final = re.compile(r"-step(\d+)\.safetensors$")
_EXCEPTION_RE: Final = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt)\b(?::|$)")
_NO_DATA_RE: Final = re.compile(r"No data found")
_ERROR_RE: Final = re.compile(
    r"^Traceback \(most recent call last\)|\bERROR\b|No data found|Cannot allocate memory|out of memory"
)


def _clock_seconds(text: str) -> float | None:
    """tqdm's `MM:SS` or `H:MM:SS`; `?` while unknown."""
    try:
        parts = [int(x) for x in text.strip().split(":")]
    except ValueError:
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + part
    return float(seconds)


def _shorten(line: str) -> str:
    if len(line) <= TAIL_LINE_CHARS:
        return line
    # Keep both ends: the launcher's one-line error ends with the part that matters (`died with ...`).
    half = TAIL_LINE_CHARS // 2
    return f"{line[:half]} … {line[-half:]}"


@dataclass
class _StreamState:
    decoder: codecs.IncrementalDecoder
    pending: str = ""  # text since the last \r or \n
    shown: str = ""  # the last segment ended by \r: what a terminal shows if \n comes next


class KohyaOutputParser:
    """Turns kohya's raw stdout and stderr into events, whatever the chunking.

    Bytes are decoded incrementally (a chunk may end inside a UTF-8 character), split on `\\r`
    and `\\n`, and each stream keeps its own partial line. A segment ended by `\\r` is a tqdm
    redraw: it can only yield Progress. A line ended by `\\n` is what a terminal would show; it
    goes to the tail and may yield CheckpointSaved or ErrorLine.
    """

    def __init__(self, tail_lines: int = TAIL_LINES) -> None:
        self._streams: dict[Stream, _StreamState] = {
            "stdout": _StreamState(codecs.getincrementaldecoder("utf-8")(errors="replace")),
            "stderr": _StreamState(codecs.getincrementaldecoder("utf-8")(errors="replace")),
        }
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._last_progress: Progress | None = None

    @property
    def tail(self) -> list[str]:
        """The last lines of both streams, in the order they arrived."""
        return list(self._tail)

    @property
    def last_progress(self) -> Progress | None:
        return self._last_progress

    def feed(self, stream: Stream, data: bytes) -> list[Event]:
        st = self._streams[stream]
        events: list[Event] = []
        self._consume(st, st.decoder.decode(data), events)
        # tqdm draws each state as "\r<bar>", so the "\r" ending it may come minutes later with the
        # next step: report a complete bar now rather than one step late.
        if st.pending:
            self._progress(st.pending, events)
        return events

    def flush(self, stream: Stream) -> list[Event]:
        """The stream ended: whatever is left is a last line."""
        st = self._streams[stream]
        events: list[Event] = []
        self._consume(st, st.decoder.decode(b"", final=True), events)
        if st.pending or st.shown:
            self._end_segment(st, "\n", events)
        return events

    def _consume(self, st: _StreamState, text: str, events: list[Event]) -> None:
        start = 0
        for m in _SEPARATOR_RE.finditer(text):
            self._append(st, text[start : m.start()], events)
            self._end_segment(st, m.group(), events)
            start = m.end()
        self._append(st, text[start:], events)

    def _append(self, st: _StreamState, text: str, events: list[Event]) -> None:
        st.pending += text
        # Cut at fixed offsets from the line's start, so the result does not depend on chunking.
        while len(st.pending) > MAX_LINE_CHARS:
            head, st.pending = st.pending[:MAX_LINE_CHARS], st.pending[MAX_LINE_CHARS:]
            st.shown = ""
            self._line(head, events)

    def _end_segment(self, st: _StreamState, separator: str, events: list[Event]) -> None:
        segment, st.pending = st.pending, ""
        if separator == "\r":
            if segment:
                st.shown = segment
                self._progress(segment, events)
            return
        # "\r\n" ends a line as well, and a bare "\n" after a bar closes the bar's line.
        line = segment or st.shown
        st.shown = ""
        if line:
            self._line(line, events)

    def _line(self, line: str, events: list[Event]) -> None:
        bar = _BAR_RE.match(line)
        if bar is not None:
            self._progress_from(bar, events)
            self._tail.append(_shorten(line[: bar.start("rest")].rstrip()))
            # A line printed while a bar is up lands right after it, with no "\r" between
            # (the sigkill fixture: `...avr_loss=1.08]Traceback (most recent call last):`).
            line = bar.group("rest")
        self._text(line.rstrip(), events)

    def _text(self, line: str, events: list[Event]) -> None:
        if not line.strip():
            return  # kohya prints many blank lines; they say nothing
        shown = _shorten(line)
        self._tail.append(shown)
        checkpoint = _CHECKPOINT_RE.search(line)
        if checkpoint is not None:
            path = checkpoint.group("path")
            step = _STEP_FILE_RE.search(path)
            events.append(CheckpointSaved(Path(path), int(step.group(1)) if step else None))
        elif _ERROR_RE.search(line) or _EXCEPTION_RE.match(line):
            events.append(ErrorLine(shown))

    def _progress(self, text: str, events: list[Event]) -> None:
        bar = _BAR_RE.match(text)
        if bar is not None:
            self._progress_from(bar, events)

    def _progress_from(self, bar: re.Match[str], events: list[Event]) -> None:
        # Dataset loading and caption reading draw bars too; only "steps" is training.
        if bar.group("desc").strip().rstrip(":").strip() != "steps":
            return
        info = [part.strip() for part in bar.group("info").split(",")]
        eta = None
        if "<" in info[0]:
            eta = _clock_seconds(info[0].split("<", 1)[1])
        sec_per_step = None
        loss = None
        for part in info[1:]:
            rate = _RATE_RE.fullmatch(part)
            if rate is not None:
                value = float(rate.group("value"))
                if rate.group("unit") == "s/it":
                    sec_per_step = value
                elif value > 0:
                    sec_per_step = 1.0 / value
            key, _, value_text = part.partition("=")
            if key in ("avr_loss", "loss") and loss is None:
                with contextlib.suppress(ValueError):
                    loss = float(value_text)
        progress = Progress(int(bar.group("n")), int(bar.group("total")), loss, sec_per_step, eta)
        # tqdm draws each step twice (before and after the loss is known) and the last one thrice.
        if progress != self._last_progress:
            self._last_progress = progress
            events.append(progress)


# --------------------------------------------------------------------------------------------
# The outcome


OOM_ADVICE: Final = (
    "Training ran out of memory. Quit other apps (browser, image editors, a running ComfyUI "
    "generation), lower the training resolution (e.g. 512 -> 448 or 384), keep the batch size at 1, "
    "and lower network_dim (e.g. 32 -> 16) if it fails again. Checkpoints saved before the failure "
    "are kept."
)
NO_DATA_ADVICE: Final = (
    "kohya found no training images: train_data_dir must be the parent of folders named "
    "<repeats>_<token> (e.g. 10_spyke_plasma_v1) that hold the images and their .txt captions."
)
_OOM_RE: Final = re.compile(
    r"died with <Signals\.SIGKILL: 9>|Cannot allocate memory|MPS backend out of memory"
    r"|CUDA out of memory|OutOfMemoryError"
)
_FAILURE_ADVICE: Final = (
    (
        re.compile(r"pretrained_model_name_or_path"),
        "Check that the base checkpoint exists and is a full-size SD 1.5 .safetensors file.",
    ),
    (
        re.compile(r"fp16 mixed precision requires a GPU"),
        "This accelerate is too old for fp16 on an Apple GPU: upgrade accelerate (1.8 or newer) in "
        "kohya's venv, or train with mixed precision off.",
    ),
    (
        re.compile(r"tokenizer|clip-vit-large-patch14|huggingface\.co", re.IGNORECASE),
        "kohya could not load the CLIP tokenizer: pass --tokenizer_cache_dir with a cached "
        "openai_clip-vit-large-patch14 folder in it.",
    ),
)


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    reason: str
    advice: str | None = None

    def as_error(self) -> PlasmaError | None:
        """The error to show for a training that ended without a LoRA; None when there is none."""
        if self.kind in ("succeeded", "cancelled"):
            return None
        code = ErrorCode.OUT_OF_MEMORY if self.kind == "out_of_memory" else ErrorCode.TRAINING_FAILED
        return PlasmaError(code, self.reason, details={"outcome": self.kind, "advice": self.advice})


def _last_line(tail: Sequence[str], pattern: re.Pattern[str]) -> str | None:
    for line in reversed(tail):
        if pattern.search(line):
            return line
    return None


def _failure_reason(exit_code: int | None, signal: int | None, tail: Sequence[str]) -> str:
    for line in reversed(tail):
        # The launcher's own CalledProcessError only repeats the argv; the trainer's error is above it.
        if _EXCEPTION_RE.match(line) and not line.startswith("subprocess.CalledProcessError"):
            return line
    error = _last_line(tail, re.compile(r"\bERROR\b"))
    if error is not None:
        return error
    if signal is not None:
        try:
            return f"the trainer was stopped by {signals.Signals(signal).name}"
        except ValueError:
            return f"the trainer was stopped by signal {signal}"
    if exit_code == 0:
        return "kohya exited without an error but wrote no final LoRA file"
    if exit_code is None:
        return "the trainer did not exit, even after SIGKILL"
    return f"kohya exited with code {exit_code}"


def classify_outcome(
    exit_code: int | None,
    signal: int | None,
    final_file_exists: bool,
    tail: Sequence[str],
    cancelled: bool,
) -> Outcome:
    """What a finished run means. Success needs the final file: kohya exits 0 on a missing dataset."""
    if final_file_exists and exit_code == 0:
        return Outcome("succeeded", "kohya wrote the final LoRA")
    if cancelled:
        return Outcome("cancelled", "training was cancelled")
    oom = _last_line(tail, _OOM_RE)
    # 128 + 9: the same kill, reported through a shell.
    if signal == signals.SIGKILL or exit_code == 128 + signals.SIGKILL or (oom and "died with" in oom):
        return Outcome(
            "out_of_memory",
            "the training process was killed (SIGKILL), most likely by the system for lack of memory",
            OOM_ADVICE,
        )
    if oom is not None:
        return Outcome("out_of_memory", f"out of memory: {oom}", OOM_ADVICE)
    no_data = _last_line(tail, _NO_DATA_RE)
    if no_data is not None:
        # The line is English, then " / " and the same in Japanese.
        return Outcome("no_data", no_data.split(" / ")[0].strip(), NO_DATA_ADVICE)
    reason = _failure_reason(exit_code, signal, tail)
    if final_file_exists:
        reason += " (the final LoRA file was written and may still be usable)"
    advice = next((text for pattern, text in _FAILURE_ADVICE if pattern.search(reason)), None)
    return Outcome("failed", reason, advice or "See the training log for kohya's full output.")


# --------------------------------------------------------------------------------------------
# Checkpoints


def scan_checkpoints(output_dir: Path, output_name: str) -> list[tuple[int | None, Path]]:
    """kohya's files in output_dir: `<name>-step%08d.safetensors` by step, then the final
    `<name>.safetensors` with step None. Touches the disk: call it through asyncio.to_thread."""
    step_re = re.compile(re.escape(output_name) + r"-step(\d+)\.safetensors")
    steps: list[tuple[int, Path]] = []
    final: Path | None = None
    try:
        entries = list(output_dir.iterdir())
    except FileNotFoundError:
        return []
    for path in entries:
        if not path.is_file():
            continue
        if path.name == f"{output_name}.safetensors":
            final = path
        elif (m := step_re.fullmatch(path.name)) is not None:
            steps.append((int(m.group(1)), path))
    found: list[tuple[int | None, Path]] = [(step, path) for step, path in sorted(steps)]
    if final is not None:
        found.append((None, final))
    return found


def safetensors_complete(path: Path) -> bool:
    """Whether a .safetensors file is whole: a process killed while saving leaves a short file.

    Reads only the header (never the tensors). Touches the disk: call it through asyncio.to_thread.
    """
    try:
        with path.open("rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if not 2 <= header_len <= 100_000_000:
                return False
            header = json.loads(f.read(header_len))
        size = path.stat().st_size
    except (OSError, ValueError):
        return False
    if not isinstance(header, dict):
        return False
    end = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(tensor["data_offsets"][1]))
        except (KeyError, IndexError, TypeError, ValueError):
            return False
    return size == 8 + header_len + end


# --------------------------------------------------------------------------------------------
# Running it


@dataclass
class RunResult:
    exit_code: int | None  # None when the process was ended by a signal
    signal: int | None  # the signal that ended it (not the launcher's child: see the tail)
    cancelled: bool
    killed: bool  # SIGKILL was needed: the group outlived SIGTERM by term_timeout
    tail: list[str]
    checkpoints: list[Path]  # as announced by kohya, in order
    last_progress: Progress | None


class _LogWriter:
    """Appends bytes to the run's log from a thread, so a slow disk never stalls the event loop."""

    def __init__(self, path: Path) -> None:
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(path,), name="kohya-log", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        self._queue.put(data)

    async def close(self) -> None:
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    def _run(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as f:
                while (data := self._queue.get()) is not None:
                    f.write(data)
                    if self._queue.empty():  # flush once per burst, not per chunk
                        f.flush()
        except OSError:
            logger.exception("cannot write the training log %s; the run goes on without it", path)
            while self._queue.get() is not None:  # keep draining so the queue cannot grow
                pass


def _signal_group(pgid: int, sig: signals.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # already gone
    except PermissionError:
        pass  # macOS answers EPERM when only zombies are left in the group


async def _exited(proc: asyncio.subprocess.Process) -> int:
    # Not proc.wait(): that also waits for the pipes to close, which an orphaned trainer (the
    # launcher died, its child did not) can hold open forever.
    while proc.returncode is None:  # noqa: ASYNC110 (asyncio offers no exit-only event)
        await asyncio.sleep(0.1)
    return proc.returncode


async def run_kohya(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    on_event: Callable[[Event], Awaitable[None] | None],
    cancel_event: asyncio.Event,
    term_timeout: float = 10.0,
) -> RunResult:
    """Run kohya to its end and report how it ended.

    `env` is added to os.environ. The process gets its own process group (its session), so that
    accelerate's launcher and the trainer it starts are stopped together: when cancel_event is
    set, SIGTERM goes to the group, then SIGKILL if anything is left after term_timeout. Raw
    output is appended to log_path. on_event gets every parsed event; its errors are logged,
    never allowed to end a training. Cancelling this coroutine kills the group outright; the
    orderly way to stop is cancel_event.
    """
    log = _LogWriter(log_path)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        await log.close()
        raise PlasmaError(ErrorCode.NOT_CONFIGURED, f"cannot start the trainer {argv[0]}: {exc}") from exc
    pgid = proc.pid  # start_new_session: the leader's pid is the group's id

    parser = KohyaOutputParser()
    checkpoints: list[Path] = []

    async def emit(events: list[Event]) -> None:
        for event in events:
            if isinstance(event, CheckpointSaved):
                checkpoints.append(event.path)
            try:
                result = on_event(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("training event handler failed on %r", event)

    async def pump(name: Stream, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(65536):
            log.write(chunk)
            await emit(parser.feed(name, chunk))
        await emit(parser.flush(name))

    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        asyncio.create_task(pump("stdout", proc.stdout)),
        asyncio.create_task(pump("stderr", proc.stderr)),
    ]
    exit_task = asyncio.create_task(_exited(proc))
    cancel_task = asyncio.create_task(cancel_event.wait())
    everything = {exit_task, *readers}
    cancelled = killed = False
    try:
        await asyncio.wait({exit_task, cancel_task}, return_when=asyncio.FIRST_COMPLETED)
        if not exit_task.done():
            cancelled = True
            _signal_group(pgid, signals.SIGTERM)
            # Done means exited *and* pipes closed: the pipes stay open while any group member lives.
            _, pending = await asyncio.wait(everything, timeout=term_timeout)
            if pending:
                killed = True
                _signal_group(pgid, signals.SIGKILL)
        else:
            _, pending = await asyncio.wait(readers, timeout=term_timeout)
            if pending:
                logger.warning("kohya exited but something in its group still holds its output; killing it")
                _signal_group(pgid, signals.SIGKILL)
        _, pending = await asyncio.wait(everything, timeout=max(term_timeout, 5.0))
        if pending:
            logger.error("kohya's output did not close after SIGKILL; a process escaped its group")
    finally:
        if proc.returncode is None or not all(t.done() for t in readers):
            _signal_group(pgid, signals.SIGKILL)  # this coroutine was cancelled: leave nothing behind
        for task in (cancel_task, exit_task, *readers):
            task.cancel()
        await asyncio.gather(cancel_task, exit_task, *readers, return_exceptions=True)
        await log.close()

    returncode = proc.returncode  # None only if even SIGKILL did not end it (stuck in a driver)
    return RunResult(
        exit_code=returncode if returncode is not None and returncode >= 0 else None,
        signal=-returncode if returncode is not None and returncode < 0 else None,
        cancelled=cancelled,
        killed=killed,
        tail=parser.tail,
        checkpoints=checkpoints,
        last_progress=parser.last_progress,
    )


# --------------------------------------------------------------------------------------------
# Preflight

# Runs inside kohya's python. The marker line keeps the answer apart from anything torch prints.
_PROBE: Final = r"""
import importlib.util, json, sys
out = {"python": sys.version.split()[0]}
try:
    import torch
    out["torch"] = torch.__version__
    if torch.cuda.is_available():
        out["device"] = "cuda"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out["device"] = "mps"
    else:
        out["device"] = "cpu"
except Exception as exc:
    out["torch_error"] = f"{type(exc).__name__}: {exc}"
try:
    import accelerate
    out["accelerate"] = accelerate.__version__
except Exception as exc:
    out["accelerate_error"] = f"{type(exc).__name__}: {exc}"
installed = {}
for name in ("torchvision", "bitsandbytes", "xformers", "triton"):
    try:
        installed[name] = importlib.util.find_spec(name) is not None
    except Exception:
        installed[name] = False
out["installed"] = installed
print("PLASMA_PROBE " + json.dumps(out), flush=True)
"""
_PROBE_MARKER: Final = "PLASMA_PROBE "


@dataclass
class PreflightReport:
    python_version: str | None = None
    torch_version: str | None = None
    accelerate_version: str | None = None
    device: Device | None = None  # where torch would train
    fp16_allowed: bool = False
    installed: dict[str, bool] = field(default_factory=dict)  # torchvision, bitsandbytes, xformers, triton
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def mixed_precision(self) -> MixedPrecision:
        """What to put in KohyaParams.mixed_precision."""
        return "fp16" if self.fp16_allowed else "no"

    def raise_for_errors(self) -> None:
        if self.errors:
            message = "kohya is not usable: " + "; ".join(self.errors)
            raise PlasmaError(ErrorCode.NOT_CONFIGURED, message, details=self.errors)


def _version_tuple(version: str) -> tuple[int, ...]:
    """'1.10.0.dev0' -> (1, 10, 0); '2.13.0+cpu' -> (2, 13, 0). Good enough to compare releases."""
    numbers: list[int] = []
    for part in version.split("+", 1)[0].split("."):
        m = re.match(r"\d+", part)
        if m is None:
            break
        numbers.append(int(m.group()))
    return tuple(numbers)


def _str_or_none(value: object) -> str | None:
    return str(value) if value else None


def _check_files(kohya_python: Path, kohya_script: Path) -> tuple[bool, bool, bool]:
    python = str(kohya_python)
    if os.sep not in python:
        python_ok = shutil.which(python) is not None
    else:
        python_ok = kohya_python.is_file() and os.access(kohya_python, os.X_OK)
    script_ok = kohya_script.is_file()
    looks_like_sd_scripts = (kohya_script.parent / "library").is_dir()
    return python_ok, script_ok, looks_like_sd_scripts


async def _probe(kohya_python: Path, cwd: Path, limit_s: float) -> tuple[dict[str, Any] | None, str]:
    """The probe's JSON, or None and why not."""
    try:
        proc = await asyncio.create_subprocess_exec(
            str(kohya_python),
            "-c",
            _PROBE,
            cwd=cwd,
            env={**os.environ, **KOHYA_ENV},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        return None, f"cannot run {kohya_python}: {exc}"
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        _signal_group(proc.pid, signals.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5.0)
        return None, f"{kohya_python} did not answer the probe within {limit_s:g} s"
    for line in reversed(out.decode("utf-8", "replace").splitlines()):
        if line.startswith(_PROBE_MARKER):
            try:
                answer = json.loads(line[len(_PROBE_MARKER) :])
            except ValueError:
                break
            if isinstance(answer, dict):
                return answer, ""
            break
    last = " | ".join(err.decode("utf-8", "replace").strip().splitlines()[-3:])
    return None, f"the probe in {kohya_python} failed (exit {proc.returncode}){': ' + last if last else ''}"


async def preflight(
    kohya_python: Path, kohya_script: Path, *, probe_timeout: float = PROBE_TIMEOUT_S
) -> PreflightReport:
    """Whether kohya can train here, and how: in seconds, without blocking the event loop."""
    report = PreflightReport()
    if os.sep in str(kohya_python):
        kohya_python = Path(_abs(kohya_python))  # the probe runs in kohya's folder, not ours
    python_ok, script_ok, looks_like_sd_scripts = await asyncio.to_thread(
        _check_files, kohya_python, kohya_script
    )
    if not python_ok:
        report.errors.append(f"KOHYA_PYTHON {kohya_python} does not exist or is not executable")
    if not script_ok:
        report.errors.append(f"KOHYA_SCRIPT {kohya_script} does not exist")
    elif not looks_like_sd_scripts:
        report.warnings.append(
            f"{kohya_script} has no library/ folder beside it: is it sd-scripts' train_network.py?"
        )
    if not python_ok:
        return report

    answer, why = await _probe(kohya_python, kohya_script.parent if script_ok else Path.cwd(), probe_timeout)
    if answer is None:
        report.errors.append(why)
        return report
    report.python_version = _str_or_none(answer.get("python"))
    report.torch_version = _str_or_none(answer.get("torch"))
    report.accelerate_version = _str_or_none(answer.get("accelerate"))
    installed = answer.get("installed")
    report.installed = {str(k): bool(v) for k, v in installed.items()} if isinstance(installed, dict) else {}
    device = answer.get("device")
    report.device = device if device in ("cuda", "mps", "cpu") else None

    if report.torch_version is None:
        report.errors.append(f"torch is not importable in {kohya_python}: {answer.get('torch_error')}")
    if report.accelerate_version is None:
        report.errors.append(
            f"accelerate is not importable in {kohya_python}: {answer.get('accelerate_error')}"
        )
    if report.installed.get("torchvision") is False:
        report.errors.append(f"torchvision is not installed in {kohya_python}; sd-scripts imports it")
    if report.python_version and _version_tuple(report.python_version) < (3, 10):
        report.warnings.append(
            f"sd-scripts wants Python 3.10 or newer; {kohya_python} is {report.python_version}"
        )

    if report.device == "cuda":
        report.fp16_allowed = True
    elif report.device == "mps":
        accelerate = _version_tuple(report.accelerate_version or "0")
        report.fp16_allowed = accelerate >= FP16_MPS_MIN_ACCELERATE
        if not report.fp16_allowed and report.accelerate_version is not None:
            report.warnings.append(
                f"accelerate {report.accelerate_version} cannot train in fp16 on an Apple GPU (1.8 or newer "
                "can): training in fp32, which is slower and needs more memory"
            )
    elif report.device == "cpu":
        # fp16 on a CPU fails at the first step (dtype mismatch), so fp32 is the only choice there.
        report.warnings.append(
            "NO GPU: torch in kohya's venv sees neither an Apple GPU (mps) nor CUDA, so training would "
            "run on the CPU, about 10x slower or worse (hours become days). Check that kohya's venv "
            "has a torch build with MPS support."
        )
    return report
