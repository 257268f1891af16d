"""The one wait loop: follow a job (a generation, a training) to its end, redrawing its progress.

It asks plasmad `status {id, wait, step}`, the long poll: the answer comes as soon as the job has
ended or its progress differs from what this side last saw (`step`: the step, -1 while queued; a
queued job's answer also comes when its place in the queue changes), else after `wait` seconds.
So the display moves when the job does, and nothing polls on a timer.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click

from plasmactl.context import Ctl
from plasmactl.output import Exit, bar, fail
from plasmad.core.states import FINISHED_STATES, JobStatus

#: One long poll: well under the client's socket timeout (60 s) and the daemon's longest (60 s).
LONG_POLL_S = 30.0
#: Only when a long poll comes back early with nothing new (the daemon is stopping): a pause before
#: asking again, so that the loop cannot spin.
BACKOFF_S = 0.25


class StatusLine:
    """One line on stderr, redrawn in place; shown only when `enabled` (a terminal, not --json)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.last = ""

    def show(self, line: str) -> None:
        if self.enabled and line != self.last:
            click.echo("\r\033[K" + line, err=True, nl=False)
            self.last = line

    def erase(self) -> None:
        if self.enabled:
            click.echo("\r\033[K", err=True, nl=False)
            self.last = ""

    def end(self) -> None:
        """Leave the last line standing and go to the next."""
        if self.enabled and self.last:
            click.echo("", err=True)
        self.last = ""


def interactive(ctl: Ctl) -> bool:
    """Progress is redrawn on a terminal, for people; never under --json."""
    return sys.stderr.isatty() and not ctl.json


def seen_step(job: dict[str, Any]) -> int:
    """What the long poll compares with the job: its progress step; -1 while it is queued."""
    if job["status"] == JobStatus.QUEUED:
        return -1
    progress = job.get("progress")
    return int(progress["step"]) if progress else 0


def _seen(job: dict[str, Any]) -> tuple[Any, ...]:
    return job["status"], seen_step(job), job.get("waitingFor")


def follow(
    ctl: Ctl,
    job_id: str,
    on_change: Callable[[dict[str, Any]], None] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Wait for `job_id` to end and return its view; `on_change(view)` for every state it is seen
    in before (queued, running, each step). Past `timeout` seconds: exit 6."""
    deadline = None if timeout is None else time.monotonic() + timeout
    job: dict[str, Any] = ctl.call("status", id=job_id)
    while job["status"] not in FINISHED_STATES:
        if on_change is not None:
            on_change(job)
        wait = LONG_POLL_S
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                fail(f"job {job_id} still {job['status']} after {timeout:.0f} s", Exit.UNAVAILABLE)
            wait = min(wait, left)
        before, asked = _seen(job), time.monotonic()
        job = ctl.call("status", id=job_id, wait=round(wait, 3), step=seen_step(job))
        if _seen(job) == before and time.monotonic() - asked < wait:
            time.sleep(BACKOFF_S)
    return job


def job_line(job: dict[str, Any]) -> str:
    """A generation's line: queued and why, its progress bar, or running."""
    if job["status"] == JobStatus.QUEUED:
        return f"{job['id']} queued: waiting for {job.get('waitingFor') or 'the worker'}"
    if job.get("waitingFor"):  # running, between two attempts: ComfyUI went away
        return f"{job['id']} waiting for {job['waitingFor']}"
    progress = job.get("progress")
    if progress:
        return f"{job['id']} {bar(progress['step'], progress['total'])}"
    return f"{job['id']} running"


def wait_job(ctl: Ctl, job_id: str, timeout: float | None = None) -> dict[str, Any]:
    """Follow a job with its progress line on a terminal; its final view."""
    line = StatusLine(interactive(ctl))
    try:
        return follow(ctl, job_id, lambda j: line.show(job_line(j)), timeout)
    finally:
        line.end()
