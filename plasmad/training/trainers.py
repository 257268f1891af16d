"""Which trainer runs a training: kohya where it is configured (or asked for), else ComfyUI's own
nodes. Asked at submission (the backend's `prepare`) and by the queue's handler (its `run`)."""

from __future__ import annotations

from plasmad.comfy.client import ComfyClient
from plasmad.comfy.monitor import ComfyMonitor
from plasmad.core.config import Config
from plasmad.training.backend import TrainerBackend
from plasmad.training.comfy_trainer.backend import ComfyTrainer
from plasmad.training.kohya.backend import KohyaTrainer


def trainer_name(cfg: Config) -> str:
    """kohya where it is configured (or asked for), else ComfyUI's own nodes."""
    if cfg.trainer == "auto":
        return "kohya" if cfg.kohya_python is not None and cfg.kohya_script is not None else "comfyui"
    return cfg.trainer


def make_backend(name: str | None, cfg: Config, comfy: ComfyClient, monitor: ComfyMonitor) -> TrainerBackend:
    if name == "kohya":
        return KohyaTrainer(cfg)
    return ComfyTrainer(cfg, comfy, monitor)
