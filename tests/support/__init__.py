"""Helpers the test files share; no test file imports another.

- app: plasmad in-process over the FAKE ComfyUI (config, service stack, HTTP app, polling, errors, RPC)
- cli: plasmactl in-process against plasmad's socket API run in a background thread
- processes: real child processes: the demo ComfyUI, plasmad (DaemonEnv, DaemonProcess), ports
- modelfiles: FAKE safetensors headers and a ComfyUI models/ folder of them
- kohya: a FAKE kohya install for the preflight (sd-scripts' layout, a python answering the probe)
- training: a dataset that passes the gate, its trigger word, a LoRA's name and step checkpoints
- images: figures and reference sheets drawn with Pillow

The fixtures built on them (comfyui, daemon_env, start_daemon, open_api, api, daemon) are in
tests/conftest.py; the FAKE servers and programs themselves are in tests/fakes/.
"""
