"""plasmad's configuration: the environment, over an optional TOML file, checked once at startup.

Names are the requirements' own (COMFYUI_URL, COMFYUI_DIR, KOHYA_PYTHON, KOHYA_SCRIPT) plus PLASMA_*.
The config file (PLASMA_CONFIG, default ~/.config/plasma/plasmad.toml) uses the same names as keys;
the environment wins. A missing or wrong setting is a ConfigError naming it, raised at startup; a
setting only some operations need (COMFYUI_DIR, KOHYA_*) may be absent, and those operations then
fail with NOT_CONFIGURED naming it.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from plasmad.core.errors import not_configured

DEFAULT_CONFIG_FILE = Path("~/.config/plasma/plasmad.toml")
# The repository's templates/ when running from a checkout (pip install -e).
BUNDLED_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
# macOS caps AF_UNIX paths at 104 bytes (Linux 108): keep a margin.
MAX_SOCKET_PATH = 100


class ConfigError(Exception):
    """A setting is missing or wrong; `setting` names it."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


@dataclass(frozen=True)
class Config:
    comfyui_url: str = "http://127.0.0.1:8188"
    comfyui_dir: Path | None = None
    comfyui_managed: bool = False  #: plasmad starts and supervises ComfyUI itself
    comfyui_python: Path | None = None  #: ComfyUI's own Python (managed mode)
    comfyui_args: tuple[str, ...] = ()  #: extra ComfyUI flags in managed mode (e.g. --cpu)
    kohya_python: Path | None = None
    kohya_script: Path | None = None
    kohya_extra_args: tuple[str, ...] = ()
    http_host: str = "127.0.0.1"
    http_port: int = 3000
    allow_remote: bool = False  #: PLASMA_ALLOW_REMOTE=1: bind PLASMA_HTTP_HOST beyond loopback anyway
    state_dir: Path = field(default_factory=lambda: Path("~/.local/state/plasma").expanduser())
    pipeline_dir: Path | None = None
    socket_path: Path = field(default_factory=lambda: default_socket_path())
    templates_dir: Path = BUNDLED_TEMPLATES
    checkpoint: str | None = None  #: default checkpoint file name in COMFYUI_DIR/models/checkpoints
    # The one ControlNet model (CTRL-01), a file in COMFYUI_DIR/models/controlnet (INFRA-05's name).
    controlnet: str = "control_v11p_sd15_openpose.pth"
    # GEN-05: the UNet runs at fp16 on the Apple GPU. On a CPU fp16 is ~100x slower than fp32 (a
    # 3x3 conv: 2.66 s vs 0.02 s). `auto`: fp16 where ComfyUI reports an mps or cuda device, fp32
    # where it reports only a CPU (plasmad.comfy.precision); fp16 / fp32 set it outright.
    unet_dtype: str = "auto"
    trigger_word: str = "spyke_plasma_v1"
    trainer: str = "auto"  #: kohya | comfyui | auto (kohya when KOHYA_* are set)
    job_timeout_s: float = 3600.0
    shutdown_grace_s: float = 20.0
    history_poll_s: float = 1.0  #: how often /history is asked while the WebSocket says nothing
    #: Silence while a prompt runs (no event, no HTTP answer) after which ComfyUI counts as hung.
    comfyui_hang_s: float = 60.0

    @property
    def db_path(self) -> Path:
        return self.state_dir / "plasmad.sqlite3"

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "plasmad.pid"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def trainings_dir(self) -> Path:
        return self.state_dir / "trainings"

    def require_comfyui_dir(self) -> Path:
        if self.comfyui_dir is None:
            raise not_configured("COMFYUI_DIR", "this needs ComfyUI's folder (models/, input/)")
        return self.comfyui_dir

    def require_pipeline_dir(self) -> Path:
        if self.pipeline_dir is None:
            raise not_configured(
                "PLASMA_PIPELINE_DIR", "placing a page needs the pipeline's root (holds output/)"
            )
        return self.pipeline_dir


def default_socket_path() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "plasma" if runtime else Path(f"/tmp/plasma-{os.getuid()}")
    return base / "plasmad.sock"


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Read the file named by PLASMA_CONFIG (if any), then the environment; check everything."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    file_setting = env.get("PLASMA_CONFIG")
    path = Path(file_setting).expanduser() if file_setting else DEFAULT_CONFIG_FILE.expanduser()
    if path.is_file():
        try:
            values.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError("PLASMA_CONFIG", f"cannot read {path}: {exc}") from exc
    elif file_setting:
        raise ConfigError("PLASMA_CONFIG", f"{path} does not exist")
    values.update({k: v for k, v in env.items() if k in _SETTINGS})
    unknown = sorted(k for k in values if k not in _SETTINGS)
    if unknown:
        raise ConfigError(unknown[0], f"unknown setting in {path}")
    kwargs: dict[str, Any] = {}
    for name, (attr, parse) in _SETTINGS.items():
        raw = values.get(name)
        if raw is None or raw == "":
            continue
        try:
            kwargs[attr] = parse(raw)
        except (ValueError, TypeError) as exc:
            raise ConfigError(name, str(exc)) from exc
    return _check(Config(**kwargs))


