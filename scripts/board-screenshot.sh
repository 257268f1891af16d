#!/usr/bin/env bash
# Regenerates docs/board.png, the README's picture of the review board: runs the board's pages test
# in a real chromium (a real plasmad, the demo ComfyUI) and keeps its screenshot. On demand only:
# CI runs the same test but leaves docs/ alone. Needs `make setup comfyui` and Debian's chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
BOARD_SCREENSHOT="$PWD/docs/board.png" .venv/bin/python -m pytest -q -p no:cacheprovider \
    tests/test_board_browser.py -k pages_view
echo "wrote docs/board.png"
