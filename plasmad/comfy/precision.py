"""The UNet's precision in the graph (GEN-05), from PLASMA_UNET_DTYPE and ComfyUI's device.

`auto` (the default): fp16 where ComfyUI reports an mps or cuda device (the Mac's Apple GPU, as
GEN-05 wants), fp32 where it reports only a CPU, where fp16 is about 100 times slower (a 3x3
conv measured 2.66 s at fp16 against 0.02 s at fp32). An explicit fp16 / fp32 / bf16 / default
always wins. The device is the monitor's last known one (plasmad.comfy.monitor), so a job queued
while ComfyUI is away still gets the right precision.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

GPU_DEVICES = frozenset({"mps", "cuda"})


@dataclass(frozen=True)
class UnetDtype:
    value: str  #: what the graph's ModelComputeDtype node gets
    why: str  #: for people: the log, /health, the generation log
    known: bool = True  #: False: `auto` with no device known yet (decided again when the job starts)

    def to_json(self) -> dict[str, object]:
        return {"value": self.value, "why": self.why}


def resolve_unet_dtype(setting: str, device_types: Iterable[str] | None) -> UnetDtype:
    """The precision to put in the graph for PLASMA_UNET_DTYPE=`setting` on these devices."""
    if setting != "auto":
        return UnetDtype(setting, f"PLASMA_UNET_DTYPE={setting}")
    types = sorted(set(device_types or ()))
    if not types:
        # GEN-05's own choice; the worker decides again once ComfyUI has said what it runs on.
        return UnetDtype("fp16", "auto: ComfyUI's device is not known yet (GEN-05: fp16)", known=False)
    gpus = [t for t in types if t in GPU_DEVICES]
    if gpus:
        return UnetDtype("fp16", f"auto: ComfyUI reports a {'/'.join(gpus)} device")
    return UnetDtype(
        "fp32", f"auto: ComfyUI reports only {'/'.join(types)} (fp16 is about 100x slower on a CPU)"
    )
