#!/usr/bin/env bash
# The demo (`make demo`): start plasmad with a managed ComfyUI on the bundled demo model, generate
# chapter 1, page 1 into the pipeline's files, print where it landed, and stop everything again.
#
# With your own ComfyUI: set COMFYUI_URL and COMFYUI_DIR (and PLASMA_CHECKPOINT) and the demo
# attaches to it instead. PLASMA_PIPELINE_DIR picks the pipeline (default: this repository, so
# the page lands in ./output/ch-01/raw/).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
bin=$repo/.venv/bin
demo=$repo/.demo
log() { printf '[demo] %s\n' "$*" >&2; }

export PLASMA_PIPELINE_DIR=${PLASMA_PIPELINE_DIR:-$repo}
export PLASMA_STATE_DIR=${PLASMA_STATE_DIR:-$demo/state}
export PLASMA_SOCKET=${PLASMA_SOCKET:-${TMPDIR:-/tmp}/plasma-demo-$(id -u)/plasmad.sock}
export PLASMA_HTTP_PORT=${PLASMA_HTTP_PORT:-3000}
export PLASMA_CONFIG=${PLASMA_CONFIG:-$demo/no-config.toml}
[ -f "$PLASMA_CONFIG" ] || : >"$PLASMA_CONFIG"

size_args=()
if [ -n "${COMFYUI_DIR:-}" ]; then
  log "attaching to your ComfyUI at ${COMFYUI_URL:-http://127.0.0.1:8188} ($COMFYUI_DIR)"
else
  export COMFYUI_MANAGED=1
  export COMFYUI_DIR=$demo/ComfyUI
  export COMFYUI_PYTHON=$demo/comfy-venv/bin/python
  export COMFYUI_URL=${COMFYUI_URL:-http://127.0.0.1:8189}
  export PLASMA_CHECKPOINT=${PLASMA_CHECKPOINT:-plasma-demo-sd15.safetensors}
  export PLASMA_CONTROLNET=${PLASMA_CONTROLNET:-plasma-demo-openpose.safetensors}
  lora=spyke_plasma_demo.safetensors
  if [ "$(uname -s)" != Darwin ]; then
    # No Apple GPU: ComfyUI on the CPU, where fp16 is ~100x slower than fp32; and a smaller page
    # so the demo takes seconds, not minutes.
    export COMFYUI_ARGS=${COMFYUI_ARGS:---cpu}
    export PLASMA_UNET_DTYPE=${PLASMA_UNET_DTYPE:-fp32}
    size_args=(--width 256 --height 384 --steps 12)
  fi
  log "managed ComfyUI from $COMFYUI_DIR on $COMFYUI_URL"
fi

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
"$bin/plasmactl" generate -c 1 --page 1 ${lora:+--lora "$lora"} "${size_args[@]}"
