"""`plasmactl doctor`: every INFRA requirement checked on this machine, each with what to do about it.

The checks run in the daemon, which has the configuration and ComfyUI's client (GET /doctor,
JSON-RPC `doctor`); plasmactl only renders them, and runs them itself from the shell's settings
when no daemon answers (`standalone`). Each check is one line:

- ok: as the requirements want;
- warn: works, but not as the requirements want (slower, more memory) or a feature is unavailable
  (ControlNet poses, kohya training) until it is fixed;
- fail: fix it before relying on plasmad here (the report's `ok` is false, plasmactl exits 9).

Nothing here loads a model: checkpoints are judged by their safetensors header (`modelfiles`),
kohya's environment by a probe in its own Python (`kohya.preflight`). Blocking file work runs in
threads.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import aiohttp

from plasmad import __version__
from plasmad.comfy import modelfiles
from plasmad.comfy.client import ComfyClient
from plasmad.comfy.process import BASE_FLAGS, ManagedComfyUI
from plasmad.core.config import Config
from plasmad.core.errors import PlasmaError
from plasmad.generation import controlnet
from plasmad.training.kohya import preflight as kohya

Status = Literal["ok", "warn", "fail"]

#: Free space below which a folder warns / fails: a checkpoint is 2-4 GB, ControlNet 1.4 GB; a
#: training writes a LoRA (~40 MB at dim 32) every 200 steps plus its logs and samples.
COMFYUI_DISK_WARN_GB = 10.0
COMFYUI_DISK_FAIL_GB = 2.0
STATE_DISK_WARN_GB = 5.0
STATE_DISK_FAIL_GB = 1.0
PROBE_TIMEOUT_S = 45.0  #: kohya's probe imports torch; below plasmactl's 60 s socket timeout
RECOMMENDED_KOHYA_PYTHON = (3, 11)
PINNED_TORCH = (2, 5)  #: the Mac's pin: MPS behaviour changes between torch minor versions
MANAGER_URL = "https://github.com/ltdrdata/ComfyUI-Manager"
CUDA_ONLY_ARGS = ("adamw8bit", "8bit", "xformers", "bitsandbytes")


@dataclass
class Check:
    id: str
    requirement: str
    title: str
    status: Status
    detail: str
    fix: str | None = None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _version(text: str | None) -> tuple[int, ...]:
    return kohya.version_tuple(text or "0")


class Doctor:
    def __init__(
        self,
        cfg: Config,
        comfy: ComfyClient,
        process: ManagedComfyUI | None = None,
        platform: str = sys.platform,
    ) -> None:
        self.cfg = cfg
        self.comfy = comfy
        self.process = process
        self.on_mac = platform == "darwin"
        self.checks: list[Check] = []
        self.stats: dict[str, Any] | None = None
        self.comfy_error = ""

    def add(self, id: str, req: str, title: str, status: Status, detail: str, fix: str | None = None) -> None:
        self.checks.append(Check(id, req, title, status, detail, fix))

    async def run(self) -> dict[str, Any]:
        # kohya's probe (seconds: it imports torch) runs while ComfyUI is asked.
        kohya_task = asyncio.create_task(self._kohya_report())
        await self._comfyui()
        await self._models()
        await self._custom_nodes()
        self._kohya(await kohya_task, await asyncio.to_thread(_accelerate_config))
        await self._disk()
        counts = {s: sum(1 for c in self.checks if c.status == s) for s in ("ok", "warn", "fail")}
        return {
            "ok": counts["fail"] == 0,
            "counts": counts,
            "plasmad": __version__,
            "checks": [asdict(c) for c in self.checks],
        }

    # --- ComfyUI (INFRA-01, GEN-05) -------------------------------------------------------------------

    def _start_fix(self) -> str:
        port = urlparse(self.cfg.comfyui_url).port or 8188
        if self.process is not None:
            return f"see {self.process.log_path} (`plasmactl logs comfyui`); plasmad restarts it with backoff"
        where = self.cfg.comfyui_dir or "~/tools/ComfyUI"
        return (
            f"start it: cd {where} && python main.py {' '.join(BASE_FLAGS)} --port {port}; or let plasmad "
            "run it: COMFYUI_MANAGED=1 COMFYUI_PYTHON=<ComfyUI's venv>/bin/python"
        )

    def _not_checked(self, id: str, req: str, title: str) -> None:
        self.add(id, req, title, "warn", "not checked: ComfyUI did not answer", "start ComfyUI first")

    async def _comfyui(self) -> None:
        cfg = self.cfg
        mode = "managed by plasmad" if self.process is not None else "attached"
        try:
            self.stats = await self.comfy.system_stats()
        except PlasmaError as exc:
            self.comfy_error = exc.message
            state = f" (managed: {self.process.state})" if self.process is not None else ""
            self.add(
                "comfyui.reachable",
                "INFRA-01",
                "ComfyUI reachable",
                "fail",
                f"{exc.message}{state}",
                self._start_fix(),
            )
            for id, title in (
                ("comfyui.version", "ComfyUI version"),
                ("comfyui.fp16_unet", "fp16 UNet"),
                ("comfyui.fp32_vae", "fp32 VAE"),
                ("comfyui.device", "ComfyUI device"),
            ):
                self._not_checked(id, "INFRA-01" if id != "comfyui.fp32_vae" else "GEN-05", title)
            return
        pid = (
            f", pid {self.process.pid}, {self.process.restarts} restarts" if self.process is not None else ""
        )
        self.add(
            "comfyui.reachable", "INFRA-01", "ComfyUI reachable", "ok", f"{cfg.comfyui_url} ({mode}{pid})"
        )

        system = self.stats.get("system", {})
        argv = [str(a) for a in system.get("argv", [])]
        devices = [d for d in self.stats.get("devices", []) if isinstance(d, dict)]
        types = [str(d.get("type")) for d in devices]
        version = system.get("comfyui_version")
        torch = system.get("pytorch_version")
        missing = await self._missing_template_nodes()
        if missing:
            self.add(
                "comfyui.version",
                "GEN-04",
                "ComfyUI version",
                "fail",
                f"ComfyUI {version or '?'} lacks nodes the workflow templates use: {', '.join(missing)}",
                "update ComfyUI (git pull in its folder, then restart it)",
            )
        elif not version:
            self.add(
                "comfyui.version",
                "INFRA-01",
                "ComfyUI version",
                "warn",
                f"ComfyUI does not report its version (PyTorch {torch}); the templates' nodes are there",
                "a ComfyUI of 2025 or later (0.3.x) reports it; 0.3.75 is tested",
            )
        else:
            self.add(
                "comfyui.version",
                "INFRA-01",
                "ComfyUI version",
                "ok",
                f"ComfyUI {version}, PyTorch {torch}; has every node the templates use",
            )

        mps = "mps" in types
        cpu_only = bool(types) and all(t == "cpu" for t in types)
        forced = "--force-fp16" in argv
        dtype = cfg.unet_dtype
        if mps or not cpu_only:
            if dtype == "fp16":
                status: Status = "ok" if forced else "warn"
                detail = "the graph sets the UNet to fp16 (PLASMA_UNET_DTYPE=fp16)" + (
                    ", ComfyUI runs with --force-fp16"
                    if forced
                    else "; ComfyUI was started without --force-fp16"
                )
                fix = (
                    None
                    if forced
                    else "add --force-fp16 to ComfyUI's launch (INFRA-01; managed mode adds it)"
                )
            else:
                status, detail = "warn", f"the UNet runs at {dtype}: slower, and twice the memory of fp16"
                fix = "unset PLASMA_UNET_DTYPE (fp16 is the default) on the Mac"
        elif dtype == "fp16":
            status, detail = "warn", "fp16 UNet on a CPU: about 100x slower than fp32 there"
            fix = "on a CPU-only host set PLASMA_UNET_DTYPE=fp32 (fp16 is for the Apple GPU)"
        else:
            status, detail, fix = "ok", f"UNet at {dtype} (a CPU-only host; fp16 is for the Apple GPU)", None
        self.add("comfyui.fp16_unet", "GEN-05", "fp16 UNet", status, detail, fix)

        if "--fp32-vae" in argv:
            self.add("comfyui.fp32_vae", "GEN-05", "fp32 VAE", "ok", "ComfyUI runs with --fp32-vae")
        else:
            self.add(
                "comfyui.fp32_vae",
                "GEN-05",
                "fp32 VAE",
                "fail" if mps else "warn",
                "ComfyUI was started without --fp32-vae: on the Apple GPU an fp16 VAE washes out colours",
                "add --fp32-vae to ComfyUI's launch (managed mode adds it)",
            )

        names = ", ".join(f"{d.get('name')} ({d.get('type')})" for d in devices) or "none reported"
        if mps:
            self.add("comfyui.device", "INFRA-01", "ComfyUI device", "ok", f"Apple GPU: {names}")
        else:
            fix = (
                "start ComfyUI without --cpu, from a Python whose torch sees the GPU: "
                "python -c 'import torch; print(torch.backends.mps.is_available())' must print True"
            )
            if self.on_mac:
                self.add(
                    "comfyui.device",
                    "INFRA-01",
                    "ComfyUI device",
                    "fail",
                    f"ComfyUI does not use the Apple GPU (mps): {names}",
                    fix,
                )
            else:
                self.add(
                    "comfyui.device",
                    "INFRA-01",
                    "ComfyUI device",
                    "warn",
                    f"no Apple GPU (mps) on this machine: {names}; generation works, slowly",
                    "on the Mac: " + fix,
                )

    async def _missing_template_nodes(self) -> list[str]:
        classes = await asyncio.to_thread(_template_classes, self.cfg.templates_dir)
        classes.discard(controlnet.PREPROCESSOR_NODE)  # a custom node: its own check below
        self.comfy.forget_object_info()  # fresh: nodes may have been installed since
        missing = []
        for cls in sorted(classes):
            try:
                if not await self.comfy.object_info(cls):
                    missing.append(cls)
            except PlasmaError:
                missing.append(cls)
        return missing

    # --- models (INFRA-02, INFRA-05) ------------------------------------------------------------------

    async def _offered(self, node: str, field: str) -> list[str] | None:
        if self.stats is None:
            return None
        try:
            return await self.comfy.input_choices(node, field)
        except PlasmaError:
            return None

    async def _models(self) -> None:
        cfg = self.cfg
        if cfg.comfyui_dir is None:
            fix = "export COMFYUI_DIR=~/tools/ComfyUI (ComfyUI's folder, the one with models/)"
            for id, req, title in (
                ("models.checkpoint", "INFRA-02", "SD 1.5 checkpoint"),
                ("models.controlnet", "INFRA-05", "ControlNet OpenPose model"),
            ):
                self.add(id, req, title, "fail", "COMFYUI_DIR is not set: the models cannot be checked", fix)
            return
        models = cfg.comfyui_dir / "models"
        await self._checkpoint(models / "checkpoints")
        await self._controlnet(models / "controlnet")

    async def _checkpoint(self, folder: Path) -> None:
        req, title = "INFRA-02", "SD 1.5 checkpoint"
        found, pickles = await asyncio.to_thread(_sd15_checkpoints, folder)
        offered = await self._offered("CheckpointLoaderSimple", "ckpt_name")
        name = self.cfg.checkpoint
        if name:
            try:
                await asyncio.to_thread(
                    modelfiles.check_model, folder, name, "PLASMA_CHECKPOINT", "checkpoint"
                )
            except PlasmaError as exc:
                self.add(
                    "models.checkpoint",
                    req,
                    title,
                    "fail",
                    exc.message,
                    f"set PLASMA_CHECKPOINT to an SD 1.5 .safetensors in {folder}"
                    + (f" (found: {', '.join(found)})" if found else ""),
                )
                return
            if offered is not None and name not in offered:
                self.add(
                    "models.checkpoint",
                    req,
                    title,
                    "warn",
                    f"{name} is an SD 1.5 checkpoint in {folder}, but the running ComfyUI does not list it",
                    "COMFYUI_DIR must be the folder the running ComfyUI uses (or restart ComfyUI)",
                )
                return
            self.add("models.checkpoint", req, title, "ok", f"{name} (SD 1.5, by its header) in {folder}")
            return
        if found:
            self.add(
                "models.checkpoint",
                req,
                title,
                "warn",
                f"SD 1.5 checkpoints in {folder}: {', '.join(found)}; but PLASMA_CHECKPOINT is not set, "
                "so every request must name one",
                f"export PLASMA_CHECKPOINT={found[0]}",
            )
            return
        extra = f"; {', '.join(pickles)} must be converted to .safetensors first" if pickles else ""
        self.add(
            "models.checkpoint",
            req,
            title,
            "fail",
            f"no SD 1.5 .safetensors checkpoint in {folder}{extra}",
            f"download Anything V5 (SD 1.5) as .safetensors into {folder}, then set PLASMA_CHECKPOINT",
        )

    async def _controlnet(self, folder: Path) -> None:
        req, title = "INFRA-05", "ControlNet OpenPose model"
        name = str(getattr(self.cfg, "controlnet", None) or "control_v11p_sd15_openpose.pth")
        exists = await asyncio.to_thread((folder / name).is_file)
        if not exists:
            self.add(
                "models.controlnet",
                req,
                title,
                "warn",
                f"{name} is not in {folder}: ControlNet pose jobs (CTRL) are refused until it is",
                f"download {name} from https://huggingface.co/lllyasviel/ControlNet-v1-1 into {folder}, "
                "or set PLASMA_CONTROLNET to the OpenPose model you have",
            )
            return
        try:
            await asyncio.to_thread(controlnet.check_model, folder, name, "PLASMA_CONTROLNET")
        except PlasmaError as exc:
            self.add(
                "models.controlnet", req, title, "fail", exc.message, f"download {name} again into {folder}"
            )
            return
        offered = await self._offered("ControlNetLoader", "control_net_name")
        if offered is not None and name not in offered:
            self.add(
                "models.controlnet",
                req,
                title,
                "warn",
                f"{name} is in {folder}, but the running ComfyUI does not list it",
                "COMFYUI_DIR must be the folder the running ComfyUI uses (or restart ComfyUI)",
            )
            return
        kind = "SD 1.5, by its header" if name.lower().endswith(".safetensors") else "a PyTorch file"
        self.add("models.controlnet", req, title, "ok", f"{name} ({kind}) in {folder}")

    # --- custom nodes (INFRA-05) ----------------------------------------------------------------------

    async def _custom_nodes(self) -> None:
        if self.stats is None:
            self._not_checked("nodes.controlnet_aux", "INFRA-05", "ControlNet-Aux custom nodes")
        else:
            try:
                info = await self.comfy.object_info(controlnet.PREPROCESSOR_NODE)
            except PlasmaError:
                info = {}
            if info:
                self.add(
                    "nodes.controlnet_aux",
                    "INFRA-05",
                    "ControlNet-Aux custom nodes",
                    "ok",
                    f"ComfyUI has {controlnet.PREPROCESSOR_NODE}",
                )
            else:
                where = self.cfg.comfyui_dir / "custom_nodes" if self.cfg.comfyui_dir else "custom_nodes"
                self.add(
                    "nodes.controlnet_aux",
                    "INFRA-05",
                    "ControlNet-Aux custom nodes",
                    "warn",
                    f"ComfyUI has no {controlnet.PREPROCESSOR_NODE}: reference panels (not skeletons) "
                    "are refused as pose images",
                    f"cd {where} && git clone {controlnet.PREPROCESSOR_URL}, install its requirements.txt "
                    "with ComfyUI's Python, restart ComfyUI",
                )
        # ComfyUI-Manager adds no node class: look for its folder.
        if self.cfg.comfyui_dir is None:
            self.add(
                "nodes.manager",
                "INFRA-05",
                "ComfyUI-Manager",
                "warn",
                "not checked: COMFYUI_DIR is not set",
                "export COMFYUI_DIR=~/tools/ComfyUI",
            )
            return
        custom = self.cfg.comfyui_dir / "custom_nodes"
        found = await asyncio.to_thread(_find_manager, custom)
        if found is not None:
            self.add("nodes.manager", "INFRA-05", "ComfyUI-Manager", "ok", f"{found}")
        else:
            self.add(
                "nodes.manager",
                "INFRA-05",
                "ComfyUI-Manager",
                "warn",
                f"no ComfyUI-Manager in {custom} (plasmad does not need it; it eases installing nodes)",
                f"cd {custom} && git clone {MANAGER_URL}, then restart ComfyUI",
            )

    # --- kohya (INFRA-03) -----------------------------------------------------------------------------

    async def _kohya_report(self) -> kohya.PreflightReport | None:
        cfg = self.cfg
        if cfg.kohya_python is None or cfg.kohya_script is None:
            return None
        return await kohya.preflight(cfg.kohya_python, cfg.kohya_script, probe_timeout=PROBE_TIMEOUT_S)

    def _kohya(self, report: kohya.PreflightReport | None, accelerate_config: tuple[str, bool]) -> None:
        req = "INFRA-03"
        if report is None:
            self.add(
                "kohya.configured",
                req,
                "kohya_ss configured",
                "warn",
                "KOHYA_PYTHON and KOHYA_SCRIPT are not set: trainings use ComfyUI's own trainer nodes, "
                "not kohya_ss (INFRA-03)",
                "export KOHYA_PYTHON=~/tools/kohya_ss/venv/bin/python "
                "KOHYA_SCRIPT=~/tools/kohya_ss/sd-scripts/train_network.py",
            )
            return
        if report.python_version is None:
            self.add(
                "kohya.configured",
                req,
                "kohya_ss configured",
                "fail",
                "; ".join(report.errors),
                "check KOHYA_PYTHON (kohya's venv Python) and KOHYA_SCRIPT (sd-scripts' train_network.py)",
            )
            return
        script_warnings = [w for w in report.warnings if "library/" in w]
        self.add(
            "kohya.configured",
            req,
            "kohya_ss configured",
            "warn" if script_warnings else "ok",
            f"{self.cfg.kohya_python} runs; {self.cfg.kohya_script}"
            + "".join(f"; {w}" for w in script_warnings),
            "KOHYA_SCRIPT must be sd-scripts' train_network.py" if script_warnings else None,
        )

        py = _version(report.python_version)
        if py[:2] == RECOMMENDED_KOHYA_PYTHON:
            self.add("kohya.python", req, "kohya's Python", "ok", f"Python {report.python_version}")
        else:
            self.add(
                "kohya.python",
                req,
                "kohya's Python",
                "fail" if py < (3, 10) else "warn",
                f"Python {report.python_version}; sd-scripts is tested on 3.10/3.11 and has issues on 3.12",
                "recreate kohya's venv with Python 3.11 (3.11.9 on the Mac)",
            )

        if report.torch_version is None:
            self.add(
                "kohya.torch",
                req,
                "kohya's torch",
                "fail",
                next((e for e in report.errors if "torch" in e), "torch is not importable"),
                "pip install torch==2.5.1 torchvision in kohya's venv",
            )
        elif self.on_mac and _version(report.torch_version)[:2] != PINNED_TORCH:
            self.add(
                "kohya.torch",
                req,
                "kohya's torch",
                "warn",
                f"torch {report.torch_version}; the Mac's pin is 2.5.1 (MPS changes between minor versions)",
                "pip install torch==2.5.1 torchvision==0.20.1 in kohya's venv",
            )
        else:
            self.add("kohya.torch", req, "kohya's torch", "ok", f"torch {report.torch_version}")
        if report.installed.get("torchvision") is False:
            self.add(
                "kohya.torchvision",
                req,
                "kohya's torchvision",
                "fail",
                "torchvision is not installed in kohya's venv; sd-scripts imports it",
                "pip install torchvision (the build matching kohya's torch) in kohya's venv",
            )

        device = report.device
        if device == "mps":
            self.add(
                "kohya.mps", req, "MPS for training", "ok", "torch in kohya's venv sees the Apple GPU (mps)"
            )
        elif device == "cuda":
            self.add(
                "kohya.mps",
                req,
                "MPS for training",
                "warn",
                "torch in kohya's venv trains on CUDA (not the Mac)",
            )
        else:
            self.add(
                "kohya.mps",
                req,
                "MPS for training",
                "fail" if self.on_mac else "warn",
                f"torch in kohya's venv sees no GPU ({device or 'unknown'}): training on the CPU, 10x slower "
                "or worse",
                "install a torch build with MPS (arm64 Python, macOS 12.3+) in kohya's venv",
            )

        installed = sorted(n for n in ("bitsandbytes", "xformers", "triton") if report.installed.get(n))
        args = " ".join(self.cfg.kohya_extra_args).lower()
        flagged = sorted({a for a in CUDA_ONLY_ARGS if a in args})
        if flagged:
            self.add(
                "kohya.cuda_only",
                req,
                "no CUDA-only packages",
                "warn",
                f"KOHYA_EXTRA_ARGS mentions {', '.join(flagged)}: CUDA-only (bitsandbytes / xformers); "
                "on the Mac the run fails",
                "remove them: plasmad trains with --optimizer_type AdamW and PyTorch's own attention",
            )
        else:
            note = f" ({', '.join(installed)} installed but unused)" if installed else ""
            self.add(
                "kohya.cuda_only",
                req,
                "no CUDA-only packages",
                "ok",
                "AdamW (not AdamW8bit), no xformers: bitsandbytes, xformers and triton are not needed" + note,
            )

        accel = report.accelerate_version
        config_note, config_warn = accelerate_config
        if accel is None:
            self.add(
                "kohya.accelerate",
                req,
                "accelerate (fp16 on MPS)",
                "fail",
                next((e for e in report.errors if "accelerate" in e), "accelerate is not importable"),
                "pip install 'accelerate>=1.8' in kohya's venv",
            )
        elif device == "mps" and not report.fp16_allowed:
            self.add(
                "kohya.accelerate",
                req,
                "accelerate (fp16 on MPS)",
                "warn",
                f"accelerate {accel} cannot train in fp16 on the Apple GPU: training runs in fp32 (slower, "
                f"more memory); {config_note}",
                "pip install 'accelerate>=1.8' in kohya's venv",
            )
        elif config_warn:
            self.add(
                "kohya.accelerate",
                req,
                "accelerate (fp16 on MPS)",
                "warn",
                f"accelerate {accel}; {config_note}",
                "run `accelerate config` in kohya's venv (this machine, no distributed training, fp16) "
                "or delete that file",
            )
        else:
            mp = report.mixed_precision
            self.add(
                "kohya.accelerate",
                req,
                "accelerate (fp16 on MPS)",
                "ok",
                f"accelerate {accel}; plasmad launches with --mixed_precision {mp}; {config_note}",
            )

    # --- disk -----------------------------------------------------------------------------------------

    async def _disk(self) -> None:
        places: list[tuple[str, str, Path, float, float]] = [
            (
                "disk.state",
                "state dir",
                self.cfg.state_dir,
                STATE_DISK_WARN_GB,
                STATE_DISK_FAIL_GB,
            ),
        ]
        if self.cfg.comfyui_dir is not None:
            places.append(
                (
                    "disk.comfyui",
                    "ComfyUI's models",
                    self.cfg.comfyui_dir / "models",
                    COMFYUI_DISK_WARN_GB,
                    COMFYUI_DISK_FAIL_GB,
                )
            )
        for id, what, path, warn_gb, fail_gb in places:
            free = await asyncio.to_thread(_free_bytes, path)
            if free is None:
                self.add(id, "INFRA-02", f"disk: {what}", "warn", f"cannot tell the free space at {path}")
                continue
            status: Status = "ok"
            if free < fail_gb * 1e9:
                status = "fail"
            elif free < warn_gb * 1e9:
                status = "warn"
            self.add(
                id,
                "INFRA-02",
                f"disk: {what}",
                status,
                f"{_gb(free)} free at {path}",
                None
                if status == "ok"
                else f"free some space: {warn_gb:.0f} GB or more is comfortable "
                "(a checkpoint is 2-4 GB, each training keeps a LoRA every 200 steps)",
            )


# --- blocking helpers (run in threads) ------------------------------------------------------------------


def _template_classes(templates_dir: Path) -> set[str]:
    classes: set[str] = set()
    for path in templates_dir.glob("*.json"):
        if path.name.endswith(".slots.json"):
            continue
        try:
            graph = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(graph, dict):
            classes.update(
                str(n["class_type"]) for n in graph.values() if isinstance(n, dict) and "class_type" in n
            )
    return classes


def _sd15_checkpoints(folder: Path) -> tuple[list[str], list[str]]:
    """SD 1.5 checkpoints by header, and the pickle files we will not load."""
    found: list[str] = []
    for name in modelfiles.list_models(folder):
        try:
            info = modelfiles.inspect(folder / name)
        except modelfiles.HeaderError:
            continue
        if info.role == "checkpoint" and info.family == "sd15":
            found.append(name)
    pickles = (
        sorted(
            p.name
            for p in folder.glob("*")
            if p.is_file() and p.name.lower().endswith(modelfiles.PICKLE_SUFFIXES)
        )
        if folder.is_dir()
        else []
    )
    return found, pickles


def _find_manager(custom_nodes: Path) -> Path | None:
    if not custom_nodes.is_dir():
        return None
    for entry in custom_nodes.iterdir():
        if entry.is_dir() and entry.name.lower().replace("_", "-") == "comfyui-manager":
            return entry
    return None


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):  # the folder may not exist yet
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def _accelerate_config() -> tuple[str, bool]:
    """What accelerate's default config file says, and whether it can get in the way."""
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


# --- entry points -----------------------------------------------------------------------------------------


async def run_doctor(
    cfg: Config, comfy: ComfyClient, process: ManagedComfyUI | None = None
) -> dict[str, Any]:
    """The `doctor` operation."""
    return await Doctor(cfg, comfy, process).run()


async def standalone(cfg: Config, prepend: list[Check] | None = None) -> dict[str, Any]:
    """The same checks from plasmactl's own process, when no daemon answers."""
    async with aiohttp.ClientSession() as session:
        doctor = Doctor(cfg, ComfyClient(cfg.comfyui_url, session, cfg.history_poll_s))
        doctor.checks.extend(prepend or [])
        return await doctor.run()
