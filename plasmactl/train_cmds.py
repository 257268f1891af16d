"""`plasmactl train`, `train-status`, `train-cancel`, `loras`, `lora samples`, `lora promote`: the
LoRA's training (LORA-01..03) through plasmad, which runs it under the GPU lock."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from plasmactl.context import Ctl, json_option, pass_ctl
from plasmactl.follow import StatusLine, follow, interactive
from plasmactl.output import Exit, bar, emit_json, fail, table
from plasmad.core import limits
from plasmad.core.states import ACTIVE_STATES, JobStatus


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} B"


def _checkpoint_label(c: dict[str, Any]) -> str:
    return f"step {c['step']}" if c.get("step") is not None else "final"


def progress_line(t: dict[str, Any]) -> str:
    """One line: the bar, the loss, the speed, the time left (what the live display redraws)."""
    if t["status"] == "queued":
        return f"{t['id']} queued: waiting for {t.get('waitingFor') or 'the worker'}"
    parts = [f"{t['id']} {bar(t.get('step') or 0, t['total'])}"]
    if t.get("loss") is not None:
        parts.append(f"loss {t['loss']:.4f}")
    if t.get("secPerStep") is not None:
        parts.append(f"{t['secPerStep']:.2f} s/step")
    if t["status"] == "running":
        parts.append(f"{_duration(t.get('etaSeconds'))} left")
    else:
        parts.append(t["status"])
    return "  ".join(parts)


def _print_training(t: dict[str, Any]) -> None:
    click.echo(f"{t['id']}  {t['status']}  {t['trainer']}  {t['outputName']}")
    click.echo(f"progress:    {progress_line(t).split(' ', 1)[1]}")
    for c in t.get("checkpoints", []):
        state = "" if c["complete"] else "  (INCOMPLETE)"
        click.echo(f"checkpoint:  {_checkpoint_label(c):<10} {_size(c['bytes']):>9}  {c['path']}{state}")
    click.echo(f"log:         {t['logFile']}")
    if t.get("samples") and t["samples"].get("sheet"):
        click.echo(f"samples:     {t['samples']['sheet']}")
    if t.get("logTail"):
        click.echo("last lines:")
        for line in t["logTail"][-8:]:
            click.echo(f"  {line}")
    if t.get("reason") and t["status"] != JobStatus.SUCCEEDED:
        click.echo(f"reason:      {t['reason']}")
    if t.get("advice") and t["status"] != JobStatus.SUCCEEDED:
        click.echo(f"advice:      {t['advice']}")
    for warning in t.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)


def _follow(ctl: Ctl, training_id: str) -> dict[str, Any]:
    """Follow the training to its end (the one wait loop: a training reports its steps like any
    job), redrawing its progress line on a terminal at every step; its final status."""
    line = StatusLine(interactive(ctl))

    def redraw(_job: dict[str, Any]) -> None:
        if line.enabled:  # the loss, the speed and the time left are in the training's own view
            line.show(progress_line(ctl.call("train_status", id=training_id)))

    try:
        follow(ctl, training_id, redraw)
    finally:
        line.end()
    t: dict[str, Any] = ctl.call("train_status", id=training_id)
    return t


def _end(ctl: Ctl, t: dict[str, Any]) -> None:
    """After following: the result, and the exit code of how the training ended."""
    ctl.show(t, lambda: _print_training(t))
    if t["status"] == JobStatus.SUCCEEDED:
        return
    fail(
        f"training {t['id']} {t['status']}: {t.get('reason') or t['status']}",
        Exit.CANCELLED if t["status"] == JobStatus.CANCELLED else Exit.JOB_FAILED,
    )


@click.command()
@click.argument("dataset_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--name", "output_name", required=True, help="The LoRA's name (its file name, no suffix).")
@click.option(
    "--steps",
    type=int,
    help=f"Training steps (default {limits.TRAIN_DEFAULT_STEPS}; 800-1200 for 15-20 images).",
)
@click.option(
    "--resolution",
    type=int,
    help=f"Training resolution, {limits.MIN_SIZE}-{limits.TRAIN_MAX_RESOLUTION} (default "
    f"{limits.TRAIN_MAX_RESOLUTION}; kohya: steps of 64).",
)
@click.option(
    "--batch-size",
    "batch_size",
    type=int,
    help=f"Only {limits.BATCH_SIZE} is allowed on 16 GB (shown for clarity).",
)
@click.option(
    "--save-every",
    "save_every_steps",
    type=int,
    help=f"A checkpoint every N steps (default {limits.TRAIN_DEFAULT_SAVE_EVERY}).",
)
@click.option(
    "--reg",
    "reg_dataset_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Regularisation set (default: <dataset>-reg when it exists).",
)
@click.option("--lr", "learning_rate", type=float, help="Learning rate (default 1e-4).")
@click.option("--dim", "network_dim", type=int, help="network_dim (default 32).")
@click.option("--alpha", "network_alpha", type=float, help="network_alpha (default 16).")
@click.option("--seed", type=int, help="Training seed (default 42).")
@click.option("--follow", is_flag=True, help="Stay and show the progress until it ends.")
@json_option
@pass_ctl
def train(ctl: Ctl, /, dataset_dir: Path, output_name: str, follow: bool, **opts: Any) -> None:
    """Queue a LoRA training on DATASET_DIR (kohya's layout); prints its id."""
    names = {
        "batch_size": "batch_size",
        "save_every_steps": "saveEverySteps",
        "reg_dataset_dir": "regDatasetDir",
        "learning_rate": "learningRate",
        "network_dim": "networkDim",
        "network_alpha": "networkAlpha",
    }
    body: dict[str, Any] = {
        # The daemon resolves no relative paths: its working folder is not ours.
        "datasetDir": str(dataset_dir.expanduser().resolve()),
        "outputName": output_name,
    }
    for key, value in opts.items():
        if value is None:
            continue
        if key == "reg_dataset_dir":
            value = str(Path(value).expanduser().resolve())
        body[names.get(key, key)] = value
    t = ctl.call("train", **body)
    if follow:
        _end(ctl, _follow(ctl, t["id"]))
        return
    if ctl.json:
        emit_json(t)
        return
    click.echo(t["id"])
    for warning in t.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)


