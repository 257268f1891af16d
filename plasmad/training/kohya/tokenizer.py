"""kohya's offline CLIP tokenizer (`--tokenizer_cache_dir DIR` in KOHYA_EXTRA_ARGS): there, and
saying the 77 tokens SD 1.5's text encoder takes.

sd-scripts loads `DIR/openai_clip-vit-large-patch14/` when it exists, else downloads the tokenizer
from the hub and saves it there. It takes the prompt length from the tokenizer's
`model_max_length`, and the tokenizer ComfyUI ships (comfy/sd1_tokenizer, the handiest copy on an
offline machine) declares 8192: a folder made from it trains with prompts 8192 tokens long, which
the 77 positions of CLIP-L cannot take.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

FLAG: Final = "--tokenizer_cache_dir"
SD15_TOKENIZER: Final = "openai_clip-vit-large-patch14"  #: sd-scripts' folder: the model id, '/' -> '_'
CLIP_MAX_LENGTH: Final = 77
_MAKE_IT: Final = (
    "copy a CLIP-L tokenizer there (ComfyUI ships one: comfy/sd1_tokenizer) and set \"model_max_length\": "
    f"{CLIP_MAX_LENGTH} in its tokenizer_config.json"
)


@dataclass
class TokenizerCheck:
    folder: Path | None = None  #: the tokenizer folder kohya will load, when one is configured
    max_length: int | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def cache_dir(extra_args: Sequence[str]) -> str | None:
    """The value of --tokenizer_cache_dir in kohya's extra arguments (argparse: the last one wins)."""
    value: str | None = None
    for i, arg in enumerate(extra_args):
        if arg == FLAG and i + 1 < len(extra_args):
            value = extra_args[i + 1]
        elif arg.startswith(FLAG + "="):
            value = arg.split("=", 1)[1]
    return value


def check_tokenizer(extra_args: Sequence[str], env: Mapping[str, str] | None = None) -> TokenizerCheck:
    """The offline tokenizer folder, when KOHYA_EXTRA_ARGS names one (blocking: reads a file)."""
    env = os.environ if env is None else env
    offline = env.get("HF_HUB_OFFLINE", "") not in ("", "0")
    check = TokenizerCheck()
    configured = cache_dir(extra_args)
    if configured is None:
        if offline:
            check.warnings.append(
                f"HF_HUB_OFFLINE is set and KOHYA_EXTRA_ARGS has no {FLAG}: kohya finds the CLIP tokenizer "
                f"only if the hub cache already holds it; {FLAG} DIR with {SD15_TOKENIZER}/ in it is surer"
            )
        return check
    # kohya runs in its own folder: a relative DIR would be read from there, so it must be absolute.
    if not os.path.isabs(configured):
        check.errors.append(f"{FLAG} {configured} must be an absolute path (kohya runs in its own folder)")
        return check
    check.folder = Path(configured) / SD15_TOKENIZER
    _read(check, check.folder, offline)
    return check


def _read(check: TokenizerCheck, folder: Path, offline: bool) -> None:
    if not folder.is_dir():
        if offline:
            check.warnings.append(
                f"{folder} does not exist and HF_HUB_OFFLINE is set: kohya finds the CLIP tokenizer only "
                f"if the hub cache already holds it; {_MAKE_IT}"
            )
        else:
            check.warnings.append(
                f"{folder} does not exist yet: kohya downloads the CLIP tokenizer into it on its first run"
            )
        return
    config_file = folder / "tokenizer_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        check.errors.append(f"{config_file} cannot be read ({exc}): {_MAKE_IT}")
        return
    value = config.get("model_max_length") if isinstance(config, dict) else None
    if not isinstance(value, int | float) or isinstance(value, bool):
        check.errors.append(
            f"{config_file} does not say model_max_length: set \"model_max_length\": {CLIP_MAX_LENGTH} in it"
        )
        return
    check.max_length = int(value)
    if check.max_length != CLIP_MAX_LENGTH:
        check.errors.append(
            f"{config_file} says model_max_length {check.max_length}; kohya takes the prompt length from it "
            f"and SD 1.5's text encoder takes {CLIP_MAX_LENGTH} tokens (ComfyUI's bundled tokenizer says "
            f"8192): set \"model_max_length\": {CLIP_MAX_LENGTH} in it"
        )
