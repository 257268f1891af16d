"""A LoRA training's material for tests: a dataset in kohya's layout that passes the gate, the
trigger word its captions start with, and the LoRA's name with the checkpoint files a training of
it saves at steps 2, 4 and 6 (kohya's naming, which plasmad's ComfyUI trainer follows)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

TRIGGER = "spyke_plasma_v1"
NAME = "spyke_test"
STEP_FILES = [f"{NAME}-step0000000{n}.safetensors" for n in (2, 4, 6)]


def make_dataset(root: Path, originals: int = 15) -> Path:
    """kohya's layout, passing the gate: <repeats>_<trigger>/ with 512 px images and captions."""
    dataset = root / "spyke"
    folder = dataset / f"10_{TRIGGER}"
    folder.mkdir(parents=True)
    for i in range(originals):
        Image.new("RGB", (512, 512), (10 * i, 200 - 5 * i, 40 + 3 * i)).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(f"{TRIGGER}, full body, standing, white background")
    return dataset
