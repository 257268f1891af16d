"""Whether kohya can train here, and how (INFRA-03, LORA-04): in seconds, before anything is queued.

A small probe runs inside kohya's own Python: it imports torch, torchvision and accelerate (each
failure told with its own message) and finds the device torch would train on. fp16 is used where
that device allows it; the rest becomes warnings (a CPU only torch, an old accelerate) or errors (a
package that does not import, an offline tokenizer that is not SD 1.5's) worded for the artist.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

from plasmad.core import processes
from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.training.kohya.command import KOHYA_ENV, MixedPrecision, abs_path
from plasmad.training.kohya.tokenizer import TokenizerCheck, check_tokenizer

Device: TypeAlias = Literal["cuda", "mps", "cpu"]

PROBE_TIMEOUT_S: Final = 60.0
IMPORTED: Final = ("torch", "torchvision", "accelerate")  #: what sd-scripts needs, in its order
# Older accelerate refuses fp16 on an Apple GPU ("fp16 mixed precision requires a GPU (not 'mps')").
FP16_MPS_MIN_ACCELERATE: Final = (1, 8)

# Runs inside kohya's python. The marker line keeps the answer apart from anything torch prints.
# Each package is imported, not just looked up: the registry's torchvision wheel is CUDA-built and,
# on a CPU or MPS torch, installs fine and then fails at import ("operator torchvision::nms does not
# exist"). In sd-scripts' order; the other two import torch, so a broken torch is the one failure told.
_PROBE: Final = r"""
import importlib, importlib.util, json, sys
out = {"python": sys.version.split()[0]}
def why(exc):
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return type(exc).__name__ + (": " + lines[-1][:300] if lines else "")
for name in ("torch", "torchvision", "accelerate"):
    try:
        out[name] = str(importlib.import_module(name).__version__)
    except Exception as exc:
        out[name + "_error"] = why(exc)
        if name == "torch":
            break
if "torch" in out:
    import torch
    if torch.cuda.is_available():
        out["device"] = "cuda"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out["device"] = "mps"
    else:
        out["device"] = "cpu"
installed = {}
for name in ("torchvision", "bitsandbytes", "xformers", "triton"):
    try:
        installed[name] = importlib.util.find_spec(name) is not None
    except Exception:
        installed[name] = False
out["installed"] = installed
print("PLASMA_PROBE " + json.dumps(out), flush=True)
"""
_PROBE_MARKER: Final = "PLASMA_PROBE "


@dataclass
class PreflightReport:
    python_version: str | None = None
    torch_version: str | None = None
    torchvision_version: str | None = None
    accelerate_version: str | None = None
    import_errors: dict[str, str] = field(default_factory=dict)  #: package -> why it does not import
    tokenizer: TokenizerCheck | None = None  #: the offline tokenizer folder, when configured
    device: Device | None = None  # where torch would train
    fp16_allowed: bool = False
    installed: dict[str, bool] = field(default_factory=dict)  # torchvision, bitsandbytes, xformers, triton
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def mixed_precision(self) -> MixedPrecision:
        """What to put in KohyaParams.mixed_precision."""
        return "fp16" if self.fp16_allowed else "no"

    def raise_for_errors(self) -> None:
        if self.errors:
            message = "kohya is not usable: " + "; ".join(self.errors)
            raise PlasmaError(ErrorCode.NOT_CONFIGURED, message, details=self.errors)


def version_tuple(version: str) -> tuple[int, ...]:
    """'1.10.0.dev0' -> (1, 10, 0); '2.13.0+cpu' -> (2, 13, 0). Good enough to compare releases."""
    numbers: list[int] = []
    for part in version.split("+", 1)[0].split("."):
        m = re.match(r"\d+", part)
        if m is None:
            break
        numbers.append(int(m.group()))
    return tuple(numbers)


def _str_or_none(value: object) -> str | None:
    return str(value) if value else None


def _check_files(kohya_python: Path, kohya_script: Path) -> tuple[bool, bool, bool]:
    python = str(kohya_python)
    if os.sep not in python:
        python_ok = shutil.which(python) is not None
    else:
        python_ok = kohya_python.is_file() and os.access(kohya_python, os.X_OK)
    script_ok = kohya_script.is_file()
    looks_like_sd_scripts = (kohya_script.parent / "library").is_dir()
    return python_ok, script_ok, looks_like_sd_scripts


async def _probe(kohya_python: Path, cwd: Path, limit_s: float) -> tuple[dict[str, Any] | None, str]:
    """The probe's JSON, or None and why not."""
    try:
        proc = await asyncio.create_subprocess_exec(
            str(kohya_python),
            "-c",
            _PROBE,
            cwd=cwd,
            env={**os.environ, **KOHYA_ENV},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        return None, f"cannot run {kohya_python}: {exc}"
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        processes.signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5.0)
        return None, f"{kohya_python} did not answer the probe within {limit_s:g} s"
    for line in reversed(out.decode("utf-8", "replace").splitlines()):
        if line.startswith(_PROBE_MARKER):
            try:
                answer = json.loads(line[len(_PROBE_MARKER) :])
            except ValueError:
                break
            if isinstance(answer, dict):
                return answer, ""
            break
    last = " | ".join(err.decode("utf-8", "replace").strip().splitlines()[-3:])
    return None, f"the probe in {kohya_python} failed (exit {proc.returncode}){': ' + last if last else ''}"


