"""What ComfyUI's answers mean: the images of a finished prompt, why one failed, and `ComfyAway`,
the failure that is not the job's (ComfyUI gone, restarted or hung)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from plasmad.core.errors import ErrorCode, PlasmaError


@dataclass(frozen=True)
class ImageRef:
    filename: str
    subfolder: str
    type: str


class ComfyAway(PlasmaError):
    """ComfyUI did not answer, dropped us, forgot our prompt or hung: not the job's fault, so the
    job waits for ComfyUI to be back and tries again. `timed_out`: no answer in time (it may be
    stopped or hung, and come back with our prompt); `hung`: silent past the hang limit."""

    def __init__(
        self, base_url: str, reason: str, *, timed_out: bool = False, hung: bool = False, details: Any = None
    ) -> None:
        super().__init__(ErrorCode.COMFYUI_UNAVAILABLE, f"ComfyUI at {base_url} {reason}", details=details)
        self.reason = reason
        self.timed_out = timed_out or hung
        self.hung = hung


def describe(exc: BaseException, timeout: float | None = None) -> str:
    """An exception as words: never empty (aiohttp's timeouts have an empty str())."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return f"no answer within {timeout:g} s" if timeout else "no answer in time"
    return str(exc).strip() or type(exc).__name__


def unavailable(base_url: str, exc: BaseException | str, timeout: float | None = None) -> ComfyAway:
    if isinstance(exc, str):
        return ComfyAway(base_url, f"did not answer: {exc}")
    timed_out = isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError)
    return ComfyAway(base_url, f"did not answer: {describe(exc, timeout)}", timed_out=timed_out)


def outcome(prompt_id: str, entry: dict[str, Any], require_images: bool = True) -> list[ImageRef]:
    """The images of a finished history entry, or the PlasmaError saying why there are none."""
    status = entry.get("status", {})
    if status.get("status_str") == "error" or not status.get("completed", True):
        raise PlasmaError(
            ErrorCode.COMFYUI_REJECTED,
            failure_message(status.get("messages", [])),
            details={"prompt_id": prompt_id},
        )
    images = [
        ImageRef(str(img.get("filename")), str(img.get("subfolder", "")), str(img.get("type", "output")))
        for node in (entry.get("outputs") or {}).values()
        for img in (node.get("images") or [])
        if img.get("type", "output") == "output"
    ]
    if not images and require_images:
        raise PlasmaError(ErrorCode.COMFYUI_REJECTED, f"ComfyUI finished prompt {prompt_id} with no image")
    return images


def failure_message(messages: list[Any]) -> str:
    for item in messages:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict)):
            continue
        name, data = item
        if name == "execution_error":
            return (
                f"ComfyUI failed in {data.get('node_type', '?')} (node {data.get('node_id', '?')}): "
                f"{data.get('exception_type', '')}: {str(data.get('exception_message', '')).strip()}"
            )
        if name == "execution_interrupted":
            return "interrupted in ComfyUI"
    return "ComfyUI reported an error without a message"


def rejection_message(body: dict[str, Any]) -> str:
    """ComfyUI's 400 body (error + node_errors) as one line a person can act on."""
    error = body.get("error") or {}
    parts = [str(error.get("message", "ComfyUI refused the graph")).rstrip(".")]
    for node_id, node in (body.get("node_errors") or {}).items():
        for err in node.get("errors", [])[:2]:
            parts.append(
                f"node {node_id} ({node.get('class_type', '?')}): {err.get('message', '')}"
                f" {err.get('details', '')}".strip()
            )
    return "; ".join(parts)
