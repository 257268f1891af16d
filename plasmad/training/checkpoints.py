"""A training's checkpoints on disk: the one place that finds them.

Both backends write kohya's names into the training's `output/` folder: `<name>-step%08d.safetensors`
at each saveEverySteps, then the final `<name>.safetensors`. A checkpoint is listed whatever its
state; `complete` says whether it is whole (a process killed while saving leaves a short file),
judged by its safetensors header alone. Blocking: call these through asyncio.to_thread.
"""

from __future__ import annotations

import re
from pathlib import Path

from plasmad.comfy.modelfiles import safetensors_complete
from plasmad.core.jobs import StateModel


class Checkpoint(StateModel):
    """One checkpoint file, as a training's state and status list it."""

    step: int | None  #: None: the final file
    file: str
    path: Path
    bytes: int
    complete: bool  #: the safetensors file is whole


def scan_checkpoints(output_dir: Path, output_name: str) -> list[tuple[int | None, Path]]:
    """kohya's files in output_dir: `<name>-step%08d.safetensors` by step, then the final
    `<name>.safetensors` with step None."""
    step_re = re.compile(re.escape(output_name) + r"-step(\d+)\.safetensors")
    steps: list[tuple[int, Path]] = []
    final: Path | None = None
    try:
        entries = list(output_dir.iterdir())
    except FileNotFoundError:
        return []
    for path in entries:
        if not path.is_file():
            continue
        if path.name == f"{output_name}.safetensors":
            final = path
        elif (m := step_re.fullmatch(path.name)) is not None:
            steps.append((int(m.group(1)), path))
    found: list[tuple[int | None, Path]] = [(step, path) for step, path in sorted(steps)]
    if final is not None:
        found.append((None, final))
    return found


def list_checkpoints(output_dir: Path, output_name: str) -> list[Checkpoint]:
    """The checkpoints on disk, by step, then the final file, each with its size and whether it is
    whole (reads headers only)."""
    found = []
    for step, path in scan_checkpoints(output_dir, output_name):
        try:
            size = path.stat().st_size
        except OSError:
            continue  # removed since the scan
        found.append(
            Checkpoint(step=step, file=path.name, path=path, bytes=size, complete=safetensors_complete(path))
        )
    return found
