"""plasmad: the Plasma generation daemon (ComfyUI generation and LoRA training behind one GPU lock)."""

__version__ = "0.1.0"
