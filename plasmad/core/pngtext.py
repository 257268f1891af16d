"""A text chunk added to a PNG without decoding or re-encoding its pixels.

ComfyUI's SaveImage writes the graph into `tEXt` chunks ("prompt", "workflow"); plasmad adds its
own beside them (the fingerprints of the files that made the image). Re-saving the image through
Pillow would re-compress the pixel data (other bytes, maybe other metadata); splicing one chunk in
before the first IDAT keeps every byte of ComfyUI's file as it was. Pillow reads it back as
`Image.open(path).text[keyword]`.
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_TYPES = (b"tEXt", b"iTXt", b"zTXt")


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(type, whole chunk bytes) in order; ValueError if `png` is not a well-formed PNG."""
    if not png.startswith(SIGNATURE):
        raise ValueError("not a PNG file")
    chunks, pos = [], len(SIGNATURE)
    while pos < len(png):
        if pos + 12 > len(png):
            raise ValueError("truncated PNG chunk")
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        end = pos + 12 + length
        if end > len(png):
            raise ValueError("truncated PNG chunk")
        kind = png[pos + 4 : pos + 8]
        chunks.append((kind, png[pos:end]))
        pos = end
        if kind == b"IEND":
            break
    if not chunks or chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND":
        raise ValueError("a PNG must start with IHDR and end with IEND")
    return chunks


def _keyword(chunk: bytes) -> bytes:
    return chunk[8:].split(b"\x00", 1)[0]


def text_chunk(keyword: str, text: str) -> bytes:
    """One tEXt chunk (Latin-1, as the format says; plasmad writes ASCII JSON into it)."""
    key = keyword.encode("latin-1")
    if not 1 <= len(key) <= 79 or b"\x00" in key:
        raise ValueError("a PNG text keyword is 1-79 Latin-1 characters, no NUL")
    data = key + b"\x00" + text.encode("latin-1")
    kind = b"tEXt"
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def add_text(png: bytes, keyword: str, text: str) -> bytes:
    """`png` with a text chunk `keyword` holding `text`, before the first IDAT; a text chunk of
    the same keyword already there is replaced (so adding twice gives the same bytes)."""
    new = text_chunk(keyword, text)
    out, placed = [SIGNATURE], False
    for kind, chunk in _chunks(png):
        if kind in _TEXT_TYPES and _keyword(chunk) == keyword.encode("latin-1"):
            continue
        if kind == b"IDAT" and not placed:
            out.append(new)
            placed = True
        out.append(chunk)
    if not placed:
        raise ValueError("a PNG without image data (no IDAT chunk)")
    return b"".join(out)