async def preflight(
    kohya_python: Path,
    kohya_script: Path,
    extra_args: Sequence[str] = (),
    *,
    probe_timeout: float = PROBE_TIMEOUT_S,
) -> PreflightReport:
    """Whether kohya can train here, and how: in seconds, without blocking the event loop.
    `extra_args` is KOHYA_EXTRA_ARGS (an offline tokenizer folder there is checked)."""
    report = PreflightReport()
    report.tokenizer = await asyncio.to_thread(check_tokenizer, extra_args)
    report.errors += report.tokenizer.errors
    report.warnings += report.tokenizer.warnings
    if os.sep in str(kohya_python):
        kohya_python = Path(abs_path(kohya_python))  # the probe runs in kohya's folder, not ours
    python_ok, script_ok = await _check_paths(report, kohya_python, kohya_script)
    if not python_ok:
        return report
    answer, why = await _probe(kohya_python, kohya_script.parent if script_ok else Path.cwd(), probe_timeout)
    if answer is None:
        report.errors.append(why)
        return report
    _read_answer(report, answer)
    _judge_versions(report, answer, kohya_python)
    _choose_precision(report)
    return report


async def _check_paths(report: PreflightReport, kohya_python: Path, kohya_script: Path) -> tuple[bool, bool]:
    """KOHYA_PYTHON and KOHYA_SCRIPT on disk: (python usable, script there)."""
    python_ok, script_ok, looks_like_sd_scripts = await asyncio.to_thread(
        _check_files, kohya_python, kohya_script
    )
    if not python_ok:
        report.errors.append(f"KOHYA_PYTHON {kohya_python} does not exist or is not executable")
    if not script_ok:
        report.errors.append(f"KOHYA_SCRIPT {kohya_script} does not exist")
    elif not looks_like_sd_scripts:
        report.warnings.append(
            f"{kohya_script} has no library/ folder beside it: is it sd-scripts' train_network.py?"
        )
    return python_ok, script_ok


def _read_answer(report: PreflightReport, answer: dict[str, Any]) -> None:
    report.python_version = _str_or_none(answer.get("python"))
    report.torch_version = _str_or_none(answer.get("torch"))
    report.torchvision_version = _str_or_none(answer.get("torchvision"))
    report.accelerate_version = _str_or_none(answer.get("accelerate"))
    installed = answer.get("installed")
    report.installed = {str(k): bool(v) for k, v in installed.items()} if isinstance(installed, dict) else {}
    device = answer.get("device")
    report.device = device if device in ("cuda", "mps", "cpu") else None


def _judge_versions(report: PreflightReport, answer: dict[str, Any], kohya_python: Path) -> None:
    """What does not import in kohya's venv (errors, in the probe's order, each with its own
    message) or is too old (warnings)."""
    versions = {
        "torch": report.torch_version,
        "torchvision": report.torchvision_version,
        "accelerate": report.accelerate_version,
    }
    for name in IMPORTED:
        if versions[name] is not None:
            continue
        why = str(answer.get(f"{name}_error") or "not installed (sd-scripts imports it)")
        report.import_errors[name] = why
        report.errors.append(f"{name} cannot be imported in {kohya_python}: {why}")
        if name == "torch":
            break  # the others import torch: their failures would only repeat this one
    if report.python_version and version_tuple(report.python_version) < (3, 10):
        report.warnings.append(
            f"sd-scripts wants Python 3.10 or newer; {kohya_python} is {report.python_version}"
        )


def _choose_precision(report: PreflightReport) -> None:
    """fp16 where the device allows it, and a warning where training will be slow."""
    if report.device == "cuda":
        report.fp16_allowed = True
    elif report.device == "mps":
        accelerate = version_tuple(report.accelerate_version or "0")
        report.fp16_allowed = accelerate >= FP16_MPS_MIN_ACCELERATE
        if not report.fp16_allowed and report.accelerate_version is not None:
            report.warnings.append(
                f"accelerate {report.accelerate_version} cannot train in fp16 on an Apple GPU (1.8 or newer "
                "can): training in fp32, which is slower and needs more memory"
            )
    elif report.device == "cpu":
        # fp16 on a CPU fails at the first step (dtype mismatch), so fp32 is the only choice there.
        report.warnings.append(
            "NO GPU: torch in kohya's venv sees neither an Apple GPU (mps) nor CUDA, so training would "
            "run on the CPU, about 10x slower or worse (hours become days). Check that kohya's venv "
            "has a torch build with MPS support."
        )
