"""`plasmactl reproduce`, `consistency`, `reproduction`: a page rendered again and compared with
itself, and same-seed renders compared with each other (issue 12; docs/reproduce.md)."""

from __future__ import annotations

import sys
from typing import Any

import click

from plasmactl.context import Ctl, json_option, pass_ctl
from plasmactl.follow import StatusLine, follow, interactive
from plasmactl.job_cmds import generation_options, request_from
from plasmactl.output import Exit, bar, emit_json, fail, table


def _crop(text: str | None) -> dict[str, int] | None:
    if text is None:
        return None
    parts = text.replace(" ", "").split(",")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        fail(f"--crop {text!r}: give x,y,width,height in pixels, e.g. 300,120,96,96", Exit.USAGE)
    x, y, w, h = (int(p) for p in parts)
    return {"x": x, "y": y, "width": w, "height": h}


def _follow_runs(ctl: Ctl, answer: dict[str, Any]) -> dict[str, Any]:
    """Follow every run's job to its end (the one wait loop); the record once compared."""
    line = StatusLine(interactive(ctl))
    try:
        for n, job_id in enumerate(answer["jobs"]):
            line.show(f"{answer['id']} runs {bar(n, len(answer['jobs']))}")
            follow(ctl, job_id)
        answer = ctl.call("reproduction", id=answer["id"])
    finally:
        line.end()
    return answer


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _print_runs(record: dict[str, Any]) -> None:
    rows = []
    for r in record.get("results", []):
        same = {True: "yes", False: "no", None: "-"}[r.get("identical")]
        diff = "-" if r.get("maxDiff") is None else str(r["maxDiff"])
        rows.append([f"run {r['run']}", r["status"], same, diff, _score(r.get("ssim")), r.get("note") or ""])
    click.echo(table(rows, ["RUN", "STATUS", "IDENTICAL", "MAX DIFF", "SSIM", "NOTE"]))


def _print_pending(record: dict[str, Any]) -> None:
    ended = f"{record['done']} of {record['total']} runs ended"
    click.echo(f"{ended}; the result later: plasmactl reproduction {record['id']}")


def _print_reproduction(record: dict[str, Any]) -> None:
    click.echo(f"{record['page']}: reproduction {record['id']}, {record['runs']} run(s)")
    rows = [[f["role"], f["file"], f["status"], (f.get("now") or f.get("recorded") or "")[:10]]
            for f in record.get("files", [])]
    if rows:
        click.echo(table(rows, ["ROLE", "FILE", "NOW", "AUTOV2"]))
    if record["state"] != "done":
        _print_pending(record)
        return
    _print_runs(record)
    lowest = _score(record.get("minSsim"))
    verdict = "pixel-identical" if record.get("identical") else f"not identical; lowest SSIM {lowest}"
    click.echo(f"result: {verdict}")
    click.echo(f"contact sheet: {record['sheet']}")


def _print_consistency(record: dict[str, Any]) -> None:
    region = ""
    if record.get("crop"):
        c = record["crop"]
        region = f", region x {c['x']} y {c['y']} {c['width']}x{c['height']}"
    click.echo(f"consistency {record['id']}: {record['runs']} runs, seed {record.get('seed')}{region}")
    if record["state"] != "done":
        _print_pending(record)
        return
    _print_runs(record)
    matrix = record.get("matrix") or []
    heads = [f"run {i + 1}" for i in range(len(matrix))]
    click.echo("SSIM matrix:")
    click.echo(table([[heads[i], *(_score(v) for v in row)] for i, row in enumerate(matrix)], ["", *heads]))
    click.echo(f"lowest SSIM: {_score(record.get('minSsim'))}")
    click.echo(f"contact sheet: {record['sheet']}")


def _show(ctl: Ctl, record: dict[str, Any], min_ssim: float | None) -> None:
    """The record (JSON or text); exit 1 if a run failed, 9 if a score is under --min-ssim."""
    printer = _print_reproduction if record["kind"] == "reproduce" else _print_consistency
    if ctl.json:
        emit_json(record)
    else:
        printer(record)
    if record["state"] != "done":
        return
    failed = [r for r in record.get("results", []) if r["status"] != "succeeded"]
    if failed:
        fail(f"{len(failed)} run(s) did not succeed: {failed[0].get('note')}", Exit.JOB_FAILED)
    lowest = record.get("minSsim")
    if min_ssim is not None and (lowest is None or lowest < min_ssim):
        click.echo(f"plasmactl: lowest SSIM {lowest} is under --min-ssim {min_ssim}", err=True)
        sys.exit(int(Exit.CHECK_FAILED))


_MIN_SSIM = click.option(
    "--min-ssim", type=click.FloatRange(0, 1), help="Exit 9 unless every run scores at least this SSIM."
)
_NO_WAIT = click.option("--no-wait", "no_wait", is_flag=True, help="Queue the runs and return.")


@click.command()
@click.argument("image")
@click.option("--runs", type=int, default=1, show_default=True, help="How many times to render it.")
@click.option("--force", is_flag=True, help="Run even though a fingerprinted file changed.")
@_MIN_SSIM
@_NO_WAIT
@json_option
@pass_ctl
def reproduce(ctl: Ctl, image: str, runs: int, force: bool, min_ssim: float | None, no_wait: bool) -> None:
    """Render a page (chXX_pNNN_vN) again from its stored workflow and compare with it.

    Refused (exit 5) if the checkpoint, LoRA, ControlNet model or a pose/init image is no longer the
    file that made the page, unless --force. The runs go to the state dir's reproductions/ folder.
    """
    answer = ctl.call("reproduce", image=image, runs=runs, force=force)
    if answer["state"] != "done" and not no_wait:
        answer = _follow_runs(ctl, answer)
    _show(ctl, answer, min_ssim)


@click.command()
@click.option("-p", "--prompt", required=True, help="The prompt.")
@generation_options
@click.option("--runs", type=int, default=3, show_default=True, help="How many same-seed renders.")
@click.option("--crop", "crop_text", help="Score only this region: x,y,width,height (e.g. the right bracer).")
@_MIN_SSIM
@_NO_WAIT
@json_option
@pass_ctl
def consistency(
    ctl: Ctl, /, prompt: str, runs: int, crop_text: str | None, min_ssim: float | None, no_wait: bool,
    **opts: Any,
) -> None:  # fmt: skip
    """Render one prompt several times with one seed and compare the renders (criterion 2)."""
    body: dict[str, Any] = {"prompt": prompt, **request_from(opts), "runs": runs}
    crop = _crop(crop_text)
    if crop is not None:
        body["crop"] = crop
    answer = ctl.call("consistency", **body)
    if answer["state"] != "done" and not no_wait:
        answer = _follow_runs(ctl, answer)
    _show(ctl, answer, min_ssim)


@click.command()
@click.argument("record_id")
@_MIN_SSIM
@json_option
@pass_ctl
def reproduction(ctl: Ctl, record_id: str, min_ssim: float | None) -> None:
    """Show a reproduction (r_...) or consistency check (c_...)."""
    _show(ctl, ctl.call("reproduction", id=record_id), min_ssim)
