"""The launchd agent and the systemd user unit (`plasmactl service install`).

The rendered plist is parsed with plistlib, the unit line by line; where `systemd-analyze` is
installed the unit is verified by systemd itself (skipped otherwise). Installing goes into a
temporary HOME, where an existing file with other content must never be replaced silently.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result

from plasmactl.output import Exit
from plasmactl.service_cmds import (
    LABEL,
    ServiceSpec,
    build_spec,
    render_launchd,
    render_systemd,
)
from plasmad.comfy.process import STOP_TIMEOUT_S
from tests.support.cli import run_cli

GRACE = 20.0
#: A value systemd and XML both treat specially: quotes, a backslash, a specifier, a variable, markup.
AWKWARD = 'a "b" \\c 50% $HOME <&>'


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "none.toml").write_text("")
    home = tmp_path / "home"
    home.mkdir()
    return {
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",
        "PLASMA_CONFIG": str(tmp_path / "none.toml"),
        "PLASMA_STATE_DIR": str(tmp_path / "state"),
        "PLASMA_SHUTDOWN_GRACE": str(GRACE),
        "COMFYUI_ARGS": AWKWARD,
        "COMFYUI_URL": "http://127.0.0.1:8188",
    }


def spec_for(env: dict[str, str]) -> ServiceSpec:
    return build_spec(env)


def unit_values(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values]}} (keys may repeat: Environment=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def unquote_systemd(value: str) -> str:
    assert value.startswith('"') and value.endswith('"')
    out, i, inner = [], 0, value[1:-1]
    while i < len(inner):
        if inner[i] == "\\":
            out.append(inner[i + 1])
            i += 2
        elif inner[i] == "%":
            assert inner[i + 1] == "%"
            out.append("%")
            i += 2
        else:
            out.append(inner[i])
            i += 1
    return "".join(out)


def test_the_launchd_agent(env: dict[str, str], tmp_path: Path) -> None:
    env["PLASMA_PIPELINE_DIR"] = "."  # relative: made absolute, the agent starts elsewhere
    spec = spec_for(env)
    plist = plistlib.loads(render_launchd(spec))
    assert plist["Label"] == LABEL
    assert plist["ProgramArguments"] == [str(spec.plasmad)]
    assert Path(plist["ProgramArguments"][0]).name == "plasmad"
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}  # restarted after a crash, not after shutdown
    assert plist["ExitTimeOut"] > GRACE + STOP_TIMEOUT_S  # launchd's SIGKILL comes after our own stop
    logs = tmp_path / "state" / "logs"
    assert plist["StandardOutPath"] == str(logs / "launchd.out.log")
    assert plist["StandardErrorPath"] == str(logs / "launchd.err.log")
    assert plist["WorkingDirectory"] == env["HOME"]
    environment = plist["EnvironmentVariables"]
    assert environment["COMFYUI_ARGS"] == AWKWARD  # escaped in the XML, exact once parsed
    assert environment["PLASMA_STATE_DIR"] == env["PLASMA_STATE_DIR"]
    assert environment["PLASMA_PIPELINE_DIR"] == str(Path.cwd())
    assert environment["PLASMA_SHUTDOWN_GRACE"] == str(GRACE)
    assert environment["PLASMA_SOCKET"].endswith("plasmad.sock")  # pinned: plasmactl finds it
    assert environment["PATH"] == "/usr/bin:/bin"
    assert "HOME" not in environment  # only settings, PATH and the socket


def test_the_systemd_unit(env: dict[str, str]) -> None:
    spec = spec_for(env)
    unit = unit_values(render_systemd(spec).decode())
    service = unit["Service"]
    assert service["ExecStart"] == [f'"{spec.plasmad}"']
    assert service["Restart"] == ["on-failure"]
    assert int(service["TimeoutStopSec"][0]) > GRACE + STOP_TIMEOUT_S
    assert service["KillMode"] == ["mixed"]  # TERM to plasmad alone: it stops ComfyUI itself
    assert unit["Install"]["WantedBy"] == ["default.target"]
    assert unit["Unit"]["Description"]
    environment = dict(unquote_systemd(v).split("=", 1) for v in service["Environment"])
    assert environment["COMFYUI_ARGS"] == AWKWARD
    assert environment["PLASMA_STATE_DIR"] == env["PLASMA_STATE_DIR"]
    assert "@" not in render_systemd(spec).decode().replace("@...@", "")  # every placeholder filled


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_itself_accepts_the_unit(env: dict[str, str], tmp_path: Path) -> None:
    unit = tmp_path / "units" / "plasmad.service"
    unit.parent.mkdir()
    unit.write_bytes(render_systemd(spec_for(env)))
    verify = ["systemd-analyze", "verify", str(unit)]
    done = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    complaints = [line for line in done.stderr.splitlines() if "plasmad.service" in line]
    assert complaints == []  # no "ignoring" warnings about our lines either


def cli_env(env: dict[str, str], **changes: str | None) -> dict[str, str | None]:
    """`env` for plasmactl in-process: settings of the shell running the tests are left out."""
    inherited = {k: None for k in os.environ if k.startswith(("PLASMA_", "COMFYUI_", "KOHYA_"))}
    return {**inherited, **env, **changes}


def install(env: dict[str, str], *args: str) -> Result:
    return run_cli(["service", "install", *args], env=cli_env(env, XDG_CONFIG_HOME=None))  # type: ignore[arg-type]


def test_install_writes_once_and_never_overwrites_silently(env: dict[str, str]) -> None:
    home = Path(env["HOME"])
    unit = home / ".config" / "systemd" / "user" / "plasmad.service"
    first = install(env, "--system", "systemd")
    assert first.exit_code == 0, first.output
    assert f"written {unit}" in first.output
    assert "systemctl --user daemon-reload && systemctl --user enable --now plasmad" in first.output
    content = unit.read_bytes()
    assert (Path(env["PLASMA_STATE_DIR"]) / "logs").is_dir()

    again = install(env, "--system", "systemd")
    assert again.exit_code == 0 and "unchanged" in again.output and unit.read_bytes() == content

    changed = dict(env, PLASMA_SHUTDOWN_GRACE="60")
    refused = install(changed, "--system", "systemd")
    assert refused.exit_code == Exit.CONFLICT, refused.output
    assert "exists with other content: not replaced" in refused.output
    assert unit.read_bytes() == content  # untouched

    forced = install(changed, "--system", "systemd", "--force")
    assert forced.exit_code == 0 and f"replaced {unit}" in forced.output
    assert b"PLASMA_SHUTDOWN_GRACE=60" in unit.read_bytes()
    assert sorted(p.name for p in unit.parent.iterdir()) == ["plasmad.service"]  # no temp file left


def test_install_the_launchd_agent_and_print(env: dict[str, str]) -> None:
    agent = Path(env["HOME"]) / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    printed = install(env, "--system", "launchd", "--print")
    assert printed.exit_code == 0 and not agent.exists()  # --print writes nothing
    assert plistlib.loads(printed.stdout_bytes)["Label"] == LABEL
    done = install(env, "--system", "launchd")
    assert done.exit_code == 0, done.output
    assert agent.read_bytes() == printed.stdout_bytes
    assert "launchctl bootstrap gui/" in done.output and str(agent) in done.output


def test_install_honours_xdg_config_home(env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(["service", "install", "--system", "systemd", "--json"],
                     env=cli_env(env, XDG_CONFIG_HOME=str(tmp_path / "xdg")))  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    assert (tmp_path / "xdg" / "systemd" / "user" / "plasmad.service").is_file()


def test_install_refuses_settings_plasmad_would_refuse(env: dict[str, str]) -> None:
    result = install(dict(env, PLASMA_HTTP_PORT="not-a-port"), "--system", "systemd")
    assert result.exit_code == Exit.USAGE
    assert "PLASMA_HTTP_PORT" in result.output and "fix them first" in result.output
    assert not (Path(env["HOME"]) / ".config").exists()


def test_the_executable_is_this_installations(env: dict[str, str]) -> None:
    assert spec_for(env).plasmad == Path(sys.executable).parent / "plasmad"
