"""`plasmactl dataset`: the LoRA's training set (DATA-01..04), from a reference sheet to the gate.

suggest, build, add, repeats, check and sheet work on this machine's files through
`plasmad.dataset` directly: the dataset folder is the artist's own, and none of it needs ComfyUI or
the GPU, so they work without a daemon. `reg` generates images, so it goes through plasmad's queue
(`dataset_reg`) and then follows the jobs it queued.

`plasmad.dataset` (Pillow, pydantic) is imported by the commands that use it, not here: `plasmactl
--help` and the daemon's commands do not pay for it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from plasmactl.context import Ctl, json_option, pass_ctl
from plasmactl.follow import StatusLine, follow
from plasmactl.output import Exit, bar, emit_json, fail, fail_error
from plasmad.core import limits
from plasmad.core.config import Config
from plasmad.core.errors import PlasmaError
from plasmad.core.states import JobStatus

if TYPE_CHECKING:
    from plasmad.dataset import BuildResult

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

PathArg = click.Path(path_type=Path)
FileArg = click.Path(path_type=Path, dir_okay=False)


def trigger_option(f: F) -> F:
    return click.option(
        "--trigger",
        envvar="PLASMA_TRIGGER_WORD",
        default=Config.trigger_word,  # plasmad's own default, the one plasmad.dataset uses too
        show_default=True,
        help="Trigger word, first in every caption (env PLASMA_TRIGGER_WORD).",
    )(f)


def repeats_option(f: F) -> F:
    return click.option(
        "--repeats",
        type=click.IntRange(min=1),
        help="kohya repeats (default: derived so that images x repeats is about 300).",
    )(f)


def _local(ctl: Ctl, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a library call here; its PlasmaError becomes one stderr line and the usual exit code."""
    try:
        return fn(*args, **kwargs)
    except PlasmaError as err:
        fail_error(err)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"{where}{exc.strerror or exc}", Exit.UNAVAILABLE)


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


@click.group()
def dataset() -> None:
    """Prepare the LoRA's training set: crops, captions, flips, reg images, the check.

    \b
    suggest -> edit the crops file -> build -> add ... -> reg -> check -> sheet
    """


@dataset.command()
@click.argument("sheet", type=FileArg)
@click.option(
    "--out",
    type=FileArg,
    help="The crops file (default: <sheet>.crops.json beside the sheet). Never replaced: "
    "when it exists, the next free name (-2, -3 ...) is used.",
)
@json_option
@pass_ctl
def suggest(ctl: Ctl, sheet: Path, out: Path | None) -> None:
    """Propose face, bust and full-body crops for every figure on a reference sheet.

    The figures are found on the sheet's plain background. The crops file it writes has a TODO
    pose for every crop: describe them (and keep, move or delete boxes), then `dataset build`.
    """
    from plasmad import dataset as ds

    target = out if out is not None else ds.default_spec_path(sheet)
    suggestion = _local(ctl, ds.suggest_crops, sheet, target.parent)
    written = _local(ctl, ds.write_spec, suggestion.spec, target)
    if ctl.json:
        emit_json({
            "spec": str(written),
            "sheet": str(sheet),
            "background": ds.colour_hex(suggestion.background),
            "figures": [list(f.box) for f in suggestion.figures],
            "crops": len(suggestion.spec.crops),
            "warnings": suggestion.warnings,
        })
        return
    _warn(suggestion.warnings)
    click.echo(
        f"{written}: {len(suggestion.spec.crops)} crops for {len(suggestion.figures)} figure(s) "
        f"on {ds.colour_hex(suggestion.background)}"
    )
    click.echo(f"next: describe each {ds.PLACEHOLDER} pose, then: plasmactl dataset build {written} DATASET")


def _print_build(result: BuildResult) -> None:
    _warn(result.warnings)
    was = "" if result.previous_repeats in (None, result.repeats) else f", was {result.previous_repeats}"
    per_epoch = result.images * result.repeats
    click.echo(
        f"{result.image_dir}: {result.originals} originals, {result.images} images, "
        f"repeats {result.repeats}{was} ({result.images} x {result.repeats} = {per_epoch})"
    )
    counts = {action: sum(1 for f in result.files if f.action == action) for action in
              ("written", "kept", "skipped")}
    click.echo(", ".join(f"{n} {action}" for action, n in counts.items()))
    for f in result.files:
        if f.action == "skipped":
            click.echo(f"  no flip: {f.path.name} ({f.note})")


@dataset.command()
@click.argument("crops", type=FileArg)
@click.argument("dataset_dir", metavar="DATASET", type=PathArg)
@repeats_option
@trigger_option
@json_option
@pass_ctl
def build(ctl: Ctl, crops: Path, dataset_dir: Path, repeats: int | None, trigger: str) -> None:
    """Cut the crops of a crops file, normalise them to 512x512, caption and flip them.

    Running it again with the same file keeps every file; nothing is ever overwritten.
    """
    from plasmad import dataset as ds

    result = _local(ctl, ds.build_from_sheet, crops, dataset_dir, trigger, repeats)
    ctl.show(result.to_dict(), lambda: _print_build(result))


