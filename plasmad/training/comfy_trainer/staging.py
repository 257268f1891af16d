"""The files the ComfyUI backend puts into ComfyUI's folders, and takes out again.

ComfyUI's nodes read and write only inside its own `input/`, `output/` and `models/loras/`, so a
training gets a `plasma-train/<id>/` folder in each: a folder plasmad owns and removes when the
training ends, so the artist's own files are never touched.

- input: the dataset, staged at the training resolution (ComfyUI's dataset node takes images as
  they are, while kohya resizes as it trains);
- output: what SaveLoRA writes for each chunk;
- loras: the last chunk's LoRA, for the next chunk's `existing_lora` (the node only loads from there).

Blocking: call these through asyncio.to_thread.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image, ImageOps

from plasmad import dataset
from plasmad.training.backend import TrainSpec

OWN_FOLDER = "plasma-train"  #: under ComfyUI's input/, output/ and models/loras/: plasmad's own


def comfy_folders(argv: list[str], root: Path, training_id: str) -> dict[str, Path]:
    """The input/, output/ and models/loras/ subfolders a training owns in the ComfyUI at `root`
    started with `argv` (which may move its input and output folders)."""
    base = _flag(argv, "--base-directory", root, root)
    return {
        "input": _flag(argv, "--input-directory", base / "input", root) / OWN_FOLDER / training_id,
        "output": _flag(argv, "--output-directory", base / "output", root) / OWN_FOLDER / training_id,
        "loras": base / "models" / "loras" / OWN_FOLDER / training_id,
    }


def _flag(argv: list[str], flag: str, default: Path, relative_to: Path) -> Path:
    """The value of `--flag X` / `--flag=X` in ComfyUI's argv (relative: to its folder)."""
    value: str | None = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    if value is None:
        return default
    path = Path(value).expanduser()
    return path if path.is_absolute() else relative_to / path


def remove_folders(folders: dict[str, Path]) -> None:
    for path in folders.values():
        if path.parent.name != OWN_FOLDER:
            continue  # only ever our own plasma-train/<id> folders
        shutil.rmtree(path, ignore_errors=True)
        try:
            path.parent.rmdir()  # plasma-train/ itself, when no other training uses it
        except OSError:
            pass


def stage_dataset(spec: TrainSpec, folder: Path) -> int:
    """The training images and captions, at the training resolution, flat in `folder` (blocking).

    kohya resizes while training; ComfyUI's dataset node takes images as they are, so they are
    resized here. With a reg set, as many reg images as training images join, under their captions.
    """
    shutil.rmtree(folder, ignore_errors=True)  # a leftover of an earlier attempt of this training
    folder.mkdir(parents=True)
    images = sorted(p for p in spec.image_dir.iterdir() if p.suffix.lower() in dataset.KOHYA_IMAGE_EXTS)
    count = 0
    for path in images:
        _stage_one(path, folder / f"{path.stem}.png", spec.resolution)
        count += 1
    if spec.reg_dir is not None:
        reg = sorted(
            p
            for sub in sorted(spec.reg_dir.iterdir())
            if sub.is_dir()
            for p in sub.iterdir()
            if p.suffix.lower() in dataset.KOHYA_IMAGE_EXTS
        )
        for path in reg[: len(images)]:
            _stage_one(path, folder / f"reg-{path.parent.name}-{path.stem}.png", spec.resolution)
            count += 1
    return count


def _stage_one(source: Path, target: Path, size: int) -> None:
    caption = source.with_suffix(dataset.CAPTION_EXT).read_text(encoding="utf-8").strip().splitlines()
    with Image.open(source) as im:
        im.load()
        picture = ImageOps.fit(im.convert("RGB"), (size, size), Image.Resampling.LANCZOS)
    picture.save(target)
    target.with_suffix(".txt").write_text(caption[0] if caption else "", encoding="utf-8")


def saved_file(output_root: Path, prefix: str) -> Path | None:
    """SaveLoRA's file for `prefix` (it appends `_<counter>_.safetensors`), the newest if several."""
    folder = output_root / Path(prefix).parent
    stem = Path(prefix).name
    found = sorted(folder.glob(f"{stem}_*_.safetensors"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def keep_for_next_chunk(native: Path, folder: Path, spec: TrainSpec, end: int) -> str:
    """Move the chunk's file into loras/plasma-train/<id>/ under the name TrainLoraNode parses
    (`..._<steps>_steps_...`); the previous one goes. Returns the name the node's input takes."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.safetensors"):
        old.unlink()
    target = folder / f"{spec.training_id}_{end}_steps_.safetensors"
    shutil.copyfile(native, target)
    return f"{OWN_FOLDER}/{spec.training_id}/{target.name}"
