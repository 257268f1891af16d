"""What every plasmactl command shares: `Ctl` (the socket, --json, the call and show helpers),
`pass_ctl`, and the `--json` option. The command modules import this, never plasmactl.cli."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from plasmactl.client import DaemonClient, DaemonUnavailable
from plasmactl.output import JSON_KEY, Exit, emit_json, fail, fail_error
from plasmad.core.errors import PlasmaError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Ctl:
    # A default, because an eager `plasmactl --json ...` creates the Ctl before `cli` sets the path.
    socket_path: Path = Path()
    json: bool = False

    def call(self, method: str, **params: Any) -> Any:
        """Call `method` on plasmad; a refusal or no daemon ends the command with its exit code."""
        try:
            with DaemonClient(self.socket_path) as client:
                return client.call(method, **params)
        except DaemonUnavailable as exc:
            fail(str(exc), Exit.NO_DAEMON)
        except PlasmaError as err:
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
            ctx.meta[JSON_KEY] = True

    return click.option(
        "--json",
        "json_out",
        is_flag=True,
        expose_value=False,
        callback=set_json,
        is_eager=True,
        help="Machine-readable output (errors too: a JSON object with `exit` and `message`).",
    )(f)
