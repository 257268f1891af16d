# The demo's settings, sourced by scripts/demo.sh and scripts/serve.sh (`make serve`): plasmad with
# a managed ComfyUI on the bundled demo model in .demo/ (PLASMA_DEMO_DIR), or, when COMFYUI_DIR is
# set, attached to your own ComfyUI. Sets `repo`, `bin`, `demo`, `log`, and for the demo model the
# generation arguments `lora` and `size_args`. Settings already in the environment win.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$repo/.venv/bin
demo=${PLASMA_DEMO_DIR:-$repo/.demo}
log() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }

export PLASMA_PIPELINE_DIR=${PLASMA_PIPELINE_DIR:-$repo}
export PLASMA_STATE_DIR=${PLASMA_STATE_DIR:-$demo/state}
export PLASMA_HTTP_PORT=${PLASMA_HTTP_PORT:-3000}
export PLASMA_CONFIG=${PLASMA_CONFIG:-$demo/no-config.toml}
[ -f "$PLASMA_CONFIG" ] || : >"$PLASMA_CONFIG"

size_args=()
lora=
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
    # No Apple GPU: ComfyUI on the CPU (PLASMA_UNET_DTYPE=auto then puts the UNet at fp32, fp16
    # being ~100x slower there); and a smaller page so the demo takes seconds, not minutes.
    export COMFYUI_ARGS=${COMFYUI_ARGS:---cpu}
    size_args=(--width 256 --height 384 --steps 12)
  fi
  log "managed ComfyUI from $COMFYUI_DIR on $COMFYUI_URL"
fi