def _url(raw: Any) -> str:
    url = str(raw).rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{raw!r} is not an http(s) URL like http://127.0.0.1:8188")
    return url


def _path(raw: Any) -> Path:
    return Path(str(raw)).expanduser().absolute()


def _port(raw: Any) -> int:
    port = int(raw)
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a TCP port")
    return port


def _seconds(raw: Any) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _args(raw: Any) -> tuple[str, ...]:
    return tuple(str(a) for a in raw) if isinstance(raw, list) else tuple(shlex.split(str(raw)))


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not a yes/no value (1/0, true/false)")


def _dtype(raw: Any) -> str:
    value = str(raw)
    if value not in ("auto", "fp16", "fp32", "bf16", "default"):
        raise ValueError("must be auto, fp16, fp32, bf16 or default")
    return value


def _trainer(raw: Any) -> str:
    value = str(raw)
    if value not in ("auto", "kohya", "comfyui"):
        raise ValueError("must be auto, kohya or comfyui")
    return value


_SETTINGS: dict[str, tuple[str, Any]] = {
    "COMFYUI_URL": ("comfyui_url", _url),
    "COMFYUI_DIR": ("comfyui_dir", _path),
    "COMFYUI_MANAGED": ("comfyui_managed", _bool),
    "COMFYUI_PYTHON": ("comfyui_python", _path),
    "COMFYUI_ARGS": ("comfyui_args", _args),
    "KOHYA_PYTHON": ("kohya_python", _path),
    "KOHYA_SCRIPT": ("kohya_script", _path),
    "KOHYA_EXTRA_ARGS": ("kohya_extra_args", _args),
    "PLASMA_HTTP_HOST": ("http_host", str),
    "PLASMA_HTTP_PORT": ("http_port", _port),
    "PLASMA_ALLOW_REMOTE": ("allow_remote", _bool),
    "PLASMA_STATE_DIR": ("state_dir", _path),
    "PLASMA_PIPELINE_DIR": ("pipeline_dir", _path),
    "PLASMA_SOCKET": ("socket_path", _path),
    "PLASMA_TEMPLATES_DIR": ("templates_dir", _path),
    "PLASMA_CHECKPOINT": ("checkpoint", str),
    "PLASMA_CONTROLNET": ("controlnet", str),
    "PLASMA_UNET_DTYPE": ("unet_dtype", _dtype),
    "PLASMA_TRIGGER_WORD": ("trigger_word", str),
    "PLASMA_TRAINER": ("trainer", _trainer),
    "PLASMA_JOB_TIMEOUT": ("job_timeout_s", _seconds),
    "PLASMA_SHUTDOWN_GRACE": ("shutdown_grace_s", _seconds),
    "PLASMA_HISTORY_POLL": ("history_poll_s", _seconds),
    "PLASMA_COMFYUI_HANG": ("comfyui_hang_s", _seconds),
}


