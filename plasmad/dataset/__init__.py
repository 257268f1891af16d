"""Spyke's training dataset (DATA-01..04): crops, captions, flips, kohya's folder layout, and the gate.

Synchronous and blocking: the daemon calls it through asyncio.to_thread, plasmactl directly.

The layout is the one kohya's train_network.py reads with `--train_data_dir <dataset>` and
`--reg_data_dir <dataset>-reg`:

    <dataset>/<repeats>_<trigger>/<name>.png + <name>.txt        originals
    <dataset>/<repeats>_<trigger>/<name>-mirrored.png + .txt     their horizontal flips
    <dataset>-reg/1_<class>/reg-0000.png + reg-0000.txt          regularisation images

kohya takes the repeat count from the folder name, so the folder is renamed whenever the image
count changes. Files that already exist are never overwritten: identical content is "kept", anything
else is a CONFLICT raised before a single file is written.

One module per concern: captions (the caption rule), crops (crops.json and `suggest`), images
(background, flattening, normalisation, pixel hashes), layout (kohya's folders; build, add, repeats),
reg (the regularisation set), check (the gate) and sheet (the contact sheet). This package
re-exports the names the rest of plasma uses, so `from plasmad import dataset` is all it needs.
"""

from plasmad.dataset.captions import (
    DEFAULT_TRIGGER,
    CaptionFields,
    caption_fields_from_text,
    check_trigger,
    format_caption,
    parse_caption,
)
from plasmad.dataset.check import CheckReport, ProblemKind, check_dataset, require_dataset
from plasmad.dataset.crops import PLACEHOLDER, default_spec_path, load_spec, suggest_crops, write_spec
from plasmad.dataset.crops import _foreground_mask as _foreground_mask  # tests/support draws with it
from plasmad.dataset.images import colour_hex, detect_background, normalise, parse_colour
from plasmad.dataset.layout import (
    CAPTION_EXT,
    KOHYA_IMAGE_EXTS,
    BuildResult,
    add_image,
    build_from_sheet,
    derive_repeats,
    find_image_dir,
    update_repeats,
)
from plasmad.dataset.reg import (
    REG_BASE_SEED,
    REG_DEFAULT_CLASS,
    REG_NEGATIVE_PROMPT,
    RegItem,
    missing_reg_items,
    reg_dir,
    reg_items,
    reg_prompt,
    reg_root,
    save_reg_image,
)
from plasmad.dataset.sheet import contact_sheet

__all__ = [
    "CAPTION_EXT",
    "DEFAULT_TRIGGER",
    "KOHYA_IMAGE_EXTS",
    "PLACEHOLDER",
    "REG_BASE_SEED",
    "REG_DEFAULT_CLASS",
    "REG_NEGATIVE_PROMPT",
    "BuildResult",
    "CaptionFields",
    "CheckReport",
    "ProblemKind",
    "RegItem",
    "add_image",
    "build_from_sheet",
    "caption_fields_from_text",
    "check_dataset",
    "check_trigger",
    "colour_hex",
    "contact_sheet",
    "default_spec_path",
    "derive_repeats",
    "detect_background",
    "find_image_dir",
    "format_caption",
    "load_spec",
    "missing_reg_items",
    "normalise",
    "parse_caption",
    "parse_colour",
    "reg_dir",
    "reg_items",
    "reg_prompt",
    "reg_root",
    "require_dataset",
    "save_reg_image",
    "suggest_crops",
    "update_repeats",
    "write_spec",
]