@click.command("train-status")
@click.argument("training_id")
@click.option("--once", is_flag=True, help="Print the status once, even while it runs.")
@click.option(
    "--wait", "wait_for_it", is_flag=True, help="Wait for the end; the exit code says how it ended."
)
@json_option
@pass_ctl
def train_status(ctl: Ctl, training_id: str, once: bool, wait_for_it: bool) -> None:
    """A training's state: step of total, loss, speed, time left, checkpoints, last log lines.

    On a terminal it follows a running training with a live progress bar (Ctrl-C stops watching,
    not the training)."""
    t = ctl.call("train_status", id=training_id)
    if wait_for_it:
        _end(ctl, _follow(ctl, training_id))
        return
    if t["status"] in ACTIVE_STATES and not once and interactive(ctl):
        try:
            t = _follow(ctl, training_id)
        except KeyboardInterrupt:
            return
    ctl.show(t, lambda: _print_training(t))


@click.command("train-cancel")
@click.argument("training_id")
@json_option
@pass_ctl
def train_cancel(ctl: Ctl, training_id: str) -> None:
    """Stop a training (SIGTERM to the trainer, SIGKILL after a grace); its checkpoints are kept."""
    t = ctl.call("train_cancel", id=training_id)
    kept = [c for c in t.get("checkpoints", []) if c["complete"]]
    ctl.show(t, f"{t['id']} {t['status']}; {len(kept)} checkpoint{'s' if len(kept) != 1 else ''} kept")


@click.command()
@json_option
@pass_ctl
def loras(ctl: Ctl) -> None:
    """The trainings, and the LoRAs ComfyUI can load."""
    answer = ctl.call("loras")
    if ctl.json:
        emit_json(answer)
        return
    rows = [
        [
            t["id"],
            t["status"],
            t["trainer"],
            t["outputName"],
            f"{t.get('step') or 0}/{t['total']}",
            ", ".join(_checkpoint_label(c) for c in t.get("checkpoints", []) if c["complete"]),
        ]
        for t in answer["trainings"]
    ]
    click.echo(table(rows, ["TRAINING", "STATUS", "TRAINER", "NAME", "STEP", "CHECKPOINTS"]))
    click.echo("")
    rows = [
        [
            lora["name"],
            {True: "yes", False: "no", None: "?"}[lora["comfyui"]],
            "yes" if lora["inFolder"] else "no",
        ]
        for lora in answer["loras"]
    ]
    click.echo(table(rows, ["LORA", "COMFYUI LISTS IT", "IN FOLDER"]))
    if answer.get("comfyuiError"):
        click.echo(f"warning: {answer['comfyuiError']}", err=True)