@dataset.command()
@click.argument("dataset_dir", metavar="DATASET", type=PathArg)
@click.argument("image", type=FileArg)
@click.option("--caption", help='"framing, pose/action, background" (the trigger word is added).')
@click.option(
    "--caption-file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Read the caption from this file instead.",
)
@click.option("--no-flip", is_flag=True, help="No mirrored copy (the asymmetric detail is the subject).")
@click.option("--name", help="File name in the dataset (default: from the image's name).")
@click.option("--background", help="Padding colour, e.g. '#ffffff' (default: read from the image's border).")
@repeats_option
@trigger_option
@json_option
@pass_ctl
def add(
    ctl: Ctl,
    dataset_dir: Path,
    image: Path,
    caption: str | None,
    caption_file: Path | None,
    no_flip: bool,
    name: str | None,
    background: str | None,
    repeats: int | None,
    trigger: str,
) -> None:
    """Add one image from elsewhere (e.g. the old pipeline's output), normalised and captioned."""
    from plasmad import dataset as ds

    if (caption is None) == (caption_file is None):
        fail("give the caption with --caption or --caption-file (one of them)", Exit.USAGE)
    if caption_file is not None:
        try:
            caption = caption_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"--caption-file: cannot read {caption_file}: {exc}", Exit.USAGE)
    assert caption is not None
    bg = _local(ctl, ds.parse_colour, background, "background") if background else None
    result = _local(
        ctl, ds.add_image, dataset_dir, image, caption, trigger,
        name=name, flip=not no_flip, background=bg, repeats=repeats,
    )
    ctl.show(result.to_dict(), lambda: _print_build(result))


@dataset.command()
@click.argument("dataset_dir", metavar="DATASET", type=PathArg)
@repeats_option
@trigger_option
@json_option
@pass_ctl
def repeats(ctl: Ctl, dataset_dir: Path, repeats: int | None, trigger: str) -> None:
    """Rename the image folder for the images it holds now (after removing files by hand)."""
    from plasmad import dataset as ds

    result = _local(ctl, ds.update_repeats, dataset_dir, trigger, repeats)
    ctl.show(result.to_dict(), lambda: _print_build(result))


@dataset.command()
@click.argument("dataset_dir", metavar="DATASET", type=PathArg)
@click.option(
    "--reg", "reg_dir", type=PathArg,
    help="The regularisation set (kohya's --reg_data_dir): must exist and pass. "
    "Default: DATASET-reg, checked when it exists.",
)
@trigger_option
@json_option
@pass_ctl
def check(ctl: Ctl, dataset_dir: Path, reg_dir: Path | None, trigger: str) -> None:
    """The gate before training: prints a summary table; exits 9 when the dataset fails."""
    from plasmad import dataset as ds

    report = _local(
        ctl, ds.check_dataset, dataset_dir, trigger,
        reg_data_dir=reg_dir, reg_required=True if reg_dir is not None else None,
    )
    ctl.show(report.to_dict(), lambda: click.echo(report.format_table()))
    if not report.ok:
        fail(f"{dataset_dir} fails the check: {len(report.problems)} problem(s)", Exit.CHECK_FAILED)


@dataset.command()
@click.argument("dataset_dir", metavar="DATASET", type=PathArg)
@click.option(
    "--out", type=FileArg,
    help="Where to write it (must not exist). Default: DATASET/contact-sheet.png, or the next free name.",
)
@json_option
@pass_ctl
def sheet(ctl: Ctl, dataset_dir: Path, out: Path | None) -> None:
    """A contact sheet: one PNG with every image of the dataset and its caption."""
    from plasmad import dataset as ds

    path = _local(ctl, ds.contact_sheet, dataset_dir, out)
    ctl.show({"sheet": str(path)}, str(path))


@dataset.command()
@click.argument("dataset_dir", metavar="DATASET", type=PathArg)
@click.option("--count", type=int, default=limits.REG_DEFAULT_IMAGES, show_default=True,
    help=f"Images in the set ({limits.REG_MIN_IMAGES}-{limits.REG_MAX_IMAGES}).")
