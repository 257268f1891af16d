#!/usr/bin/env bash
# The demo (`make demo`): start plasmad with a managed ComfyUI on the bundled demo model, generate
# chapter 1, page 1 into the pipeline's files, print where it landed, and stop everything again.
#
# With your own ComfyUI: set COMFYUI_URL and COMFYUI_DIR (and PLASMA_CHECKPOINT) and the demo
# attaches to it instead. PLASMA_PIPELINE_DIR picks the pipeline (default: this repository, so
# the page lands in ./output/ch-01/raw/).
set -euo pipefail

# Its own socket, so that the demo never meets a plasmad you run yourself.
export PLASMA_SOCKET=${PLASMA_SOCKET:-${TMPDIR:-/tmp}/plasma-demo-$(id -u)/plasmad.sock}
# shellcheck source=scripts/demo-env.sh
source "$(dirname "$0")/demo-env.sh"

prompt=$PLASMA_PIPELINE_DIR/prompts/ch-01/p001.txt
if [ ! -f "$prompt" ]; then
  mkdir -p "$(dirname "$prompt")"
  cp "$repo/demo/prompts/ch-01/p001.txt" "$prompt"
  log "wrote the demo page prompt to $prompt"
fi

"$bin/plasmad" >"${PLASMA_STATE_DIR}.demo.log" 2>&1 &
daemon=$!
stop() {
  if kill -0 "$daemon" 2>/dev/null; then
    "$bin/plasmactl" shutdown >/dev/null 2>&1 || kill -TERM "$daemon"
    wait "$daemon" || true
  fi
}
trap stop EXIT
for _ in $(seq 1 600); do
  "$bin/plasmactl" health >/dev/null 2>&1 && break
  kill -0 "$daemon" 2>/dev/null || { cat "${PLASMA_STATE_DIR}.demo.log" >&2; exit 1; }
  sleep 0.5
done
"$bin/plasmactl" health
log "generating chapter 1, page 1"
# `size_args` is empty on a Mac: the `+` form keeps macOS's bash 3.2 quiet under `set -u`.
"$bin/plasmactl" generate -c 1 --page 1 ${lora:+--lora "$lora"} ${size_args[@]+"${size_args[@]}"}
