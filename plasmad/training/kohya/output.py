"""kohya's output, as events: progress, checkpoints saved, error lines; and the tail a person reads.

All of it was measured against real runs (shared/fixtures/kohya: a success and four failures,
captured byte for byte):

- progress is tqdm on stderr, `steps:  50%|...| 3/6 [00:05<00:05, 1.83s/it, avr_loss=1.08]`,
  redrawn with `\\r`; checkpoints are announced on stdout as `saving checkpoint: <path>`;
- a line printed while a bar is up lands right after it, with no line break between.
"""

from __future__ import annotations

import codecs
import contextlib
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeAlias

Stream: TypeAlias = Literal["stdout", "stderr"]

TAIL_LINES: Final = 200  # enough to hold a whole traceback plus the launcher's own after it
MAX_LINE_CHARS: Final = 16_384  # a line without an end is cut here, so runaway output stays bounded
TAIL_LINE_CHARS: Final = 2_000  # longer tail lines keep their start and their end


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
EXCEPTION_RE: Final = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt)\b(?::|$)")
NO_DATA_RE: Final = re.compile(r"No data found")
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
        elif _ERROR_RE.search(line) or EXCEPTION_RE.match(line):
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