@click.option("--class", "class_name", help="The class the reg images show: 1_<class>/ (default character).")
@click.option("--seed", type=int, help="Base seed: image i gets seed + i (default 1000).")
@click.option(
    "--width",
    type=int,
    help=f"Width (default {limits.DATASET_IMAGE_SIZE}, like the training images).",
)
@click.option("--height", type=int, help=f"Height (default {limits.DATASET_IMAGE_SIZE}).")
@click.option("--steps", type=int, help=f"Sampler steps (default {limits.DEFAULT_STEPS}).")
@click.option("--checkpoint", help="Base checkpoint (default: PLASMA_CHECKPOINT). Never a LoRA.")
@click.option(
    "--allow-small",
    is_flag=True,
    help=f"Allow fewer than {limits.REG_MIN_IMAGES} images (tests, demos).",
)
@click.option("--no-wait", is_flag=True, help="Queue the images and print the job ids; do not follow them.")
@json_option
@pass_ctl
def reg(
    ctl: Ctl,
    dataset_dir: Path,
    count: int,
    class_name: str | None,
    seed: int | None,
    width: int | None,
    height: int | None,
    steps: int | None,
    checkpoint: str | None,
    allow_small: bool,
    no_wait: bool,
) -> None:
    """Generate the regularisation set through plasmad: base model, no LoRA, a generic prompt.

    The images go to DATASET-reg/1_<class>/ with their captions. Resumable: run it again and only
    the missing images are generated; existing ones are never touched. Ctrl-C stops watching, not
    the jobs (`plasmactl jobs`, `plasmactl cancel`).
    """
    options = {"className": class_name, "seed": seed, "width": width, "height": height,
               "steps": steps, "checkpoint": checkpoint}
    body: dict[str, Any] = {
        # The daemon resolves no relative paths: it runs elsewhere than this shell.
        "datasetDir": str(dataset_dir.expanduser().absolute()),
        "count": count,
        "allowSmall": allow_small,
        **{k: v for k, v in options.items() if v is not None},
    }
    queued = ctl.call("dataset_reg", **body)
    if no_wait:
        if ctl.json:
            emit_json(queued)
        else:
            click.echo(_queued_line(queued))
            for entry in queued["jobs"]:
                click.echo(entry["id"])
        return
    if not ctl.json:
        click.echo(_queued_line(queued), err=True)
    try:
        summary = _follow(ctl, queued)
    except KeyboardInterrupt:
        click.echo("\nstopped watching; plasmad keeps generating (run this again to follow it)", err=True)
        raise
    done, total, made = summary["present"], summary["count"], summary["generated"]
    ctl.show(summary, f"{summary['regDir']}: {done}/{total} reg images ({made} generated now, "
                      f"{summary['existing']} were there)")
    bad = [j for j in summary["jobs"] if j["status"] != JobStatus.SUCCEEDED]
    if bad:
        if not ctl.json:
            for j in bad:
                click.echo(f"{Path(j['image']).name}: {j['status']}: {j.get('error') or ''}".rstrip(": "),
                           err=True)
        all_cancelled = all(j["status"] == JobStatus.CANCELLED for j in bad)
        fail(f"{len(bad)} reg image(s) not made; run it again to retry them",
             Exit.CANCELLED if all_cancelled else Exit.JOB_FAILED)


def _queued_line(queued: dict[str, Any]) -> str:
    new, old = len(queued["queued"]), len(queued["alreadyQueued"])
    if not queued["jobs"]:
        return f"{queued['regDir']}: all {queued['count']} reg images are there; nothing to generate"
    also = f", {old} already queued" if old else ""
    return f"{queued['regDir']}: {queued['existing']}/{queued['count']} there; {new} queued{also}"


def _interactive() -> bool:
    """A terminal redraws one bar in place; logs and pipes get one line per image instead."""
    return sys.stderr.isatty()


def _follow(ctl: Ctl, queued: dict[str, Any]) -> dict[str, Any]:
    """Follow the reg jobs to the end (they run in queue order, each through the one wait loop),
    with a done/total bar."""
    total, done = int(queued["count"]), int(queued["existing"])
    show = not ctl.json
    line = StatusLine(show and _interactive())
    results: list[dict[str, Any]] = []
    for entry in queued["jobs"]:
        name = Path(entry["image"]).name

        def redraw(job: dict[str, Any], name: str = name, done: int = done) -> None:
            progress = job.get("progress")
            now = f"step {progress['step']}/{progress['total']}" if progress else job["status"]
            line.show(f"reg {bar(done, total)}  {name} {now}")

        job = follow(ctl, entry["id"], redraw)
        succeeded = job["status"] == JobStatus.SUCCEEDED
        done += succeeded
        results.append({
            "id": job["id"], "index": entry["index"], "image": entry["image"], "status": job["status"],
            "error": (job.get("error") or {}).get("message"),
        })
        line.erase()
        if show and not line.enabled:
            click.echo(f"reg {bar(done, total)}  {name} {job['status']}", err=True)
    if line.enabled:
        click.echo(f"reg {bar(done, total)}", err=True)
    return {
        "regDir": queued["regDir"],
        "count": total,
        "existing": queued["existing"],
        "generated": sum(1 for r in results if r["status"] == JobStatus.SUCCEEDED),
        "present": done,
        "jobs": results,
    }
