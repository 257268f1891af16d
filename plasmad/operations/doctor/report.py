"""What every doctor check shares: the Check line, and the Report that collects them.

A Report is one doctor run: what it examines (the settings, ComfyUI's client, the managed ComfyUI,
the platform), the checks so far, and what ComfyUI answered (`stats`, None when it did not): the
later checks skip or soften what depends on a running ComfyUI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from plasmad import __version__
from plasmad.comfy.client import ComfyClient
from plasmad.comfy.process import ManagedComfyUI
from plasmad.core.config import Config

Status = Literal["ok", "warn", "fail"]


@dataclass
class Check:
    id: str
    requirement: str
    title: str
    status: Status
    detail: str
    fix: str | None = None


class Report:
    def __init__(self, cfg: Config, comfy: ComfyClient, process: ManagedComfyUI | None, on_mac: bool) -> None:
        self.cfg = cfg
        self.comfy = comfy
        self.process = process
        self.on_mac = on_mac
        self.checks: list[Check] = []
        self.stats: dict[str, Any] | None = None
        self.comfy_error = ""

    def add(self, id: str, req: str, title: str, status: Status, detail: str, fix: str | None = None) -> None:
        self.checks.append(Check(id, req, title, status, detail, fix))

    def not_checked(self, id: str, req: str, title: str) -> None:
        self.add(id, req, title, "warn", "not checked: ComfyUI did not answer", "start ComfyUI first")

    def summary(self) -> dict[str, Any]:
        """The report as the API answers it; `ok` is false when any check failed."""
        counts = {s: sum(1 for c in self.checks if c.status == s) for s in ("ok", "warn", "fail")}
        return {
            "ok": counts["fail"] == 0,
            "counts": counts,
            "plasmad": __version__,
            "checks": [asdict(c) for c in self.checks],
        }
