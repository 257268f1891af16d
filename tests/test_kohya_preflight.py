"""kohya's preflight (issue 11): torch, torchvision and accelerate are imported in kohya's Python and
the first failure is told with its own message; an offline tokenizer folder must say 77 tokens.

The probe's own code runs for real in the demo ComfyUI's venv (a real CPU torch; skipped where
`.demo/` is missing), with a FAKE torchvision on PYTHONPATH that fails at import the way the
registry's CUDA-built wheel does on a CPU torch (the message is the one that wheel gives:
tests/test_training_kohya.py reproduces it with the real wheel, opt-in). The tokenizer folders
are real files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plasmad.core.errors import PlasmaError
from plasmad.training.kohya.preflight import preflight
from plasmad.training.kohya.tokenizer import SD15_TOKENIZER, check_tokenizer
from tests.support.kohya import answer, fake_python, sd_scripts
from tests.support.processes import COMFY_PYTHON

NMS = "operator torchvision::nms does not exist"  #: what the CUDA torchvision wheel says on a CPU torch


def _fake_broken_torchvision(root: Path) -> Path:
    """A FAKE torchvision that fails at import as the registry's CUDA wheel does on a CPU torch."""
    package = root / "torchvision"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "# FAKE: the registry's CUDA torchvision, imported on a CPU torch\n"
        "import torch\n"
        f"raise RuntimeError({NMS!r})\n"
    )
    return root


# --- the probe, for real --------------------------------------------------------------------------


@pytest.mark.skipif(not COMFY_PYTHON.exists(), reason="no demo ComfyUI venv (scripts/setup-comfyui.sh)")
async def test_a_torchvision_that_fails_at_import_is_told_with_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(_fake_broken_torchvision(tmp_path / "site")))
    report = await preflight(COMFY_PYTHON, sd_scripts(tmp_path))
    assert report.torch_version is not None and report.device == "cpu"  # torch itself is fine
    assert report.installed["torchvision"] is True  # it is there; it does not import
    assert report.import_errors["torchvision"] == f"RuntimeError: {NMS}"
    # The first failure first, with its message; ComfyUI's venv has no accelerate: told after it.
    assert report.errors[0] == f"torchvision cannot be imported in {COMFY_PYTHON}: RuntimeError: {NMS}"
    assert report.errors[1].startswith("accelerate cannot be imported")
    assert "No module named" in report.errors[1]
    with pytest.raises(PlasmaError) as caught:
        report.raise_for_errors()
    assert caught.value.message.startswith(f"kohya is not usable: {report.errors[0]}")


async def test_a_broken_torch_is_the_one_failure_told(tmp_path: Path) -> None:
    broken = answer("cpu") | {"torch": None, "torchvision": None, "accelerate": None,
                              "torch_error": "OSError: libtorch_cpu.so: cannot open shared object file"}
    report = await preflight(fake_python(tmp_path, broken), sd_scripts(tmp_path))
    assert report.errors == [
        f"torch cannot be imported in {tmp_path / 'bin' / 'python'}: "
        "OSError: libtorch_cpu.so: cannot open shared object file"
    ]


async def test_every_import_is_reported_in_order(tmp_path: Path) -> None:
    broken = answer("cpu") | {
        "torchvision": None, "torchvision_error": f"RuntimeError: {NMS}",
        "accelerate": None, "accelerate_error": "ModuleNotFoundError: No module named 'x'",
    }
    report = await preflight(fake_python(tmp_path, broken), sd_scripts(tmp_path))
    assert [e.split(" cannot")[0] for e in report.errors] == ["torchvision", "accelerate"]
    assert report.torch_version == "2.6.0"


# --- the offline tokenizer ----------------------------------------------------------------------------


def _tokenizer_folder(cache: Path, config: object) -> Path:
    folder = cache / SD15_TOKENIZER
    folder.mkdir(parents=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "tokenizer_config.json").write_text(text)
    return folder


def test_a_tokenizer_saying_77_passes(tmp_path: Path) -> None:
    folder = _tokenizer_folder(tmp_path / "cache", {"model_max_length": 77, "do_lower_case": True})
    check = check_tokenizer(["--tokenizer_cache_dir", str(tmp_path / "cache")], env={"HF_HUB_OFFLINE": "1"})
    assert (check.folder, check.max_length, check.errors, check.warnings) == (folder, 77, [], [])
    assert check_tokenizer([f"--tokenizer_cache_dir={tmp_path / 'cache'}"], env={}).max_length == 77


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"model_max_length": 8192}, "says model_max_length 8192"),  # ComfyUI's bundled tokenizer
        ({"do_lower_case": True}, "does not say model_max_length"),
        ("{not json", "cannot be read"),
        ([77], "does not say model_max_length"),
    ],
)
def test_a_tokenizer_that_does_not_say_77_is_an_error(tmp_path: Path, config: object, words: str) -> None:
    _tokenizer_folder(tmp_path / "cache", config)
    check = check_tokenizer(["--tokenizer_cache_dir", str(tmp_path / "cache")], env={})
    assert len(check.errors) == 1 and words in check.errors[0] and "77" in check.errors[0]


def test_a_missing_or_relative_tokenizer_folder(tmp_path: Path) -> None:
    missing = check_tokenizer(["--tokenizer_cache_dir", str(tmp_path / "nothing")], env={})
    assert missing.errors == [] and "downloads the CLIP tokenizer" in missing.warnings[0]
    nothing = ["--tokenizer_cache_dir", str(tmp_path / "nothing")]
    offline = check_tokenizer(nothing, env={"HF_HUB_OFFLINE": "1"})
    assert offline.errors == [] and "HF_HUB_OFFLINE" in offline.warnings[0]
    relative = check_tokenizer(["--tokenizer_cache_dir", "tokenizer_cache"], env={})
    assert "absolute" in relative.errors[0]
    assert check_tokenizer([], env={}).warnings == [] and check_tokenizer([], env={}).folder is None
    assert "no --tokenizer_cache_dir" in check_tokenizer([], env={"HF_HUB_OFFLINE": "1"}).warnings[0]


async def test_the_preflight_refuses_a_tokenizer_of_8192(tmp_path: Path) -> None:
    """The same check in the training's preflight: a refusal at submission, not a crash at step 0."""
    _tokenizer_folder(tmp_path / "cache", {"model_max_length": 8192})
    extra = ["--tokenizer_cache_dir", str(tmp_path / "cache")]
    report = await preflight(fake_python(tmp_path, answer("mps")), sd_scripts(tmp_path), extra)
    assert not report.ok and "model_max_length 8192" in report.errors[0]
