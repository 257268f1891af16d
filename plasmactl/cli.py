"""plasmactl: a thin click CLI over plasmad's Unix socket.

Every command takes `--json` for scripts; people get short lines and tables. Results go to
stdout, diagnostics to stderr; each failure has its own exit code (plasmactl.output.Exit) and,
under --json, a JSON error object on stdout.

This module is the group and the list of its commands; the commands live in the *_cmds modules,
which share plasmactl.context and never import this one. Only click and plasmad's light core
(errors, config, states) are imported here and there: the rest (aiohttp, pydantic, Pillow) is
imported inside the commands that need it, so `plasmactl --help` and a missing daemon answer fast.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from plasmactl import (
    dataset_cmds,
    job_cmds,
    model_cmds,
    operations_cmds,
    reproduce_cmds,
    service_cmds,
    train_cmds,
)
from plasmactl.context import Ctl, json_option
from plasmactl.output import EMITTED_KEY, JSON_KEY, Exit
from plasmad.core.config import client_socket_path

EXIT_CODES = """\b
Exit codes: 0 ok, 1 the job failed, 2 bad arguments or input the daemon refused,
3 plasmad not running, 4 not found, 5 conflict, 6 ComfyUI or a setting missing,
7 cancelled, 8 internal error, 9 a check failed."""


def _wants_json(args: Sequence[str]) -> bool:
    """--json among the arguments (before a `--`): for errors found before its callback ran."""
    args = list(args)
    return "--json" in (args[: args.index("--")] if "--" in args else args)


class UsageFailure(click.UsageError):
    """click's usage error, shown as click shows it, plus the JSON error object under --json."""

    def __init__(self, error: click.UsageError, json_mode: bool) -> None:
        super().__init__(error.message, error.ctx)
        self.error = error
        self.json = json_mode

    def show(self, file: Any = None) -> None:
        self.error.show(file)
        if self.json and not (self.error.ctx and self.error.ctx.meta.get(EMITTED_KEY)):
            body: dict[str, Any] = {
                "name": Exit.USAGE.name.lower(),
                "message": self.error.format_message(),
                "exit": int(Exit.USAGE),
            }
            param = getattr(self.error, "param", None)
            if isinstance(param, click.Parameter) and param.name:
                body["field"] = param.name
            click.echo(json.dumps({"error": body}, indent=2, ensure_ascii=False))


class PlasmaGroup(click.Group):
    """The top group: a usage error anywhere below it gets its JSON form under --json."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        wants_json = _wants_json(args)
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except click.UsageError as err:
            raise UsageFailure(err, wants_json) from err
        if wants_json:
            ctx.meta[JSON_KEY] = True
        return ctx

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageFailure:
            raise
        except click.UsageError as err:
            raise UsageFailure(err, bool(ctx.meta.get(JSON_KEY))) from err


@click.group(
    cls=PlasmaGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXIT_CODES,
)
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
    ctl = ctx.ensure_object(Ctl)
    ctl.socket_path = socket_path or client_socket_path()


# The commands, by where they live.
for command in (
    # generations and the queue
    job_cmds.submit,
    job_cmds.generate,
    job_cmds.status,
    job_cmds.wait,
    job_cmds.jobs,
    job_cmds.cancel,
    job_cmds.retry,
    job_cmds.approve,
    # reproducing a page, same-seed consistency (issue 12)
    reproduce_cmds.reproduce,
    reproduce_cmds.consistency,
    reproduce_cmds.reproduction,
    # operating plasmad
    operations_cmds.health,
    operations_cmds.doctor,
    operations_cmds.bench,
    operations_cmds.logs,
    operations_cmds.shutdown,
    service_cmds.service,
    model_cmds.models,  # issue 11: what a request may name
    # the LoRA: its dataset, its training
    dataset_cmds.dataset,
    train_cmds.train,
    train_cmds.train_status,
    train_cmds.train_cancel,
    train_cmds.loras,
    train_cmds.lora,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="plasmactl")
