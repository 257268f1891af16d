"""`plasmactl service install`: run plasmad at login, under launchd (macOS) or systemd --user (Linux).

This runs in plasmactl's own process: it is about this machine's files, not the daemon's state.
The templates in the repository's `systemd-launchd/` are filled in with this machine's paths (the
plasmad executable beside this Python, or on PATH) and the settings of the current shell (every
PLASMA_*, COMFYUI_* and KOHYA_* variable, relative paths made absolute, the socket pinned so that
plasmactl and the service agree on it, and PATH). The configuration is checked first, as plasmad
would at its start: a service that can only crash-loop is not installed.

An existing service file is never silently replaced: the same content is left alone, other
content is refused unless `--force`, and the file is written to a temp name and renamed.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import click

from plasmactl.context import Ctl, json_option, pass_ctl
from plasmactl.output import Exit, emit_json, fail
from plasmad.core.config import ConfigError, client_socket_path, load_config

TEMPLATES = Path(__file__).resolve().parent.parent / "systemd-launchd"
LABEL = "org.plasma.plasmad"
LAUNCHD_TEMPLATE = f"{LABEL}.plist"
SYSTEMD_TEMPLATE = "plasmad.service"
SETTING_PREFIXES = ("PLASMA_", "COMFYUI_", "KOHYA_")
#: Settings that hold paths: made absolute, since the service does not start in this shell's folder.
PATH_SETTINGS = frozenset(
    {
        "COMFYUI_DIR",
        "COMFYUI_PYTHON",
        "KOHYA_PYTHON",
        "KOHYA_SCRIPT",
        "PLASMA_STATE_DIR",
        "PLASMA_PIPELINE_DIR",
        "PLASMA_SOCKET",
        "PLASMA_TEMPLATES_DIR",
        "PLASMA_CONFIG",
    }
)
#: Beyond plasmad's own stop (grace + ComfyUI's stop timeout): closing the store, the listeners.
STOP_MARGIN_S = 15.0


@dataclass(frozen=True)
class ServiceSpec:
    """What goes into a service file, whatever the init system."""

    plasmad: Path
    environment: dict[str, str]
    logs_dir: Path
    home: Path
    stop_timeout_s: int


def plasmad_executable() -> Path:
    """The plasmad of this installation: beside this Python (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "plasmad"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside.absolute()
    found = shutil.which("plasmad")
    if found:
        return Path(found).absolute()
    raise FileNotFoundError("no plasmad executable beside this Python or on PATH (pip install -e . first)")


def service_environment(env: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in sorted(env):
        if not name.startswith(SETTING_PREFIXES) or env[name] == "":
            continue
        value = env[name]
        out[name] = str(Path(value).expanduser().absolute()) if name in PATH_SETTINGS else value
    # The daemon's default socket depends on XDG_RUNTIME_DIR, which a service may not have: pin it.
    out.setdefault("PLASMA_SOCKET", str(client_socket_path(env)))
    if env.get("PATH"):
        out["PATH"] = env["PATH"]
    return out


def build_spec(env: Mapping[str, str]) -> ServiceSpec:
    """The service for this machine and these settings; ConfigError if plasmad would refuse them."""
    from plasmad.comfy.process import STOP_TIMEOUT_S  # the ComfyUI client (aiohttp): only here

    cfg = load_config(env)
    return ServiceSpec(
        plasmad=plasmad_executable(),
        environment=service_environment(env),
        logs_dir=cfg.logs_dir,
        home=Path(env.get("HOME") or Path.home()),
        stop_timeout_s=math.ceil(cfg.shutdown_grace_s + STOP_TIMEOUT_S + STOP_MARGIN_S),
    )


def render_launchd(spec: ServiceSpec, template: Path | None = None) -> bytes:
    import plistlib
    from xml.sax.saxutils import escape  # urllib, http, email: ~25 ms that --help need not pay

    text = (template or TEMPLATES / LAUNCHD_TEMPLATE).read_text(encoding="utf-8")
    for key, value in (
        ("@LABEL@", LABEL),
        ("@PLASMAD@", str(spec.plasmad)),
        ("@STOP_TIMEOUT@", str(spec.stop_timeout_s)),
        ("@HOME@", str(spec.home)),
        ("@LOGS@", str(spec.logs_dir)),
    ):
        text = text.replace(key, escape(value))
    plist = plistlib.loads(text.encode("utf-8"))
    plist["EnvironmentVariables"] = dict(spec.environment)  # plistlib escapes what needs it
    body = plistlib.dumps(plist, sort_keys=False)
    note = (
        b"<!-- Written by `plasmactl service install` from systemd-launchd/"
        + LAUNCHD_TEMPLATE.encode()
        + b" -->\n"
    )
    head, sep, rest = body.partition(b"<plist")
    return head + note + sep + rest


def _systemd_quote(value: str) -> str:
    """A value for a double-quoted systemd setting: `\\` and `"` escaped, `%` (specifiers) doubled."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def render_systemd(spec: ServiceSpec, template: Path | None = None) -> bytes:
    text = (template or TEMPLATES / SYSTEMD_TEMPLATE).read_text(encoding="utf-8")
    # `$` would be expanded in ExecStart=; `%` is a specifier everywhere.
    exec_start = '"' + _systemd_quote(str(spec.plasmad)).replace("$", "$$") + '"'
    environment = "\n".join(
        f'Environment="{_systemd_quote(k)}={_systemd_quote(v)}"' for k, v in spec.environment.items()
    )
    for key, value in (
        ("@PLASMAD@", exec_start),
        ("@STOP_TIMEOUT@", str(spec.stop_timeout_s)),
        ("@ENVIRONMENT@", environment),
    ):
        text = text.replace(key, value)
    return text.encode("utf-8")


@dataclass(frozen=True)
class Target:
    system: str  #: launchd | systemd
    path: Path
    content: bytes
    load: list[str]


def target(system: str, spec: ServiceSpec, env: Mapping[str, str]) -> Target:
    home = spec.home
    if system == "launchd":
        path = home / "Library" / "LaunchAgents" / LAUNCHD_TEMPLATE
        domain = f"gui/{os.getuid()}"
        return Target(
            system,
            path,
            render_launchd(spec),
            [
                f"launchctl bootstrap {domain} {path}",
                f"# later: launchctl kickstart -k {domain}/{LABEL} (restart), "
                f"launchctl bootout {domain}/{LABEL} (stop and unload; before installing a changed file)",
            ],
        )
    config_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    path = config_home / "systemd" / "user" / SYSTEMD_TEMPLATE
    return Target(
        system,
        path,
        render_systemd(spec),
        [
            "systemctl --user daemon-reload && systemctl --user enable --now plasmad",
            "# later: systemctl --user status plasmad; journalctl --user -u plasmad; "
            "loginctl enable-linger $USER (keep it running while logged out)",
        ],
    )


def install_file(path: Path, content: bytes, force: bool) -> str:
    """`written`, `replaced` or `unchanged`; FileExistsError if other content is there and not force."""
    from plasmad.core.fsutil import create_new, replace_atomic

    if path.exists():
        if path.read_bytes() == content:
            return "unchanged"
        if not force:
            raise FileExistsError(path)
        replace_atomic(path, content)
        return "replaced"
    if create_new(path, content):
        return "written"
    raise FileExistsError(path)  # it appeared meanwhile


@click.group()
def service() -> None:
    """Run plasmad at login: launchd on macOS, systemd --user on Linux."""


@service.command()
@click.option("--print", "print_only", is_flag=True, help="Print the service file; write nothing.")
@click.option("--force", is_flag=True, help="Replace an existing service file that differs.")
@click.option(
    "--system",
    "system",
    type=click.Choice(["launchd", "systemd"]),
    default="launchd" if sys.platform == "darwin" else "systemd",
    show_default="launchd on macOS, systemd elsewhere",
    help="Which init system to write for.",
)
@json_option
@pass_ctl
def install(ctl: Ctl, print_only: bool, force: bool, system: str) -> None:
    """Write the service file for this machine and say how to load it.

    It carries this shell's PLASMA_*, COMFYUI_* and KOHYA_* settings: run it from the shell you
    start plasmad from.
    """
    env = dict(os.environ)
    try:
        spec = build_spec(env)
    except ConfigError as exc:
        fail(f"plasmad would not start with these settings ({exc}); fix them first", Exit.USAGE)
    except FileNotFoundError as exc:
        fail(str(exc), Exit.NOT_FOUND)
    t = target(system, spec, env)
    if print_only:
        ctl.show(
            {"system": t.system, "path": str(t.path), "content": t.content.decode(), "load": t.load},
            lambda: click.echo(t.content.decode(), nl=False),
        )
        return
    try:
        spec.logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # launchd opens its log files there
        outcome = install_file(t.path, t.content, force)
    except FileExistsError:
        fail(
            f"{t.path} exists with other content: not replaced (--force replaces it; --print shows it)",
            Exit.CONFLICT,
        )
    except OSError as exc:
        fail(f"cannot write {t.path}: {exc}", Exit.UNAVAILABLE)
    if ctl.json:
        emit_json({"system": t.system, "path": str(t.path), "outcome": outcome, "load": t.load})
        return
    click.echo(f"{outcome} {t.path}")
    click.echo("load it:" if outcome != "unchanged" else "(already installed) load it, if it is not running:")
    for line in t.load:
        click.echo(f"  {line}")
    if outcome == "replaced":
        click.echo("  (it was installed before: reload it for the change to take effect)")
