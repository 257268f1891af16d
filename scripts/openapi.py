"""Write plasmad's OpenAPI document (what GET /openapi.json serves) to a file, or to stdout.

    .venv/bin/python scripts/openapi.py clients/typescript/openapi.json

The TypeScript client's types are generated from that file (`make ts-types`); tests/test_ts_client.py
fails when it differs from what the daemon serves.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path


def document_text() -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from plasmad.api import http, openapi
        from plasmad.api.methods import methods

    return json.dumps(openapi.build(http.routes(), methods()), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = document_text()
    if not argv:
        sys.stdout.write(text)
        return 0
    out = Path(argv[0])
    if not out.exists() or out.read_text() != text:
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text)
        tmp.replace(out)  # a reader never sees half a document
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(main(sys.argv[1:]))
