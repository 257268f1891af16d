"""Captions (DATA-02): `<trigger>, [mirrored,] <framing>, <pose/action>, <background>`.

Owns the caption rule: the trigger word and its check, the `mirrored` tag (and the `-mirrored` suffix
that marks a flipped copy's files), formatting and parsing captions, and reading a caption file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from plasmad.core.errors import invalid

DEFAULT_TRIGGER = "spyke_plasma_v1"
MIRRORED_TAG = "mirrored"
MIRRORED_SUFFIX = "-mirrored"
_TRIGGER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class CaptionFields:
    """The three described fields of a caption. framing and background are one tag each; the pose
    may be several tags ("standing, looking at viewer"), so it is whatever lies between them."""

    framing: str
    pose: str
    background: str


@dataclass(frozen=True)
class ParsedCaption:
    trigger: str
    mirrored: bool
    fields: CaptionFields


def _tags(text: str) -> list[str]:
    return [" ".join(t.split()) for t in text.split(",")]


def _field_problem(name: str, value: str, *, one_tag: bool, trigger: str | None) -> str | None:
    if "\n" in value or "\r" in value:
        return f"{name} must be on one line"
    tags = _tags(value)
    if any(not t for t in tags):
        return f"{name} is empty" if len(tags) == 1 else f"{name} has an empty tag"
    if one_tag and len(tags) > 1:
        return f"{name} must be one tag, without commas ({value.strip()!r})"
    reserved = {MIRRORED_TAG} | ({trigger.lower()} if trigger else set())
    for tag in tags:
        if tag.lower() in reserved:
            return f"{name} may not contain {tag!r}: it has its own place in the caption"
    return None


def _fields_problem(fields: CaptionFields, trigger: str | None) -> tuple[str, str] | None:
    for name, value, one_tag in (
        ("framing", fields.framing, True),
        ("pose", fields.pose, False),
        ("background", fields.background, True),
    ):
        problem = _field_problem(name, value, one_tag=one_tag, trigger=trigger)
        if problem:
            return name, problem
    return None


def check_trigger(trigger: str) -> str:
    """The trigger word, checked: it names kohya's folder and leads every caption."""
    if not _TRIGGER_RE.fullmatch(trigger):
        raise invalid("trigger", f"{trigger!r} must be letters, digits, '_', '.', '-' (like spyke_plasma_v1)")
    if trigger.lower() == MIRRORED_TAG:
        raise invalid("trigger", f"{MIRRORED_TAG!r} is reserved for flipped copies")
    return trigger


def format_caption(trigger: str, framing: str, pose: str, background: str, *, mirrored: bool = False) -> str:
    """`spyke_plasma_v1, [mirrored, ]close-up, standing, looking at viewer, white background`."""
    check_trigger(trigger)
    fields = CaptionFields(framing, pose, background)
    problem = _fields_problem(fields, trigger)
    if problem:
        raise invalid(problem[0], problem[1])
    tags = [trigger, *([MIRRORED_TAG] if mirrored else []), *_tags(framing), *_tags(pose), *_tags(background)]
    return ", ".join(tags)


def _parse_caption(text: str, trigger: str | None) -> ParsedCaption | str:
    """The parsed caption, or why it breaks the rule (a reason for people)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return "caption is empty"
    if len(lines) > 1:
        return "caption has more than one line (kohya reads only the first)"
    tags = _tags(lines[0])
    first = tags[0]
    if trigger is not None and first != trigger:
        if trigger in tags:
            return f"trigger word {trigger!r} is not first"
        return f"does not start with the trigger word {trigger!r}"
    if not first:
        return "starts with an empty tag"
    mirrored = len(tags) > 1 and tags[1].lower() == MIRRORED_TAG
    rest = tags[2:] if mirrored else tags[1:]
    if len(rest) < 3:
        return f"has {len(rest)} field(s) after the trigger word, needs 3: framing, pose/action, background"
    if any(not t for t in rest):
        return "has an empty field"
    fields = CaptionFields(rest[0], ", ".join(rest[1:-1]), rest[-1])
    problem = _fields_problem(fields, first)
    if problem:
        return problem[1]
    return ParsedCaption(first, mirrored, fields)


def parse_caption(text: str, trigger: str | None = None) -> ParsedCaption:
    """Parse a caption by the rule: the trigger word first, then framing, pose/action, background
    (the `mirrored` tag allowed right after the trigger). Raises INVALID_INPUT naming `caption`."""
    parsed = _parse_caption(text, trigger)
    if isinstance(parsed, str):
        raise invalid("caption", parsed)
    return parsed


def caption_fields_from_text(text: str, trigger: str) -> CaptionFields:
    """What `plasmactl dataset add --caption` takes: `framing, pose..., background`, with or without
    the trigger word in front. An original is never `mirrored`; flips are made here."""
    tags = _tags(text)
    if tags and tags[0] == trigger:
        parsed = parse_caption(text, trigger)
        if parsed.mirrored:
            raise invalid("caption", f"{MIRRORED_TAG!r} is added to the flipped copy, not to an original")
        return parsed.fields
    if tags and tags[0].lower() == MIRRORED_TAG:
        raise invalid("caption", f"{MIRRORED_TAG!r} is added to the flipped copy, not to an original")
    if len(tags) < 3:
        raise invalid("caption", f"has {len(tags)} field(s), needs 3: framing, pose/action, background")
    fields = CaptionFields(tags[0], ", ".join(tags[1:-1]), tags[-1])
    problem = _fields_problem(fields, trigger)
    if problem:
        raise invalid("caption", problem[1])
    return fields


def _read_caption(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
