"""plasmactl: a thin click CLI over plasmad's Unix socket.

Every command takes `--json` for scripts; people get short lines and tables. Results go to
stdout, diagnostics to stderr; each failure has its own exit code (plasmactl.output.Exit).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from plasmactl.client import DaemonClient, DaemonUnavailable
from plasmactl.output import Exit, bar, emit_json, fail, fail_error, table
from plasmad.core.config import client_socket_path
from plasmad.core.errors import PlasmaError

F = TypeVar("F", bound=Callable[..., Any])
FINISHED = ("succeeded", "failed", "cancelled", "interrupted")


@dataclass
class Ctl:
    # A default, because an eager `plasmactl --json ...` creates the Ctl before `cli` sets the path.
    socket_path: Path = Path()
    json: bool = False

    def call(self, method: str, **params: Any) -> Any:
        try:
            with DaemonClient(self.socket_path) as client:
                return client.call(method, **params)
        except DaemonUnavailable as exc:
            fail(str(exc), Exit.NO_DAEMON)
        except PlasmaError as err:
            if self.json:
                emit_json({"error": err.to_dict()})
            fail_error(err)

    def show(self, data: Any, text: str | Callable[[], None]) -> None:
        """A command's result: `data` as JSON under --json; otherwise `text` (a line to echo, or a
        function that prints the result for people, called only then)."""
        if self.json:
            emit_json(data)
        elif callable(text):
            text()
        else:
            click.echo(text)


pass_ctl = click.make_pass_decorator(Ctl)


def json_option(f: F) -> F:
    """`--json` on every command, also after the subcommand's name."""

    def set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.ensure_object(Ctl).json = True

    return click.option(
        "--json",
        "json_out",
        is_flag=True,
        expose_value=False,
        callback=set_json,
        is_eager=True,
        help="Machine-readable output.",
    )(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    default=None,
    help="plasmad's socket (default: PLASMA_SOCKET or the per-user default).",
)
@json_option
@click.pass_context
def cli(ctx: click.Context, socket_path: Path | None) -> None:
    """Talk to plasmad, the Plasma generation daemon."""
    ctl = ctx.ensure_object(Ctl) if ctx.obj else Ctl(socket_path=Path())
    ctl.socket_path = socket_path or client_socket_path()
    ctx.obj = ctl


@cli.command()
@json_option
@pass_ctl
def health(ctl: Ctl) -> None:
    """Is ComfyUI up, on which device, and what holds the GPU."""
    h = ctl.call("health")
    if ctl.json:
        emit_json(h)
        return
    info = h.get("comfyuiInfo", {})
    click.echo(f"plasmad:  ok ({h['queue']['queued']} queued, running: {h['queue']['running'] or '-'})")
    if h["comfyui"]:
        devices = ", ".join(f"{d['name']} ({d['type']})" for d in info.get("devices", []))
        click.echo(f"ComfyUI:  ok {info.get('version')} at {info.get('url')} on {devices}")
        click.echo(
            f"mps:      {'yes' if h['mps'] else 'no'}; fp32 VAE: {'yes' if info.get('fp32Vae') else 'no'}"
        )
    else:
        click.echo(f"ComfyUI:  DOWN ({info.get('error')})")
    click.echo(f"GPU:      {h['gpu']['heldBy'] or 'free'}")
    for warning in h.get("warnings", []):
        click.echo(f"warning:  {warning}", err=True)


