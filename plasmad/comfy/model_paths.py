"""Where ComfyUI finds a model, found the way ComfyUI finds it (its `folder_paths` and
`utils/extra_config.py`, 0.3.75), so that plasmad accepts exactly the names ComfyUI would load.

- The folders of a kind, in ComfyUI's search order: its own `models/<kind>` folders first (for
  ControlNets `controlnet` then `t2i_adapter`), then those of `extra_model_paths.yaml` beside its
  `main.py`, then those of every `--extra-model-paths-config` file in COMFYUI_ARGS, each appended
  in the file's order, except that a section with `is_default: true` puts its folders first.
- A name is what ComfyUI lists: a file name, or `sub/folder/name` for a file in a subfolder. It is
  never absolute and never has `..`, so it cannot leave those folders by its spelling; symlinks
  inside them are followed, as ComfyUI follows them (artists link multi-GB models from one place).
- The first folder that holds the name wins; a dangling link is skipped, as ComfyUI skips it.

Everything here touches the disk: call it through asyncio.to_thread.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import yaml

from plasmad.core.config import Config
from plasmad.core.errors import PlasmaError, invalid

Kind: TypeAlias = Literal["checkpoints", "loras", "controlnet"]
KINDS: Final[tuple[Kind, ...]] = ("checkpoints", "loras", "controlnet")
_KIND_OF: Final[dict[str, Kind]] = {kind: kind for kind in KINDS}  #: a YAML key -> our kind

# ComfyUI's own folders under models/, per kind (folder_paths.folder_names_and_paths).
_DEFAULT_SUBFOLDERS: Final[dict[Kind, tuple[str, ...]]] = {
    "checkpoints": ("checkpoints",),
    "loras": ("loras",),
    "controlnet": ("controlnet", "t2i_adapter"),
}
# ComfyUI's `supported_pt_extensions`: what it lists in a model folder.
MODEL_SUFFIXES: Final = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})
EXTRA_PATHS_FILE: Final = "extra_model_paths.yaml"
NEAREST: Final = 5  #: how many of the nearest names a refusal lists


@dataclass(frozen=True)
class ModelFolders:
    """The folders ComfyUI searches for each kind of model, in its order."""

    folders: dict[Kind, tuple[Path, ...]]
    models_dir: Path  #: ComfyUI's own models/ (where plasmad puts the LoRAs it promotes or samples)
    config_files: tuple[Path, ...] = ()  #: the extra_model_paths files that were read
    problems: tuple[str, ...] = ()  #: what in them could not be used, for doctor and refusals

    def search(self, kind: Kind) -> tuple[Path, ...]:
        return self.folders[kind]

    def find(self, kind: Kind, name: str) -> Path | None:
        """The file ComfyUI would load for `name` (a checked name), or None."""
        for folder in self.folders[kind]:
            path = folder / name
            if path.is_file():  # follows links; a dangling one is skipped, as ComfyUI does
                return path
        return None

    def files(self, kind: Kind) -> Iterator[tuple[str, Path]]:
        """Every (name, path) ComfyUI lists for `kind`: a name once, from the first folder holding it."""
        seen: set[str] = set()
        for folder in self.folders[kind]:
            for name, path in _walk(folder):
                if name not in seen:
                    seen.add(name)
                    yield name, path

    def names(self, kind: Kind) -> list[str]:
        return sorted(name for name, _ in self.files(kind))

    def shadowed(self, kind: Kind, name: str) -> list[Path]:
        """The folders after the first that also hold `name` (ComfyUI never loads those copies)."""
        holding = [folder for folder in self.folders[kind] if (folder / name).is_file()]
        return holding[1:]


def check_name(name: str, field: str) -> None:
    """A model name as ComfyUI lists it: never absolute, never `..`, no backslash, no empty part."""
    parts = name.split("/")
    if (
        not name
        or "\x00" in name
        or "\\" in name
        or name.startswith("/")
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise invalid(
            field,
            f"{name!r} must be a model file name as ComfyUI lists it, inside its model folders (e.g. "
            "anything-v5.safetensors, or sd15/anything-v5.safetensors in a subfolder): not a path, no '..'",
        )


def not_found(
    folders: ModelFolders, kind: Kind, name: str, field: str, candidates: Sequence[str]
) -> PlasmaError:
    """The refusal for a name no folder holds: where it looked, what is near, why a link failed."""
    nearest = nearest_names(name, candidates)
    searched = folders.search(kind)
    where = ", ".join(str(f) for f in searched) or "(no folder)"
    dangling = [str(f / name) for f in searched if (f / name).is_symlink()]
    message = f"{name!r} is not in {where}"
    if dangling:
        message += f"; {dangling[0]} is a link to a file that is not there"
    if nearest:
        message += f"; nearest: {', '.join(nearest)}"
    elif not candidates:
        message += f"; there is no usable {_KIND_WORD[kind]} there"
    if folders.problems:
        message += f" ({'; '.join(folders.problems)})"
    details: dict[str, Any] = {"nearest": nearest, "searched": [str(f) for f in searched]}
    return invalid(field, message, details)


_KIND_WORD: Final[dict[Kind, str]] = {
    "checkpoints": "checkpoint",
    "loras": "LoRA",
    "controlnet": "ControlNet",
}


def nearest_names(name: str, candidates: Sequence[str], n: int = NEAREST) -> list[str]:
    """The `n` names most like `name`, best first (however unlike: a refusal always shows what could
    be named); the file name counts, not its subfolder."""
    if not candidates:
        return []
    by_base: dict[str, list[str]] = {}
    for c in candidates:
        by_base.setdefault(_stem(c), []).append(c)
    close = difflib.get_close_matches(_stem(name), list(by_base), n=n, cutoff=0.0)
    found = [c for base in close for c in by_base[base]]
    return found[:n]


def _stem(name: str) -> str:
    base = name.rsplit("/", 1)[-1].lower()
    stem, dot, suffix = base.rpartition(".")
    return stem if dot and "." + suffix in MODEL_SUFFIXES else base


def _walk(folder: Path) -> Iterator[tuple[str, Path]]:
    """What ComfyUI lists from one folder: model files at any depth, links followed, `.git` skipped.
    A folder reached twice (a link to a folder above it) is walked once, where ComfyUI would loop."""
    if not folder.is_dir():
        return
    seen: set[tuple[int, int]] = set()
    for dirpath, subdirs, filenames in os.walk(folder, followlinks=True):
        try:
            info = os.stat(dirpath)
        except OSError:
            subdirs[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:
            subdirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        subdirs[:] = sorted(d for d in subdirs if d != ".git")
        for filename in sorted(filenames):
            if os.path.splitext(filename)[1].lower() not in MODEL_SUFFIXES:
                continue
            path = Path(dirpath) / filename
            if path.is_file():
                yield path.relative_to(folder).as_posix(), path


# --- the folders: ComfyUI's own, then extra_model_paths.yaml ---------------------------------------


@dataclass
class _Builder:
    folders: dict[Kind, list[Path]]
    config_files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, kind: Kind, path: Path, is_default: bool) -> None:
        """ComfyUI's add_model_folder_path: appended, or first when is_default; never twice."""
        paths = self.folders[kind]
        if path in paths:
            if is_default and paths[0] != path:
                paths.remove(path)
                paths.insert(0, path)
        elif is_default:
            paths.insert(0, path)
        else:
            paths.append(path)


