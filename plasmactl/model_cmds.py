"""`plasmactl models`: the checkpoints, LoRAs and ControlNets a request may name, as the daemon
finds them (ComfyUI's folders, symlinks followed, extra_model_paths.yaml in ComfyUI's order)."""

from __future__ import annotations

from typing import Any

import click

from plasmactl.context import Ctl, json_option, pass_ctl
from plasmactl.output import emit_json, table

_SECTIONS = (("checkpoints", "checkpoints"), ("loras", "LoRAs"), ("controlnets", "ControlNets"))
_FOLDER_KEYS = {"checkpoints": "checkpoints", "loras": "loras", "controlnets": "controlnet"}


@click.command()
@json_option
@pass_ctl
def models(ctl: Ctl) -> None:
    """The checkpoints, LoRAs and ControlNets ComfyUI lists: name, size, SD 1.5 or why not, folder.

    `*` marks the defaults (PLASMA_CHECKPOINT, PLASMA_CONTROLNET)."""
    answer = ctl.call("models")
    if ctl.json:
        emit_json(answer)
        return
    defaults = {answer.get("defaultCheckpoint"), answer.get("defaultControlnet")}
    for key, title in _SECTIONS:
        searched = answer["folders"].get(_FOLDER_KEYS[key], [])
        click.echo(f"{title} (searched in this order: {', '.join(searched) or '-'})")
        entries = answer[key]
        if not entries:
            click.echo("  (none)\n")
            continue
        rows = [_row(e, e["name"] in defaults) for e in entries]
        shown = table(rows, ["NAME", "SIZE", "SD 1.5", "FOLDER", "NOTE"])
        click.echo("  " + shown.replace("\n", "\n  ") + "\n")
    _notes(answer)


def _row(e: dict[str, Any], default: bool) -> list[str]:
    """NAME, SIZE, SD 1.5 (yes, no, or `.pth` for a ControlNet ComfyUI alone reads), FOLDER, NOTE."""
    if e["usable"]:
        sd15 = "yes" if e.get("sd15") else ".pth"
    else:
        sd15 = "no"
    notes = [] if e["usable"] else [f"{e.get('whyNot')}"]
    if e.get("link"):
        notes.append(f"link -> {e['link']}")
    if e.get("comfyui") is False:
        notes.append("the running ComfyUI does not list it")
    if e.get("shadows"):
        notes.append(f"also in {', '.join(e['shadows'])} (never loaded)")
    return [("* " if default else "  ") + e["name"], _size(e["bytes"]), sd15, e["folder"], "; ".join(notes)]


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _notes(answer: dict[str, Any]) -> None:
    if answer.get("configFiles"):
        click.echo(f"read: {', '.join(answer['configFiles'])}")
    for problem in answer.get("problems", []):
        click.echo(f"warning: {problem}", err=True)
    if answer.get("comfyuiError"):
        click.echo(f"warning: ComfyUI could not be asked what it lists: {answer['comfyuiError']}", err=True)
    if answer.get("plasmaCopies"):
        click.echo(f"({answer['plasmaCopies']} LoRA copies of plasmad's own samples are not shown)")
