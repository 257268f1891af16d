"""kohya_ss's checks (INFRA-03): its Python, torch, torchvision, the offline tokenizer, MPS, no
CUDA-only packages, accelerate.

kohya's environment is judged by a probe run in its own Python (`kohya.preflight`, seconds: it
imports torch), and by what accelerate's default config file says.
"""

from __future__ import annotations

import os
from pathlib import Path

from plasmad.core.config import Config
from plasmad.operations.doctor.report import Report, Status
from plasmad.training.kohya import preflight as kohya
from plasmad.training.kohya.tokenizer import CLIP_MAX_LENGTH, SD15_TOKENIZER

PROBE_TIMEOUT_S = 45.0  #: kohya's probe imports torch; below plasmactl's 60 s socket timeout
RECOMMENDED_KOHYA_PYTHON = (3, 11)
PINNED_TORCH = (2, 5)  #: the Mac's pin: MPS behaviour changes between torch minor versions
CUDA_ONLY_ARGS = ("adamw8bit", "8bit", "xformers", "bitsandbytes")
REQ = "INFRA-03"


def _version(text: str | None) -> tuple[int, ...]:
    return kohya.version_tuple(text or "0")


async def kohya_preflight(cfg: Config) -> kohya.PreflightReport | None:
    """kohya's probe, or None when kohya is not configured."""
    if cfg.kohya_python is None or cfg.kohya_script is None:
        return None
    return await kohya.preflight(
        cfg.kohya_python, cfg.kohya_script, cfg.kohya_extra_args, probe_timeout=PROBE_TIMEOUT_S
    )


def check_kohya(
    report: Report, preflight: kohya.PreflightReport | None, accelerate_config: tuple[str, bool]
) -> None:
    """`preflight` from `kohya_preflight`, `accelerate_config` from `read_accelerate_config`."""
    if preflight is None:
        _not_configured(report)
        return
    if not _configured(report, preflight):
        return
    _python(report, preflight)
    _torch(report, preflight)
    _tokenizer(report, preflight)
    _mps(report, preflight.device)
    _cuda_only(report, preflight)
    _accelerate(report, preflight, accelerate_config)


def _not_configured(report: Report) -> None:
    report.add(
        "kohya.configured",
        REQ,
        "kohya_ss configured",
        "warn",
        "KOHYA_PYTHON and KOHYA_SCRIPT are not set: trainings use ComfyUI's own trainer nodes, "
        "not kohya_ss (INFRA-03)",
        "export KOHYA_PYTHON=~/tools/kohya_ss/venv/bin/python "
        "KOHYA_SCRIPT=~/tools/kohya_ss/sd-scripts/train_network.py",
    )


def _configured(report: Report, preflight: kohya.PreflightReport) -> bool:
    """KOHYA_PYTHON runs and KOHYA_SCRIPT is sd-scripts' train_network.py; False: nothing more to check."""
    if preflight.python_version is None:
        report.add(
            "kohya.configured",
            REQ,
            "kohya_ss configured",
            "fail",
            "; ".join(preflight.errors),
            "check KOHYA_PYTHON (kohya's venv Python) and KOHYA_SCRIPT (sd-scripts' train_network.py)",
        )
        return False
    script_warnings = [w for w in preflight.warnings if "library/" in w]
    report.add(
        "kohya.configured",
        REQ,
        "kohya_ss configured",
        "warn" if script_warnings else "ok",
        f"{report.cfg.kohya_python} runs; {report.cfg.kohya_script}"
        + "".join(f"; {w}" for w in script_warnings),
        "KOHYA_SCRIPT must be sd-scripts' train_network.py" if script_warnings else None,
    )
    return True


