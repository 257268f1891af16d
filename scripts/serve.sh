#!/usr/bin/env bash
# `make serve`: plasmad in the foreground with the demo's settings (scripts/demo-env.sh): a managed
# ComfyUI on the bundled demo model, or your own ComfyUI when COMFYUI_DIR is set. Its socket is the
# default one (or PLASMA_SOCKET), so plasmactl in another terminal finds it with no setting.
# Ctrl-C, or `plasmactl shutdown`, stops it in order (ComfyUI with it).
set -euo pipefail

# shellcheck source=scripts/demo-env.sh
source "$(dirname "$0")/demo-env.sh"

log "plasmad in the foreground (state: $PLASMA_STATE_DIR, HTTP: 127.0.0.1:$PLASMA_HTTP_PORT)"
# `size_args` may be empty (a Mac): the `+` form keeps macOS's bash 3.2 quiet under `set -u`.
hint="plasmactl generate -c 1 --page 1${lora:+ --lora $lora}${size_args[*]+ ${size_args[*]}}"
log "in another terminal: export PATH=$bin:\$PATH; plasmactl health; $hint"
log "stop it: Ctrl-C here, or plasmactl shutdown"
exec "$bin/plasmad"
