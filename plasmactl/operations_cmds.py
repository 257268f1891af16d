"""Operating plasmad: `plasmactl health`, `doctor`, `bench`, `logs`, `shutdown`.

The daemon does the work (it has the configuration, ComfyUI and the queue); these commands render
it. `doctor` alone also runs without a daemon: from this shell's settings, in this process (it
imports the daemon's checks then, and only then: `plasmactl --help` stays light).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from plasmactl.client import DaemonClient, DaemonUnavailable
from plasmactl.context import Ctl, json_option, pass_ctl
from plasmactl.follow import wait_job
from plasmactl.output import Exit, emit_json, fail, fail_error, table
from plasmad.core import limits
from plasmad.core.config import ConfigError, load_config
from plasmad.core.errors import PlasmaError
from plasmad.core.states import FINISHED_STATES

_COLOURS = {"ok": "green", "warn": "yellow", "fail": "red"}


# --- health, shutdown -------------------------------------------------------------------------------


@click.command()
@json_option
@pass_ctl
def health(ctl: Ctl) -> None:
    """Is ComfyUI up, on which device, and what holds the GPU. Exit 6 when ComfyUI does not answer."""
    h = ctl.call("health")
    ctl.show(h, lambda: _print_health(h))
    if not h["comfyui"]:
        error = (h.get("comfyuiInfo") or {}).get("error")
        fail(f"ComfyUI does not answer{f' ({error})' if error else ''}", Exit.UNAVAILABLE)


def _print_health(h: dict[str, Any]) -> None:
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
    if h.get("unetDtype"):  # PLASMA_UNET_DTYPE, as resolved for ComfyUI's device
        click.echo(f"UNet:     {h['unetDtype']['value']} ({h['unetDtype']['why']})")
    click.echo(f"GPU:      {h['gpu']['heldBy'] or 'free'}")
    for warning in h.get("warnings", []):
        click.echo(f"warning:  {warning}", err=True)


@click.command()
@json_option
@pass_ctl
def shutdown(ctl: Ctl) -> None:
    """Stop plasmad (the same orderly stop as SIGTERM)."""
    ctl.show(ctl.call("shutdown"), "plasmad is stopping")


# --- doctor -----------------------------------------------------------------------------------------


def _doctor_without_daemon(why: str) -> dict[str, Any]:
    import asyncio

    from plasmad.operations import doctor as doctor_checks  # aiohttp, pydantic: only when needed

    click.echo(f"plasmactl: {why}; checking from this shell's settings instead", err=True)
    first = doctor_checks.Check(
        "plasmad.running",
        "INFRA-01",
        "plasmad running",
        "warn",
        why,
        "start it: plasmad (or `plasmactl service install` to have it start at login)",
    )
    try:
        cfg = load_config()
    except ConfigError as exc:
        bad = doctor_checks.Check(
            "plasmad.core.config",
            "INFRA-01",
            "plasmad's settings",
            "fail",
            str(exc),
            f"fix {exc.setting} (the environment or PLASMA_CONFIG's file)",
        )
        return {"ok": False, "counts": {"ok": 0, "warn": 1, "fail": 1}, "checks": [vars(first), vars(bad)]}
    return asyncio.run(doctor_checks.standalone(cfg, [first]))


def _print_checks(report: dict[str, Any]) -> None:
    for check in report["checks"]:
        status = check["status"]
        label = click.style(f"{status:<4}", fg=_COLOURS.get(status), bold=status == "fail")
        click.echo(f"{label}  {check['requirement']:<8}  {check['title']:<28}  {check['detail']}")
        if check.get("fix") and status != "ok":
            click.echo(f"{'':<4}  {'':<8}  {'':<28}  fix: {check['fix']}")
    c = report["counts"]
    click.echo(f"\n{c['ok']} ok, {c['warn']} warn, {c['fail']} fail")


@click.command()
@json_option
@pass_ctl
def doctor(ctl: Ctl) -> None:
    """Check every INFRA requirement: ok / warn / fail, each with its fix. Exit 9 if any fails."""
    try:
        with DaemonClient(ctl.socket_path, timeout=90.0) as client:
            report = client.call("doctor")
    except DaemonUnavailable as exc:
        report = _doctor_without_daemon(str(exc))
    except PlasmaError as err:
        fail_error(err)
    ctl.show(report, lambda: _print_checks(report))
    if not report["ok"]:
        sys.exit(int(Exit.CHECK_FAILED))


# --- bench ------------------------------------------------------------------------------------------


def _print_result(r: dict[str, Any]) -> None:
    device = r.get("device") or {}
    versions = r.get("versions") or {}
    click.echo(
        f"benchmark {r['id']} (job {r['jobId']}): {r['width']}x{r['height']}, {r['steps']} steps, "
        f"{r['sampler']}, {r.get('checkpoint')}"
    )
    if r["status"] != "succeeded":
        click.echo(f"  {r['status']}: {r.get('error')}")
    else:
        click.echo(f"  seconds per image:      {r['secondsPerImage']:.1f} s")
        rate = r.get("itPerSec")
        click.echo(
            f"  iterations per second:  {rate:.2f} it/s"
            if rate is not None
            else "  iterations per second:  -"
        )
    if r.get("barApplies"):
        verdict = "PASS" if r.get("passed") else "FAIL"
        click.echo(
            f"  INFRA-04 bar:           {verdict} (under {r['barSeconds']:.0f} s for "
            f"{limits.BENCH_WIDTH}x{limits.BENCH_HEIGHT}, {limits.BENCH_STEPS} steps)"
        )
    else:
        click.echo(f"  INFRA-04 bar:           not judged: {r.get('note')}")
    click.echo(
        f"  device:                 {device.get('name', '?')} ({device.get('type', '?')}); "
        f"ComfyUI {versions.get('comfyui', '?')}, PyTorch {versions.get('pytorch', '?')}, "
        f"UNet {r.get('unetDtype')}"
    )


@click.command()
@click.option(
    "--width",
    type=int,
    help=f"Width (default {limits.BENCH_WIDTH}: the bar's; other values are not judged).",
)
@click.option("--height", type=int, help=f"Height (default {limits.BENCH_HEIGHT}).")
@click.option("--steps", type=int, help=f"Sampler steps (default {limits.BENCH_STEPS}).")
@click.option("--checkpoint", help="Checkpoint (default: PLASMA_CHECKPOINT).")
@click.option("--history", is_flag=True, help="List the recorded results instead of running one.")
@json_option
@pass_ctl
def bench(
    ctl: Ctl, width: int | None, height: int | None, steps: int | None, checkpoint: str | None, history: bool
) -> None:
    """INFRA-04: one 512x512, 20-step euler_ancestral image through the queue; pass under 2 minutes.

    Prints seconds per image and iterations per second; every result is kept with the device and
    versions (`--history`). Exit 9 when the bar is missed.
    """
    if history:
        listing = ctl.call("bench_results", limit=20)
        if ctl.json:
            emit_json(listing)
            return
        rows = [
            [
                r["id"],
                r["at"],
                f"{r['width']}x{r['height']}x{r['steps']}",
                r["status"],
                f"{r['secondsPerImage']:.1f}" if r.get("secondsPerImage") is not None else "-",
                f"{r['itPerSec']:.2f}" if r.get("itPerSec") is not None else "-",
                {True: "pass", False: "FAIL", None: "-"}[r.get("passed")],
                (r.get("device") or {}).get("type", "?"),
            ]
            for r in listing["results"]
        ]
        click.echo(table(rows, ["ID", "AT", "SIZE", "STATUS", "S/IMAGE", "IT/S", "BAR", "DEVICE"]))
        return
    body: dict[str, Any] = {}
    if width is not None or height is not None:
        body["resolution"] = {"width": width or limits.BENCH_WIDTH, "height": height or limits.BENCH_HEIGHT}
    if steps is not None:
        body["steps"] = steps
    if checkpoint is not None:
        body["checkpoint"] = checkpoint
    started = ctl.call("bench", **body)
    if started.get("note"):
        click.echo(f"plasmactl: note: {started['note']}", err=True)
    if not ctl.json:
        click.echo(f"benchmark {started['id']}: job {started['jobId']} queued", err=True)
    wait_job(ctl, started["jobId"])
    # The daemon records the result just after the job ends (its own watcher): a moment at most.
    deadline = time.monotonic() + 30
    while (result := ctl.call("bench_results", id=started["id"]))["status"] == "running":
        if time.monotonic() > deadline:
            fail(f"benchmark {started['id']} was not recorded", Exit.INTERNAL)
        time.sleep(0.25)
    ctl.show(result, lambda: _print_result(result))
    if result["status"] != "succeeded":
        sys.exit(int(Exit.CANCELLED if result["status"] == "cancelled" else Exit.JOB_FAILED))
    if result.get("passed") is False:
        sys.exit(int(Exit.CHECK_FAILED))


# --- logs -------------------------------------------------------------------------------------------


@click.command()
@click.argument("job", required=False)
@click.option("-n", "--lines", "lines", type=int, default=50, show_default=True, help="How many lines.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what is appended (Ctrl-C stops).")
@json_option
@pass_ctl
def logs(ctl: Ctl, job: str | None, lines: int, follow: bool) -> None:
    """The daemon's log, or JOB's (a job or training id; `comfyui`: a managed ComfyUI's output)."""
    params: dict[str, Any] = {"lines": lines}
    if job:
        params["job"] = job
    answer = ctl.call("logs", **params)
    if ctl.json:
        emit_json(answer)
    else:
        if not answer["exists"]:
            note = f": {answer['note']}" if answer.get("note") else ""
            click.echo(f"plasmactl: {answer['path']} does not exist yet{note}", err=True)
        for line in answer["lines"]:
            click.echo(line)
    if not follow:
        return
    offset = answer["offset"]
    is_job = job is not None and job != "comfyui"
    try:
        while True:
            time.sleep(0.5)
            more = ctl.call("logs", offset=offset, **params)
            if more["rotated"] and not ctl.json:
                click.echo("plasmactl: (the log was rotated)", err=True)
            offset = more["offset"]
            if more["lines"]:
                if ctl.json:
                    emit_json(more)
                else:
                    for line in more["lines"]:
                        click.echo(line)
            if (
                is_job
                and not more["lines"]
                and ctl.call("status", id=job)["status"] in FINISHED_STATES
            ):
                return  # the job is over and its log has been read to the end
    except KeyboardInterrupt:
        return