def _python(report: Report, preflight: kohya.PreflightReport) -> None:
    py = _version(preflight.python_version)
    if py[:2] == RECOMMENDED_KOHYA_PYTHON:
        report.add("kohya.python", REQ, "kohya's Python", "ok", f"Python {preflight.python_version}")
        return
    report.add(
        "kohya.python",
        REQ,
        "kohya's Python",
        "fail" if py < (3, 10) else "warn",
        f"Python {preflight.python_version}; sd-scripts is tested on 3.10/3.11 and has issues on 3.12",
        "recreate kohya's venv with Python 3.11 (3.11.9 on the Mac)",
    )


def _torch(report: Report, preflight: kohya.PreflightReport) -> None:
    """torch (the Mac's pin), and the torchvision sd-scripts imports: imported, not just found."""
    torch_error = preflight.import_errors.get("torch")
    if torch_error is not None:
        report.add(
            "kohya.torch",
            REQ,
            "kohya's torch",
            "fail",
            f"torch cannot be imported in kohya's venv: {torch_error}",
            "pip install torch==2.5.1 torchvision==0.20.1 in kohya's venv",
        )
        return
    if report.on_mac and _version(preflight.torch_version)[:2] != PINNED_TORCH:
        report.add(
            "kohya.torch",
            REQ,
            "kohya's torch",
            "warn",
            f"torch {preflight.torch_version}; the Mac's pin is 2.5.1 (MPS changes between minor versions)",
            "pip install torch==2.5.1 torchvision==0.20.1 in kohya's venv",
        )
    else:
        report.add("kohya.torch", REQ, "kohya's torch", "ok", f"torch {preflight.torch_version}")
    _torchvision(report, preflight)


def _torchvision(report: Report, preflight: kohya.PreflightReport) -> None:
    error = preflight.import_errors.get("torchvision")
    if error is None:
        version = preflight.torchvision_version
        report.add("kohya.torchvision", REQ, "kohya's torchvision", "ok", f"torchvision {version}")
        return
    installed = preflight.installed.get("torchvision")
    report.add(
        "kohya.torchvision",
        REQ,
        "kohya's torchvision",
        "fail",
        f"torchvision cannot be imported in kohya's venv: {error}"
        + ("; it is installed, but not a build for this torch" if installed else ""),
        f"pip install the torchvision release made for torch {preflight.torch_version} (0.20.1 for 2.5.1) "
        "in kohya's venv, from the index of kohya's torch build (a CUDA wheel fails on a Mac or a CPU)",
    )


def _tokenizer(report: Report, preflight: kohya.PreflightReport) -> None:
    """The offline CLIP tokenizer folder of --tokenizer_cache_dir: SD 1.5's 77 tokens."""
    check = preflight.tokenizer
    id, title = "kohya.tokenizer", "kohya's CLIP tokenizer"
    if check is None or (check.folder is None and not check.errors and not check.warnings):
        report.add(id, REQ, title, "ok", "no --tokenizer_cache_dir: kohya loads it from the hub (cached)")
    elif check.errors or check.warnings:
        status: Status = "fail" if check.errors else "warn"
        problems = check.errors or check.warnings
        folder = check.folder or f"DIR/{SD15_TOKENIZER}"
        fix = (
            f"{folder} must hold a CLIP-L tokenizer (ComfyUI ships one: comfy/sd1_tokenizer) whose "
            f'tokenizer_config.json says "model_max_length": {CLIP_MAX_LENGTH}'
        )
        report.add(id, REQ, title, status, "; ".join(problems), fix)
    else:
        report.add(id, REQ, title, "ok", f"{check.folder}: model_max_length {check.max_length}")


def _mps(report: Report, device: str | None) -> None:
    if device == "mps":
        report.add(
            "kohya.mps", REQ, "MPS for training", "ok", "torch in kohya's venv sees the Apple GPU (mps)"
        )
    elif device == "cuda":
        report.add(
            "kohya.mps", REQ, "MPS for training", "warn", "torch in kohya's venv trains on CUDA (not the Mac)"
        )
    else:
        report.add(
            "kohya.mps",
            REQ,
            "MPS for training",
            "fail" if report.on_mac else "warn",
            f"torch in kohya's venv sees no GPU ({device or 'unknown'}): training on the CPU, 10x slower "
            "or worse",
            "install a torch build with MPS (arm64 Python, macOS 12.3+) in kohya's venv",
        )