@click.group()
def lora() -> None:
    """Choose and publish a trained LoRA's checkpoint (LORA-02/03)."""


@lora.command("samples")
@click.argument("training_id")
@click.option(
    "--prompt", "prompts", multiple=True, help="A prompt (repeat; default: three on the trigger word)."
)
@click.option("--negative", "negative_prompt", help="Negative prompt.")
@click.option("--seed", type=int, help="Seed of the first prompt; prompt j uses seed + j (default 1234).")
@click.option("--steps", type=int, help=f"Sampler steps (default {limits.DEFAULT_STEPS}).")
@click.option("--width", type=int, help=f"Width, at most {limits.MAX_WIDTH}.")
@click.option("--height", type=int, help=f"Height, at most {limits.MAX_HEIGHT}.")
@click.option("--strength", "lora_strength", type=float, help="LoRA strength (default 1.0).")
@click.option("--base", "include_base", is_flag=True, help="Add a row without the LoRA, to compare.")
@click.option("--no-wait", "no_wait", is_flag=True, help="Queue the images and return.")
@json_option
@pass_ctl
def lora_samples(ctl: Ctl, /, training_id: str, prompts: tuple[str, ...], no_wait: bool, **opts: Any) -> None:
    """Draw every checkpoint with the same prompts and seeds; prints the contact sheet's path."""
    body: dict[str, Any] = {}
    if prompts:
        body["prompts"] = list(prompts)
    names = {
        "negative_prompt": "negativePrompt",
        "lora_strength": "loraStrength",
        "include_base": "includeBase",
    }
    for key, value in opts.items():
        if value is None or (key == "include_base" and not value) or key in ("width", "height"):
            continue
        body[names.get(key, key)] = value
    if opts.get("width") is not None or opts.get("height") is not None:
        body["resolution"] = {k: opts[k] for k in ("width", "height") if opts.get(k) is not None}
    answer = ctl.call("lora_samples", id=training_id, **body)
    if answer["state"] != "done" and not no_wait:
        answer = _follow_samples(ctl, training_id, answer)
    ctl.show(
        answer,
        answer.get("sheet")
        or f"{answer['done']} of {answer['total']} images drawn; run `lora samples {training_id}` again",
    )
    for failure in answer.get("failed", []):
        click.echo(f"warning: sample {failure['job']} failed: {failure['error']}", err=True)
    if answer.get("failed") and answer["state"] == "done":
        sys.exit(int(Exit.JOB_FAILED))


def _follow_samples(ctl: Ctl, training_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    """Follow the sample jobs to their end (in queue order, through the one wait loop) with a
    done/total bar; the answer once they all have (the contact sheet is drawn then)."""
    line = StatusLine(interactive(ctl))
    try:
        for job_id in [j for row in answer["rows"] for j in row["jobs"]]:
            line.show(f"{training_id} samples {bar(answer['done'], answer['total'])}")
            follow(ctl, job_id)
            answer = ctl.call("lora_samples_status", id=training_id)
            if answer["state"] == "done":
                break
    finally:
        line.end()
    return answer


@lora.command("promote")
@click.argument("training_id")
@click.option("--step", type=int, help="The checkpoint of this step (see train-status).")
@click.option("--final", is_flag=True, help="The final LoRA (the default when --step is not given).")
@click.option("--as", "name", help="File name in ComfyUI's loras folder (default: the training's --name).")
@json_option
@pass_ctl
def lora_promote(ctl: Ctl, training_id: str, step: int | None, final: bool, name: str | None) -> None:
    """Copy a checkpoint into ComfyUI's loras folder (never replacing a file there) and check that
    ComfyUI lists it."""
    if step is not None and final:
        fail("give --step or --final, not both", Exit.USAGE)
    body: dict[str, Any] = {}
    if step is not None:
        body["step"] = step
    if name is not None:
        body["name"] = name
    answer = ctl.call("lora_promote", id=training_id, **body)
    where = "already there" if answer["alreadyThere"] else "copied"
    ctl.show(answer, f"{answer['loraId']}: {where} ({answer['path']}); use it with --lora {answer['loraId']}")
    if answer.get("warning"):
        click.echo(f"warning: {answer['warning']}", err=True)