def _check(cfg: Config) -> Config:
    for setting, value in (("COMFYUI_DIR", cfg.comfyui_dir), ("PLASMA_PIPELINE_DIR", cfg.pipeline_dir)):
        if value is not None and not value.is_dir():
            raise ConfigError(setting, f"{value} is not a folder")
    for setting, value in (("KOHYA_PYTHON", cfg.kohya_python), ("KOHYA_SCRIPT", cfg.kohya_script)):
        if value is not None and not value.is_file():
            raise ConfigError(setting, f"{value} does not exist")
    if cfg.comfyui_managed:
        if cfg.comfyui_dir is None or not (cfg.comfyui_dir / "main.py").is_file():
            raise ConfigError("COMFYUI_DIR", "managed mode needs ComfyUI's folder (with main.py)")
        if cfg.comfyui_python is None or not cfg.comfyui_python.is_file():
            raise ConfigError(
                "COMFYUI_PYTHON", "managed mode needs ComfyUI's Python (e.g. its venv's bin/python)"
            )
        if not _is_loopback(urlparse(cfg.comfyui_url).hostname or ""):
            raise ConfigError("COMFYUI_URL", "a managed ComfyUI listens on loopback only")
        _check_managed_args(cfg)
    if (cfg.kohya_python is None) != (cfg.kohya_script is None):
        raise ConfigError(
            "KOHYA_SCRIPT" if cfg.kohya_script is None else "KOHYA_PYTHON", "set both or neither"
        )
    if not (cfg.templates_dir / "txt2img-lora.json").is_file():
        raise ConfigError("PLASMA_TEMPLATES_DIR", f"{cfg.templates_dir} holds no txt2img-lora.json")
    if not _is_loopback(cfg.http_host) and not cfg.allow_remote:
        # The API takes file paths: beyond loopback it would hand the artist's disk to the network.
        raise ConfigError(
            "PLASMA_HTTP_HOST", f"{cfg.http_host} is not loopback (set PLASMA_ALLOW_REMOTE=1 to insist)"
        )
    if len(str(cfg.socket_path)) > MAX_SOCKET_PATH:
        raise ConfigError(
            "PLASMA_SOCKET", f"{cfg.socket_path} is longer than {MAX_SOCKET_PATH} bytes (macOS limit)"
        )
    if cfg.trainer == "kohya" and cfg.kohya_python is None:
        raise ConfigError("PLASMA_TRAINER", "kohya needs KOHYA_PYTHON and KOHYA_SCRIPT")
    return cfg


# --- COMFYUI_ARGS in managed mode: ComfyUI binds where we say, and nowhere else --------------------

#: ComfyUI's argparse takes unambiguous prefixes (allow_abbrev): `--li` is `--listen`, `--po` is
#: `--port` (0.3.75's other flags share no longer prefix with them).
_LISTEN_FLAG = ("--listen", 4)
_PORT_FLAG = ("--port", 4)


def _flag(arg: str, flag: tuple[str, int]) -> tuple[bool, str | None]:
    """Whether `arg` is `flag` (or a prefix argparse takes for it), and its `=value` if any."""
    name, _, value = arg.partition("=")
    full, shortest = flag
    if len(name) >= shortest and full.startswith(name):
        return True, value if "=" in arg else None
    return False, None


def _check_managed_args(cfg: Config) -> None:
    """COMFYUI_ARGS come after our own `--listen 127.0.0.1 --port N`, and argparse keeps the last:
    a `--listen 0.0.0.0` there would hand the artist's unpublished pages to the network (ComfyUI
    has no authentication), and another `--port` would leave plasmad asking COMFYUI_URL in vain."""
    args = list(cfg.comfyui_args)
    url_port = urlparse(cfg.comfyui_url).port or 8188
    for i, arg in enumerate(args):
        nxt = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("-") else None
        is_listen, value = _flag(arg, _LISTEN_FLAG)
        if is_listen:
            # A bare --listen means every interface (ComfyUI's const is "0.0.0.0,::").
            hosts = (value if value is not None else nxt or "0.0.0.0,::").split(",")
            if not all(_is_loopback(h.strip().strip("[]")) for h in hosts if h.strip()):
                raise ConfigError(
                    "COMFYUI_ARGS",
                    f"{arg}{'' if value is not None or nxt is None else ' ' + nxt} would let ComfyUI listen "
                    "beyond loopback, and ComfyUI has no authentication: a managed ComfyUI listens on "
                    "127.0.0.1 only (run ComfyUI yourself with COMFYUI_MANAGED=0 to decide otherwise)",
                )
        is_port, value = _flag(arg, _PORT_FLAG)
        if is_port:
            given = value if value is not None else nxt
            if given is None or not given.isdigit() or int(given) != url_port:
                raise ConfigError(
                    "COMFYUI_ARGS",
                    f"{arg}{'' if value is not None or nxt is None else ' ' + nxt}: a managed ComfyUI "
                    f"listens on COMFYUI_URL's port ({url_port}); set the port there instead",
                )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_socket_path(env: Mapping[str, str] | None = None) -> Path:
    """Where plasmactl finds the daemon: PLASMA_SOCKET from the environment or the config file.

    Unlike load_config this checks nothing else: the CLI must work even where the daemon's other
    settings would not.
    """
    env = os.environ if env is None else env
    if env.get("PLASMA_SOCKET"):
        return _path(env["PLASMA_SOCKET"])
    file_setting = env.get("PLASMA_CONFIG")
    path = Path(file_setting).expanduser() if file_setting else DEFAULT_CONFIG_FILE.expanduser()
    try:
        value = tomllib.loads(path.read_text(encoding="utf-8")).get("PLASMA_SOCKET")
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        value = None
    return _path(value) if value else default_socket_path()
