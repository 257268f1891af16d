"""kohya at every resolution the API accepts (issue 11), and out-of-memory advice that only
suggests settings that run.

kohya trains at exactly --resolution unless bucketing is on, and then refuses any larger dataset
image at step 0 ("image too large, but cropping and bucketing are disabled"): our datasets are
512 px, so every resolution under 512 failed. The command line is checked here for each accepted
resolution; the opt-in tests/test_training_kohya.py runs the real kohya at 64 px.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from plasmad.core import limits
from plasmad.core.limits import check_train_resolution
from plasmad.training.kohya.command import KohyaParams, build_command, trained_resolution
from plasmad.training.kohya.outcome import OOM_ADVICE, lower_resolutions, oom_advice

ACCEPTED = list(range(limits.MIN_SIZE, limits.TRAIN_MAX_RESOLUTION + 1, limits.SIZE_MULTIPLE))


def _argv(tmp: Path, resolution: int, network_dim: int = 32) -> list[str]:
    params = KohyaParams(
        checkpoint=tmp / "ckpt.safetensors",
        train_data_dir=tmp / "train",
        output_dir=tmp / "out",
        output_name="spyke",
        resolution=resolution,
        network_dim=network_dim,
    )
    argv, _ = build_command(Path("python"), Path("train_network.py"), params)
    return argv


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize("resolution", ACCEPTED)
def test_every_accepted_resolution_is_bucketed(tmp_path: Path, resolution: int) -> None:
    check_train_resolution(resolution)  # the API takes it
    argv = _argv(tmp_path, resolution)
    side = trained_resolution(resolution)
    assert side % 64 == 0 and limits.MIN_SIZE <= side <= resolution < side + 64
    assert "--enable_bucket" in argv
    assert _value(argv, "--resolution") == f"{side},{side}"
    # kohya asserts min_bucket_reso <= resolution <= max_bucket_reso, and buckets in steps of 64.
    assert int(_value(argv, "--min_bucket_reso")) <= side <= int(_value(argv, "--max_bucket_reso"))
    assert _value(argv, "--bucket_reso_steps") == "64"


def test_multiples_of_64_train_as_asked() -> None:
    assert [trained_resolution(r) for r in (64, 128, 384, 448, 512)] == [64, 128, 384, 448, 512]
    assert [trained_resolution(r) for r in (72, 200, 500)] == [64, 192, 448]


@pytest.mark.parametrize("resolution", ACCEPTED)
@pytest.mark.parametrize("network_dim", [4, 16, 32, 128])
def test_oom_advice_suggests_only_settings_that_run(
    tmp_path: Path, resolution: int, network_dim: int
) -> None:
    advice = oom_advice(resolution, network_dim)
    for lower in lower_resolutions(resolution):
        assert f"{lower}" in advice and lower < resolution
        check_train_resolution(lower)
        assert trained_resolution(lower) == lower  # kohya trains it as asked
        assert _value(_argv(tmp_path, lower), "--resolution") == f"{lower},{lower}"
    if f"--dim {network_dim // 2} " in advice:
        _argv(tmp_path, resolution, network_dim // 2)  # a dim the command line takes
    assert "batch size at 1" in advice and "kept" in advice


def test_the_default_advice_is_lora_01s() -> None:
    assert OOM_ADVICE == oom_advice(512, 32)
    assert "--resolution 448, then 384" in OOM_ADVICE and "--dim 16 instead of 32" in OOM_ADVICE
    assert "--resolution" not in oom_advice(256, 32)  # never below 256: it learns little there
    assert "--resolution 256" in oom_advice(320, 32) and "then" not in oom_advice(320, 32)
