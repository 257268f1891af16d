"""`plasmactl submit`, `generate`, `status`, `wait`, `jobs`, `cancel`, `retry`, `approve`:
generations and the jobs of the queue."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from plasmactl.context import Ctl, json_option, pass_ctl
from plasmactl.follow import wait_job
from plasmactl.output import Exit, emit_json, fail, table
from plasmad.core import limits
from plasmad.core.states import JobStatus

F = TypeVar("F", bound=Callable[..., Any])


def generation_options(f: F) -> F:
    """The generation parameters shared by `submit` and `generate`."""
    options = [
        click.option("--negative", "negative_prompt", help="Negative prompt."),
        click.option("--lora", "lora_id", help="LoRA file in ComfyUI's models/loras (default: base model)."),
        click.option("--lora-strength", type=float, help="LoRA strength (default 1.0)."),
        click.option("--checkpoint", help="Checkpoint file (default: PLASMA_CHECKPOINT)."),
        click.option("--seed", type=int, help="Seed (default: drawn and recorded)."),
        click.option("--steps", type=int, help=f"Sampler steps (default {limits.DEFAULT_STEPS})."),
        click.option("--cfg", type=float, help=f"CFG scale (default {limits.DEFAULT_CFG:g})."),
        click.option("--sampler", help=f"Sampler (default {limits.DEFAULT_SAMPLER})."),
        click.option("--scheduler", help=f"Scheduler (default {limits.DEFAULT_SCHEDULER})."),
        click.option("--width", type=int, help=f"Width, at most {limits.MAX_WIDTH}."),
        click.option("--height", type=int, help=f"Height, at most {limits.MAX_HEIGHT}."),
        click.option(
            "--pose",
            "pose_image_path",
            type=click.Path(dir_okay=False),
            help="Pose image: selects the ControlNet OpenPose workflow.",
        ),
        click.option(
            "--strength",
            "controlnet_strength",
            type=float,
            help=f"ControlNet strength {limits.CONTROLNET_STRENGTH_MIN}-{limits.CONTROLNET_STRENGTH_MAX}.",
        ),
        click.option("--controlnet", help="ControlNet model file (default: PLASMA_CONTROLNET)."),
        click.option(
            "--init",
            "init_image_path",
            type=click.Path(dir_okay=False),
            help="img2img base image (default: the pose image).",
        ),
        click.option("--denoise", type=float, help="img2img denoise (0-1]."),
        click.option(
            "--reference",
            "reference",
            is_flag=True,
            help="The pose image is a reference panel, not an OpenPose skeleton.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def request_from(opts: dict[str, Any]) -> dict[str, Any]:
    names = {
        "negative_prompt": "negativePrompt",
        "lora_id": "loraId",
        "lora_strength": "loraStrength",
        "pose_image_path": "poseImagePath",
        "controlnet_strength": "controlnetStrength",
        "init_image_path": "initImagePath",
    }
    body: dict[str, Any] = {}
    for key, value in opts.items():
        if value is None or key in ("width", "height", "reference"):
            continue
        if key in ("pose_image_path", "init_image_path"):
            value = str(Path(value).expanduser().resolve())  # the daemon resolves no relative paths
        body[names.get(key, key)] = value
    if opts.get("width") is not None or opts.get("height") is not None:
        body["resolution"] = {k: opts[k] for k in ("width", "height") if opts.get(k) is not None}
    if opts.get("reference"):
        body["poseIsSkeleton"] = False
    return body


def finish(ctl: Ctl, job_id: str, timeout: float | None = None) -> None:
    """Wait for a job; print its outputs (the job under --json); exit 1 or 7 unless it succeeded."""
    job = wait_job(ctl, job_id, timeout)
    if ctl.json:
        emit_json(job)
    if job["status"] == JobStatus.SUCCEEDED:
        if not ctl.json:
            for path in job.get("outputs", []):
                click.echo(path)
        return
    message = (job.get("error") or {}).get("message", job["status"])
    fail(
        f"job {job_id} {job['status']}: {message}",
        Exit.CANCELLED if job["status"] == JobStatus.CANCELLED else Exit.JOB_FAILED,
    )


@click.command()
@click.option("-p", "--prompt", required=True, help="The prompt.")
@click.option("-c", "--chapter", type=int, help="Place the image in the pipeline's files: chapter...")
@click.option("--page", type=int, help="...and page.")
@generation_options
@click.option("--wait", "wait_for_it", is_flag=True, help="Wait for the job and print the image path.")
@json_option
@pass_ctl
def submit(
    ctl: Ctl, /, prompt: str, chapter: int | None, page: int | None, wait_for_it: bool, **opts: Any
) -> None:
    """Queue one generation job; prints its id."""
    body = {"prompt": prompt, **request_from(opts)}
    if chapter is not None:
        body["chapter"] = chapter
    if page is not None:
        body["page"] = page
    job = ctl.call("submit", **body)
    if wait_for_it:
        finish(ctl, job["id"])
    else:
        ctl.show(job, job["id"])


@click.command()
@click.option("-c", "--chapter", type=int, required=True, help="Chapter number.")
@click.option("--page", type=int, required=True, help="Page number.")
@generation_options
@json_option
@pass_ctl
def generate(ctl: Ctl, /, chapter: int, page: int, **opts: Any) -> None:
    """Generate a page from its prompt file; waits and prints the image path.

    The prompt comes from <pipeline>/prompts/ch-XX/pNNN.txt (see the README); options override.
    """
    job = ctl.call("generate_page", chapter=chapter, page=page, **request_from(opts))
    finish(ctl, job["id"])


@click.command()
@click.argument("job_id")
@json_option
@pass_ctl
def status(ctl: Ctl, job_id: str) -> None:
    """Show one job."""
    job = ctl.call("status", id=job_id)
    ctl.show(job, lambda: _print_job(job))


def _print_job(job: dict[str, Any]) -> None:
    click.echo(f"{job['id']}  {job['kind']}  {job['status']}")
    if job.get("progress"):
        click.echo(f"progress: {job['progress']['step']}/{job['progress']['total']}")
    if job.get("waitingFor"):
        click.echo(f"waiting for: {job['waitingFor']}")
    for n, attempt in enumerate((job.get("result") or {}).get("attempts", []), 1):
        click.echo(f"attempt {n} not finished by ComfyUI ({attempt['at']}): {attempt['reason']}")
    if job.get("seed") is not None:
        click.echo(f"seed: {job['seed']}")
    for path in job.get("outputs", []):
        click.echo(f"output: {path}")
    if job.get("error"):
        click.echo(f"error: {job['error']['message']}")


@click.command()
@click.argument("job_id")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds (exit 6).")
@json_option
@pass_ctl
def wait(ctl: Ctl, job_id: str, timeout: float | None) -> None:
    """Wait for a job with a progress bar; prints the image path."""
    finish(ctl, job_id, timeout)


@click.command()
@click.option("--status", "status_filter", type=click.Choice([s.value for s in JobStatus]))
@click.option("--limit", type=int, default=20, show_default=True)
@json_option
@pass_ctl
def jobs(ctl: Ctl, status_filter: str | None, limit: int) -> None:
    """Recent jobs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if status_filter:
        params["status"] = status_filter
    items = ctl.call("jobs", **params)
    if ctl.json:
        emit_json(items)
        return
    rows = [
        [
            j["id"],
            j["kind"],
            j["status"],
            f"{j['progress']['step']}/{j['progress']['total']}" if j.get("progress") else "",
            j["createdAt"],
            (j.get("outputs") or [""])[0],
        ]
        for j in items
    ]
    click.echo(table(rows, ["ID", "KIND", "STATUS", "PROGRESS", "CREATED", "OUTPUT"]))


