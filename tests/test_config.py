"""Configuration: the environment over a TOML file, each wrong setting named; and the daemon process
around it: a bad setting, a second instance, SIGTERM, and the socket's permissions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from plasmactl.client import DaemonClient
from plasmad.core.config import (
    BUNDLED_TEMPLATES,
    MAX_SOCKET_PATH,
    ConfigError,
    client_socket_path,
    default_socket_path,
    load_config,
)
from tests.support.processes import DaemonEnv, DaemonProcess, free_port


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A minimal environment: an empty config file (never the user's own) and a fresh state dir."""
    config = tmp_path / "plasmad.toml"
    config.write_text("")
    return {"PLASMA_CONFIG": str(config), "PLASMA_STATE_DIR": str(tmp_path / "state")}


def write_toml(env: dict[str, str], text: str) -> None:
    Path(env["PLASMA_CONFIG"]).write_text(text, encoding="utf-8")


def config_error(env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load_config(env)
    return err.value


# --- reading ----------------------------------------------------------------------------------------


def test_defaults(env: dict[str, str]) -> None:
    cfg = load_config(env)
    assert cfg.comfyui_url == "http://127.0.0.1:8188" and cfg.comfyui_dir is None
    assert (cfg.http_host, cfg.http_port) == ("127.0.0.1", 3000)
    assert cfg.templates_dir == BUNDLED_TEMPLATES and cfg.kohya_python is None
    assert cfg.db_path == Path(env["PLASMA_STATE_DIR"]) / "plasmad.sqlite3"


def test_settings_from_the_environment(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "ComfyUI").mkdir()
    (tmp_path / "kohya").mkdir()
    python, script = tmp_path / "kohya" / "python", tmp_path / "kohya" / "train_network.py"
    python.write_text("")
    script.write_text("")
    env.update(
        COMFYUI_URL="http://localhost:8189/",
        COMFYUI_DIR=str(tmp_path / "ComfyUI"),
        KOHYA_PYTHON=str(python),
        KOHYA_SCRIPT=str(script),
        KOHYA_EXTRA_ARGS="--xformers --cache_latents_to_disk 'a b'",
        PLASMA_HTTP_HOST="::1",
        PLASMA_HTTP_PORT="0",
        PLASMA_SOCKET=str(tmp_path / "s.sock"),
        PLASMA_CHECKPOINT="sd15.safetensors",
        PLASMA_TRAINER="kohya",
        PLASMA_JOB_TIMEOUT="90.5",
        PLASMA_PIPELINE_DIR="",  # empty is unset
    )
    cfg = load_config(env)
    assert cfg.comfyui_url == "http://localhost:8189"  # the trailing slash is dropped
    assert cfg.comfyui_dir == tmp_path / "ComfyUI" and cfg.kohya_script == script
    assert cfg.kohya_extra_args == ("--xformers", "--cache_latents_to_disk", "a b")
    assert (cfg.http_host, cfg.http_port) == ("::1", 0)
    assert cfg.trainer == "kohya" and cfg.job_timeout_s == 90.5 and cfg.pipeline_dir is None
    assert cfg.socket_path == tmp_path / "s.sock"


def test_settings_from_the_file_and_the_environment_wins(env: dict[str, str], tmp_path: Path) -> None:
    write_toml(env, f"""
COMFYUI_URL = "http://127.0.0.1:9000"
PLASMA_HTTP_PORT = 3100
PLASMA_CHECKPOINT = "from-file.safetensors"
KOHYA_EXTRA_ARGS = ["--a", "b c"]
PLASMA_PIPELINE_DIR = "{tmp_path}"
""")
    cfg = load_config(env)
    assert cfg.comfyui_url == "http://127.0.0.1:9000" and cfg.http_port == 3100
    assert cfg.kohya_extra_args == ("--a", "b c") and cfg.pipeline_dir == tmp_path
    cfg = load_config({**env, "PLASMA_HTTP_PORT": "3200", "PLASMA_CHECKPOINT": "from-env.safetensors"})
    assert cfg.http_port == 3200 and cfg.checkpoint == "from-env.safetensors"
    assert cfg.comfyui_url == "http://127.0.0.1:9000"  # what the environment leaves alone stays


def test_unrelated_environment_variables_are_ignored(env: dict[str, str]) -> None:
    load_config({**env, "PATH": "/bin", "PLASMA_SOMETHING_ELSE": "x"})


# --- each wrong setting is named ----------------------------------------------------------------------


def _file(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.write_text("")
    return str(path)


BAD_SETTINGS: list[tuple[str, Callable[[Path], str], str]] = [
    ("COMFYUI_URL", lambda _: "ftp://127.0.0.1:8188", "http(s) URL"),
    ("COMFYUI_URL", lambda _: "127.0.0.1:8188", "http(s) URL"),
    ("COMFYUI_URL", lambda _: "http://", "http(s) URL"),
    ("PLASMA_HTTP_PORT", lambda _: "70000", "not a TCP port"),
    ("PLASMA_HTTP_PORT", lambda _: "-1", "not a TCP port"),
    ("PLASMA_HTTP_PORT", lambda _: "http", "invalid literal"),
    ("COMFYUI_DIR", lambda p: str(p / "missing"), "not a folder"),
    ("COMFYUI_DIR", lambda p: _file(p, "a-file"), "not a folder"),
    ("PLASMA_PIPELINE_DIR", lambda p: str(p / "missing"), "not a folder"),
    ("KOHYA_PYTHON", lambda p: str(p / "missing-python"), "does not exist"),
    ("KOHYA_PYTHON", lambda p: _file(p, "python"), "set both or neither"),  # then KOHYA_SCRIPT is named
    ("PLASMA_HTTP_HOST", lambda _: "0.0.0.0", "not loopback"),
    ("PLASMA_HTTP_HOST", lambda _: "192.168.1.20", "not loopback"),
    ("PLASMA_HTTP_HOST", lambda _: "example.com", "not loopback"),
    ("PLASMA_SOCKET", lambda p: str(p / ("s" * MAX_SOCKET_PATH)), "longer than"),
    ("PLASMA_TEMPLATES_DIR", lambda p: str(p), "txt2img-lora.json"),
    ("PLASMA_TRAINER", lambda _: "diffusers", "auto, kohya or comfyui"),
    ("PLASMA_TRAINER", lambda _: "kohya", "needs KOHYA_PYTHON"),
    ("PLASMA_JOB_TIMEOUT", lambda _: "0", "positive"),
    ("PLASMA_SHUTDOWN_GRACE", lambda _: "soon", "could not convert"),
    ("PLASMA_HISTORY_POLL", lambda _: "-1", "positive"),
    ("PLASMA_COMFYUI_HANG", lambda _: "0", "positive"),
    ("PLASMA_UNET_DTYPE", lambda _: "fp8", "auto, fp16, fp32"),
]


@pytest.mark.parametrize(
    ("name", "value", "words"), BAD_SETTINGS, ids=[f"{n}-{w}" for n, _, w in BAD_SETTINGS]
)
def test_a_wrong_setting_is_named(
    env: dict[str, str], tmp_path: Path, name: str, value: Callable[[Path], str], words: str
) -> None:
    env[name] = value(tmp_path)
    err = config_error(env)
    expected = "KOHYA_SCRIPT" if words == "set both or neither" else name
    assert err.setting == expected and str(err).startswith(f"{expected}: ")
    assert words in str(err)


def test_unet_dtype_is_auto_unless_set(env: dict[str, str]) -> None:
    assert load_config(env).unet_dtype == "auto"
    assert load_config({**env, "PLASMA_UNET_DTYPE": "fp16"}).unet_dtype == "fp16"
    assert load_config({**env, "PLASMA_COMFYUI_HANG": "2.5"}).comfyui_hang_s == 2.5


def _managed(env: dict[str, str], tmp_path: Path, args: str) -> dict[str, str]:
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir(exist_ok=True)
    (comfy / "main.py").write_text("")
    return {
        **env,
        "COMFYUI_MANAGED": "1",
        "COMFYUI_DIR": str(comfy),
        "COMFYUI_PYTHON": sys.executable,
        "COMFYUI_URL": "http://127.0.0.1:8189",
        "COMFYUI_ARGS": args,
    }


# Managed mode: COMFYUI_ARGS come after our --listen 127.0.0.1 --port N, and argparse keeps the last
# (and takes unambiguous prefixes): each of these would bind ComfyUI beyond loopback, or elsewhere.
REFUSED_ARGS = [
    ("--listen 0.0.0.0", "beyond loopback"),
    ("--listen", "beyond loopback"),  # bare: ComfyUI's const is 0.0.0.0,::
    ("--cpu --listen --port 8189", "beyond loopback"),
    ("--listen=0.0.0.0", "beyond loopback"),
    ("--listen 127.0.0.1,192.168.1.5", "beyond loopback"),
    ("--listen ::", "beyond loopback"),
    ("--lis 0.0.0.0", "beyond loopback"),
    ("--port 8190", "COMFYUI_URL's port (8189)"),
    ("--port=9000", "COMFYUI_URL's port (8189)"),
    ("--por 9000", "COMFYUI_URL's port (8189)"),
]


@pytest.mark.parametrize(("args", "words"), REFUSED_ARGS, ids=[a for a, _ in REFUSED_ARGS])
def test_managed_comfyui_args_cannot_bind_beyond_loopback(
    env: dict[str, str], tmp_path: Path, args: str, words: str
) -> None:
    err = config_error(_managed(env, tmp_path, args))
    assert err.setting == "COMFYUI_ARGS" and words in str(err)


@pytest.mark.parametrize(
    "args", ["--cpu", "--listen 127.0.0.1", "--listen=localhost", "--listen 127.0.0.1,::1", "--port 8189",
             "--cpu --output-directory /tmp/out --preview-method auto"],
)
def test_managed_comfyui_args_on_loopback_are_fine(env: dict[str, str], tmp_path: Path, args: str) -> None:
    assert load_config(_managed(env, tmp_path, args)).comfyui_args == tuple(args.split())


def test_comfyui_args_are_not_judged_for_a_comfyui_we_do_not_run(env: dict[str, str]) -> None:
    assert load_config({**env, "COMFYUI_ARGS": "--listen 0.0.0.0"}).comfyui_args == ("--listen", "0.0.0.0")


def test_kohya_script_without_python_names_python(env: dict[str, str], tmp_path: Path) -> None:
    env["KOHYA_SCRIPT"] = _file(tmp_path, "train_network.py")
    assert config_error(env).setting == "KOHYA_PYTHON"


def test_remote_host_only_when_insisted(env: dict[str, str]) -> None:
    env["PLASMA_HTTP_HOST"] = "0.0.0.0"
    assert config_error(env).setting == "PLASMA_HTTP_HOST"
    env["PLASMA_ALLOW_REMOTE"] = "1"
    assert load_config(env).http_host == "0.0.0.0"


def test_loopback_hosts_are_accepted(env: dict[str, str]) -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert load_config({**env, "PLASMA_HTTP_HOST": host}).http_host == host


@pytest.mark.parametrize(
    ("toml", "setting"),
    [
        ('COMFYUI_URLS = "http://127.0.0.1:8188"\n', "COMFYUI_URLS"),  # a typo is not silently ignored
        ("[plasma]\nPLASMA_HTTP_PORT = 3000\n", "plasma"),
        ("PLASMA_HTTP_PORT = [3000]\n", "PLASMA_HTTP_PORT"),
        ('PLASMA_HTTP_PORT = "x"\n', "PLASMA_HTTP_PORT"),
        ("PLASMA_HTTP_PORT = 3000\nPLASMA_HTTP_PORT = 3001\n", "PLASMA_CONFIG"),  # not TOML
        ("COMFYUI_URL = \n", "PLASMA_CONFIG"),
    ],
)
def test_a_wrong_file_is_named(env: dict[str, str], toml: str, setting: str) -> None:
    write_toml(env, toml)
    err = config_error(env)
    assert err.setting == setting
    if setting == "PLASMA_CONFIG":
        assert env["PLASMA_CONFIG"] in str(err)


def test_a_file_that_is_not_utf8_is_named(env: dict[str, str]) -> None:
    Path(env["PLASMA_CONFIG"]).write_bytes(b'PLASMA_CHECKPOINT = "\xff"\n')
    assert config_error(env).setting == "PLASMA_CONFIG"


def test_config_file_that_does_not_exist(env: dict[str, str], tmp_path: Path) -> None:
    env["PLASMA_CONFIG"] = str(tmp_path / "nowhere.toml")
    err = config_error(env)
    assert err.setting == "PLASMA_CONFIG" and "does not exist" in str(err)


def test_client_socket_path(tmp_path: Path) -> None:
    config = tmp_path / "plasmad.toml"
    config.write_text(f'PLASMA_SOCKET = "{tmp_path / "from-file.sock"}"\nCOMFYUI_DIR = "/nowhere"\n')
    # The CLI reads only the socket: a daemon setting that would fail load_config does not matter.
    assert client_socket_path({"PLASMA_CONFIG": str(config)}) == tmp_path / "from-file.sock"
    env = {"PLASMA_CONFIG": str(config), "PLASMA_SOCKET": str(tmp_path / "env.sock")}
    assert client_socket_path(env) == tmp_path / "env.sock"
    config.write_text("not [ toml")
    assert client_socket_path({"PLASMA_CONFIG": str(config)}) == default_socket_path()


def test_default_socket_path_follows_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_socket_path() == tmp_path / "plasma" / "plasmad.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_socket_path() == Path(f"/tmp/plasma-{os.getuid()}/plasmad.sock")


# --- the daemon process ---------------------------------------------------------------------------------


def daemon_command_env(extra: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PLASMA_", "COMFYUI_", "KOHYA_"))}
    return {**base, **extra}


def run_daemon(env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "plasmad.daemon"], env=daemon_command_env(env),
                          capture_output=True, text=True, timeout=timeout)


def test_daemon_with_a_bad_setting_exits_2_naming_it(env: dict[str, str]) -> None:
    # One process is enough: every setting reaches main() through the same ConfigError (above).
    done = run_daemon({**env, "PLASMA_HTTP_PORT": "70000"})
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line == "plasmad: configuration error: PLASMA_HTTP_PORT: 70000 is not a TCP port"
    assert done.stdout == ""
    assert not Path(env["PLASMA_STATE_DIR"]).exists()  # it stopped before touching anything


def test_daemon_refuses_a_managed_comfyui_on_the_network(env: dict[str, str], tmp_path: Path) -> None:
    done = run_daemon(_managed(env, tmp_path, "--cpu --listen 0.0.0.0"))
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("plasmad: configuration error: COMFYUI_ARGS: --listen 0.0.0.0 would let ComfyUI")
    assert "no authentication" in line


@pytest.fixture
def daemon_settings(daemon_env: DaemonEnv) -> DaemonEnv:
    # No ComfyUI is needed to start; point at a closed port so that nothing real is contacted.
    daemon_env.env["COMFYUI_URL"] = f"http://127.0.0.1:{free_port()}"
    return daemon_env


def test_second_daemon_exits_3_while_the_first_keeps_serving(
    daemon_settings: DaemonEnv, start_daemon: Callable[..., DaemonProcess]
) -> None:
    first = start_daemon()
    done = run_daemon(daemon_settings.env)
    assert done.returncode == 3, done.stderr
    last = done.stderr.splitlines()[-1]
    assert "another plasmad is running" in last and f"pid {first.proc.pid}" in last
    assert "Traceback" not in done.stderr
    assert daemon_settings.socket.exists()
    with DaemonClient(daemon_settings.socket, timeout=10) as client:
        assert client.call("health")["status"] == "ok"
        # `plasmactl shutdown` takes the same orderly path as SIGTERM.
        assert client.call("shutdown") == {"stopping": True}
    assert first.proc.wait(30) == 0
    assert not daemon_settings.socket.exists()
    assert not (daemon_settings.state_dir / "plasmad.pid").exists()


def test_sigterm_stops_cleanly_and_removes_its_files(
    daemon_settings: DaemonEnv, start_daemon: Callable[..., DaemonProcess]
) -> None:
    daemon = start_daemon()
    state = daemon_settings.state_dir
    runtime: dict[str, Any] = json.loads((state / "runtime.json").read_text())
    assert runtime["pid"] == daemon.proc.pid and runtime["socket"] == str(daemon_settings.socket)
    assert (state / "plasmad.pid").read_text().strip() == str(daemon.proc.pid)

    # The socket is private: 0600, in a 0700 folder.
    sock = daemon_settings.socket
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    status, _ = daemon.http("GET", "/health")
    assert status == 200

    assert daemon.stop() == 0
    assert not sock.exists()
    assert not (state / "runtime.json").exists()
    assert not (state / "plasmad.pid").exists()
    assert "plasmad stopped" in daemon.log.read_text()
    # The jobs database stays: it is the queue a restart picks up.
    assert (state / "plasmad.sqlite3").exists()