def generation_options(f: F) -> F:
    """The generation parameters shared by `submit` and `generate`."""
    options = [
        click.option("--negative", "negative_prompt", help="Negative prompt."),
        click.option("--lora", "lora_id", help="LoRA file in ComfyUI's models/loras (default: base model)."),
        click.option("--lora-strength", type=float, help="LoRA strength (default 1.0)."),
        click.option("--checkpoint", help="Checkpoint file (default: PLASMA_CHECKPOINT)."),
        click.option("--seed", type=int, help="Seed (default: drawn and recorded)."),
        click.option("--steps", type=int, help="Sampler steps (default 20)."),
        click.option("--cfg", type=float, help="CFG scale (default 7)."),
        click.option("--sampler", help="Sampler (default euler_ancestral)."),
        click.option("--scheduler", help="Scheduler (default normal)."),
        click.option("--width", type=int, help="Width, at most 512."),
        click.option("--height", type=int, help="Height, at most 768."),
        click.option(
            "--pose",
            "pose_image_path",
            type=click.Path(dir_okay=False),
            help="Pose image: selects the ControlNet OpenPose workflow.",
        ),
        click.option("--strength", "controlnet_strength", type=float, help="ControlNet strength 0.4-0.9."),
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


@cli.command()
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
        _finish(ctl, job["id"])
    else:
        ctl.show(job, job["id"])


@cli.command()
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
    _finish(ctl, job["id"])


@cli.command()
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
    if job.get("seed") is not None:
        click.echo(f"seed: {job['seed']}")
    for path in job.get("outputs", []):
        click.echo(f"output: {path}")
    if job.get("error"):
        click.echo(f"error: {job['error']['message']}")


@cli.command()
@click.argument("job_id")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@json_option
@pass_ctl
def wait(ctl: Ctl, job_id: str, timeout: float | None) -> None:
    """Wait for a job with a progress bar; prints the image path."""
    _finish(ctl, job_id, timeout)


def _finish(ctl: Ctl, job_id: str, timeout: float | None = None) -> None:
    job = _wait(ctl, job_id, timeout)
    if ctl.json:
        emit_json(job)
    if job["status"] == "succeeded":
        if not ctl.json:
            for path in job.get("outputs", []):
                click.echo(path)
        return
    message = (job.get("error") or {}).get("message", job["status"])
    fail(
        f"job {job_id} {job['status']}: {message}",
        Exit.CANCELLED if job["status"] == "cancelled" else Exit.JOB_FAILED,
    )


def _wait(ctl: Ctl, job_id: str, timeout: float | None) -> dict[str, Any]:
    deadline = None if timeout is None else time.monotonic() + timeout
    show = sys.stderr.isatty() and not ctl.json
    last = ""
    while True:
        job: dict[str, Any] = ctl.call("status", id=job_id)
        if job["status"] in FINISHED:
            if show and last:
                click.echo("", err=True)
            return job
        progress = job.get("progress")
        if job["status"] == "queued":
            line = f"{job_id} queued: waiting for {job.get('waitingFor') or 'the worker'}"
        elif progress:
            line = f"{job_id} {bar(progress['step'], progress['total'])}"
        else:
            line = f"{job_id} running"
        if show and line != last:
            click.echo("\r\033[K" + line, err=True, nl=False)
            last = line
        if deadline is not None and time.monotonic() > deadline:
            fail(f"job {job_id} still {job['status']} after {timeout:.0f} s", Exit.UNAVAILABLE)
        time.sleep(0.25)


@cli.command()
@click.option(
    "--status",
    "status_filter",
    type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]),
)
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


@cli.command()
@click.argument("job_id")
@json_option
@pass_ctl
def cancel(ctl: Ctl, job_id: str) -> None:
    """Cancel a queued or running job."""
    job = ctl.call("cancel", id=job_id)
    ctl.show(job, f"{job['id']} {job['status']}")


@cli.command()
@click.argument("image")
@click.option("--undo", is_flag=True, help="Set approved back to false.")
@json_option
@pass_ctl
def approve(ctl: Ctl, image: str, undo: bool) -> None:
    """Mark a page image (chXX_pNNN_vN) approved in the generation log."""
    entry = ctl.call("approve", image=image, approved=not undo)
    ctl.show(entry, f"{entry['imageFile']}: approved={str(entry['approved']).lower()}")


@cli.command()
@json_option
@pass_ctl
def shutdown(ctl: Ctl) -> None:
    """Stop plasmad (the same orderly stop as SIGTERM)."""
    ctl.show(ctl.call("shutdown"), "plasmad is stopping")


# Last: these modules add their commands to `cli` (doctor, bench, logs; `service`; the `dataset`
# group), building on Ctl and json_option above.
from plasmactl import operations_cmds, service_cmds  # noqa: E402, F401, I001
import plasmactl.dataset_cmds  # noqa: E402, F401
from plasmactl import train_cmds  # noqa: E402, F401  (train, train-status, train-cancel, loras, lora)


def main() -> None:
    cli(prog_name="plasmactl")