@click.command()
@click.argument("job_id")
@json_option
@pass_ctl
def cancel(ctl: Ctl, job_id: str) -> None:
    """Cancel a queued or running job."""
    job = ctl.call("cancel", id=job_id)
    said = f"{job['id']} {job['status']}"
    if job["status"] == "running":  # the daemon has asked it to stop; it ends when its work does
        said += f": cancelling (plasmactl wait {job['id']} follows it to the end)"
    ctl.show(job, said)


@click.command()
@click.argument("job_id")
@click.option("--wait", "wait_for_it", is_flag=True, help="Wait for the job and print the image path.")
@json_option
@pass_ctl
def retry(ctl: Ctl, job_id: str, wait_for_it: bool) -> None:
    """Run a failed (or cancelled) generation again, as the same job.

    Same id, same page version; a render ComfyUI still has is collected rather than run again.
    For after a fault is fixed: a full disk freed, a read-only folder made writable."""
    job = ctl.call("retry", id=job_id)
    if wait_for_it:
        finish(ctl, job["id"])
    else:
        ctl.show(job, f"{job['id']} {job['status']}")


@click.command()
@click.argument("image")
@click.option("--undo", is_flag=True, help="Set approved back to false.")
@json_option
@pass_ctl
def approve(ctl: Ctl, image: str, undo: bool) -> None:
    """Mark a page image (chXX_pNNN_vN) approved in the generation log."""
    entry = ctl.call("approve", image=image, approved=not undo)
    ctl.show(entry, f"{entry['imageFile']}: approved={str(entry['approved']).lower()}")