def model_folders(cfg: Config) -> ModelFolders:
    """The folders of COMFYUI_DIR (which must be set) as its ComfyUI searches them."""
    comfyui_dir = cfg.require_comfyui_dir()
    args = list(cfg.comfyui_args) if cfg.comfyui_managed else []
    return load_folders(comfyui_dir, args)


def load_folders(comfyui_dir: Path, comfyui_args: Sequence[str] = ()) -> ModelFolders:
    """ComfyUI's search order for a ComfyUI in `comfyui_dir` started with `comfyui_args`."""
    # main.py and folder_paths.py find their own folder through realpath (a linked install counts).
    root = Path(os.path.realpath(comfyui_dir))
    base = _flag_values(comfyui_args, "--base-directory")
    models = Path(os.path.abspath(base[-1])) / "models" if base else root / "models"
    builder = _Builder({kind: [models / sub for sub in _DEFAULT_SUBFOLDERS[kind]] for kind in KINDS})
    configs = [root / EXTRA_PATHS_FILE] if (root / EXTRA_PATHS_FILE).is_file() else []
    configs += [Path(p) for p in _flag_values(comfyui_args, "--extra-model-paths-config")]
    for config in configs:
        _read_config(builder, config)
    return ModelFolders(
        folders={kind: tuple(paths) for kind, paths in builder.folders.items()},
        models_dir=models,
        config_files=tuple(builder.config_files),
        problems=tuple(builder.problems),
    )


def _flag_values(argv: Sequence[str], flag: str) -> list[str]:
    """The values of `flag` (`--flag a b`, `--flag=a`; nargs='+' takes words up to the next flag)."""
    values: list[str] = []
    taking = False
    for arg in argv:
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            taking = name == flag and not eq
            if name == flag and eq:
                values.append(value)
        elif taking:
            values.append(arg)
    return values


def _read_config(builder: _Builder, path: Path) -> None:
    """One extra_model_paths file, read as utils/extra_config.py reads it."""
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        builder.problems.append(f"{path} cannot be read: {_one_line(exc)}")
        return
    builder.config_files.append(path)
    if config is None:
        return
    if not isinstance(config, dict):
        builder.problems.append(f"{path} is not a mapping of sections")
        return
    yaml_dir = Path(os.path.dirname(os.path.abspath(path)))
    for section, conf in config.items():
        if conf is None:
            continue
        if not isinstance(conf, dict):
            builder.problems.append(f"{path}: section {section!r} is not a mapping")
            continue
        _read_section(builder, path, yaml_dir, str(section), conf)


def _read_section(builder: _Builder, path: Path, yaml_dir: Path, section: str, conf: dict[Any, Any]) -> None:
    conf = dict(conf)
    base_path: str | None = None
    if "base_path" in conf:
        base_path = os.path.expandvars(os.path.expanduser(str(conf.pop("base_path"))))
        if not os.path.isabs(base_path):
            base_path = os.path.abspath(os.path.join(yaml_dir, base_path))
    is_default = bool(conf.pop("is_default", False))
    for key, value in conf.items():
        kind = _KIND_OF.get(str(key))
        if kind is None:
            continue  # vae, embeddings, custom_nodes...: ComfyUI's business, not a model we name
        if not isinstance(value, str):
            builder.problems.append(f"{path}: {section}.{key} is not a text of folder lines")
            continue
        for line in value.split("\n"):
            if not line:
                continue
            if base_path:
                full = os.path.join(base_path, line)
            elif os.path.isabs(line):
                full = line
            else:
                full = os.path.abspath(os.path.join(yaml_dir, line))
            builder.add(kind, Path(os.path.normpath(full)), is_default)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