def _cuda_only(report: Report, preflight: kohya.PreflightReport) -> None:
    installed = sorted(n for n in ("bitsandbytes", "xformers", "triton") if preflight.installed.get(n))
    args = " ".join(report.cfg.kohya_extra_args).lower()
    flagged = sorted({a for a in CUDA_ONLY_ARGS if a in args})
    if flagged:
        report.add(
            "kohya.cuda_only",
            REQ,
            "no CUDA-only packages",
            "warn",
            f"KOHYA_EXTRA_ARGS mentions {', '.join(flagged)}: CUDA-only (bitsandbytes / xformers); "
            "on the Mac the run fails",
            "remove them: plasmad trains with --optimizer_type AdamW and PyTorch's own attention",
        )
        return
    note = f" ({', '.join(installed)} installed but unused)" if installed else ""
    report.add(
        "kohya.cuda_only",
        REQ,
        "no CUDA-only packages",
        "ok",
        "AdamW (not AdamW8bit), no xformers: bitsandbytes, xformers and triton are not needed" + note,
    )


def _accelerate(
    report: Report, preflight: kohya.PreflightReport, accelerate_config: tuple[str, bool]
) -> None:
    """accelerate is there, trains in fp16 on the Apple GPU, and its config file does not get in the way."""
    accel = preflight.accelerate_version
    config_note, config_warn = accelerate_config
    id, title = "kohya.accelerate", "accelerate (fp16 on MPS)"
    if accel is None:
        report.add(
            id,
            REQ,
            title,
            "fail",
            f"accelerate cannot be imported in kohya's venv: "
            f"{preflight.import_errors.get('accelerate', 'not installed')}",
            "pip install 'accelerate>=1.8' in kohya's venv",
        )
    elif preflight.device == "mps" and not preflight.fp16_allowed:
        report.add(
            id,
            REQ,
            title,
            "warn",
            f"accelerate {accel} cannot train in fp16 on the Apple GPU: training runs in fp32 (slower, "
            f"more memory); {config_note}",
            "pip install 'accelerate>=1.8' in kohya's venv",
        )
    elif config_warn:
        report.add(
            id,
            REQ,
            title,
            "warn",
            f"accelerate {accel}; {config_note}",
            "run `accelerate config` in kohya's venv (this machine, no distributed training, fp16) "
            "or delete that file",
        )
    else:
        mp = preflight.mixed_precision
        report.add(
            id,
            REQ,
            title,
            "ok",
            f"accelerate {accel}; plasmad launches with --mixed_precision {mp}; {config_note}",
        )


def read_accelerate_config() -> tuple[str, bool]:
    """What accelerate's default config file says, and whether it can get in the way.

    Blocking: run it in a thread.
    """
    explicit = os.environ.get("ACCELERATE_CONFIG_FILE")
    if explicit:
        path = Path(explicit).expanduser()
    else:
        hf_home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
        )
        path = Path(hf_home) / "accelerate" / "default_config.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return (
            "no accelerate config file (not needed: plasmad passes its settings on the command line)",
            False,
        )
    values: dict[str, str] = {}
    for line in text.splitlines():  # a flat YAML (or JSON) file: key: value per line is enough here
        key, sep, value = line.strip().strip(",").partition(":")
        if sep:
            values[key.strip().strip('"')] = value.strip().strip('"').lower()
    problems = []
    if values.get("use_cpu") == "true":
        problems.append("use_cpu: true forces training onto the CPU")
    if values.get("distributed_type", "no").upper() not in ("NO", "MPS", ""):
        problems.append(f"distributed_type {values['distributed_type']} (one machine, one GPU wanted)")
    mp = values.get("mixed_precision", "?")
    note = f"{path} says mixed_precision {mp}" + (f"; {'; '.join(problems)}" if problems else "")
    return note, bool(problems)
