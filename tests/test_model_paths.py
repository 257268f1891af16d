"""plasmad.comfy.model_paths and model_catalog: models found where ComfyUI finds them (its folders,
symlinks followed, extra_model_paths.yaml in its order), names that cannot leave those folders, and
refusals that list the nearest usable names.

The model files are FAKE safetensors headers (tests/support/modelfiles.py); the folders, links and
YAML files are real. The search order is also checked against ComfyUI's own `folder_paths` and
`utils/extra_config.py`, run in the demo ComfyUI's venv (skipped where `.demo/` is missing).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from plasmad.comfy import model_catalog
from plasmad.comfy.model_paths import KINDS, check_name, load_folders, nearest_names
from plasmad.core.errors import ErrorCode, PlasmaError
from tests.support.modelfiles import (
    CHECKPOINT_CKPT,
    CHECKPOINT_JUNK,
    CHECKPOINT_LINKED,
    CHECKPOINT_SD2,
    CHECKPOINT_SD15,
    CHECKPOINT_SDXL,
    LORA_SD15,
    LORA_SDXL,
    SD15_CHECKPOINT,
    SD15_CONTROLNET,
    SD15_LORA,
    make_models_dir,
    write_safetensors,
)
from tests.support.processes import COMFY_DIR, COMFY_PYTHON


@pytest.fixture
def comfyui(tmp_path: Path) -> Path:
    root = tmp_path / "ComfyUI"
    make_models_dir(root)
    return root


def _refusal(root: Path, kind: str, name: str, field: str = "checkpoint") -> PlasmaError:
    folders = load_folders(root)
    with pytest.raises(PlasmaError) as caught:
        model_catalog.check_model(folders, kind, name, field)  # type: ignore[arg-type]
    assert caught.value.code == ErrorCode.INVALID_INPUT and caught.value.field == field
    return caught.value


# --- names: what a request may spell ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../x.safetensors", "sub/../../x.safetensors", "..", "/etc/passwd", "\\x.safetensors", "", "a\x00b",
     "./x.safetensors", "sub//x.safetensors", "sub/", "C:\\models\\x.safetensors"],
)
def test_names_that_could_leave_the_folders_are_refused(name: str) -> None:
    with pytest.raises(PlasmaError) as caught:
        check_name(name, "checkpoint")
    assert caught.value.field == "checkpoint" and "as ComfyUI lists it" in caught.value.message


def test_an_absolute_path_to_a_real_model_is_refused(comfyui: Path) -> None:
    absolute = str(comfyui / "models" / "checkpoints" / CHECKPOINT_SD15)
    assert "not a path" in _refusal(comfyui, "checkpoints", absolute).message


# --- symlinks: followed, as ComfyUI follows them --------------------------------------------------


def test_a_symlinked_checkpoint_is_followed(comfyui: Path) -> None:
    """The issue's case: the checkpoint lives elsewhere, models/checkpoints holds a link to it."""
    folders = load_folders(comfyui)
    path = model_catalog.check_model(folders, "checkpoints", CHECKPOINT_LINKED, "checkpoint")
    assert path == comfyui / "models" / "checkpoints" / CHECKPOINT_LINKED  # the link, as ComfyUI names it
    assert path.is_symlink() and not path.resolve().is_relative_to(comfyui / "models")


def test_a_symlinked_folder_is_followed(comfyui: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared-models"
    write_safetensors(shared / "anything-v5.safetensors", SD15_CHECKPOINT)
    (comfyui / "models" / "checkpoints" / "shared").symlink_to(shared, target_is_directory=True)
    folders = load_folders(comfyui)
    assert "shared/anything-v5.safetensors" in folders.names("checkpoints")
    assert model_catalog.check_model(folders, "checkpoints", "shared/anything-v5.safetensors", "checkpoint")


def test_a_link_back_up_the_tree_is_walked_once(comfyui: Path) -> None:
    checkpoints = comfyui / "models" / "checkpoints"
    (checkpoints / "loop").symlink_to(checkpoints, target_is_directory=True)
    names = load_folders(comfyui).names("checkpoints")
    assert CHECKPOINT_SD15 in names and not any(n.startswith("loop/") for n in names)


def test_a_dangling_link_is_skipped_and_named(comfyui: Path, tmp_path: Path) -> None:
    checkpoints = comfyui / "models" / "checkpoints"
    (checkpoints / "gone.safetensors").symlink_to(tmp_path / "unmounted-disk" / "gone.safetensors")
    assert "gone.safetensors" not in load_folders(comfyui).names("checkpoints")  # ComfyUI skips it too
    err = _refusal(comfyui, "checkpoints", "gone.safetensors")
    assert "is a link to a file that is not there" in err.message


def test_a_folder_is_not_a_model(comfyui: Path) -> None:
    (comfyui / "models" / "checkpoints" / "dir.safetensors").mkdir()
    assert "is not in" in _refusal(comfyui, "checkpoints", "dir.safetensors").message


# --- what a request may name, and the nearest names when it names nothing ------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (CHECKPOINT_SDXL, "SDXL"),
        (CHECKPOINT_SD2, "SD 2.x"),
        (CHECKPOINT_CKPT, "pickle"),
        ("nowhere/Model.PT", "pickle"),  # refused by its name: nothing of a pickle is ever opened
        (CHECKPOINT_JUNK, "not a readable safetensors"),
        (LORA_SD15, "is not in"),  # a LoRA's name is not a checkpoint's
    ],
)
def test_checkpoints_that_are_refused(comfyui: Path, name: str, reason: str) -> None:
    assert reason in _refusal(comfyui, "checkpoints", name).message


def test_a_lora_named_as_a_checkpoint_says_what_it_is(comfyui: Path) -> None:
    models = comfyui / "models"
    (models / "checkpoints" / "a-lora.safetensors").symlink_to(models / "loras" / LORA_SD15)
    err = _refusal(comfyui, "checkpoints", "a-lora.safetensors")
    assert "not a checkpoint" in err.message and "lora" in err.message
    assert "SDXL" in _refusal(comfyui, "loras", LORA_SDXL, "loraId").message


def test_an_unknown_name_lists_the_nearest_usable_names(comfyui: Path) -> None:
    err = _refusal(comfyui, "checkpoints", "sd1.safetensors")
    nearest = err.details["nearest"]
    # Only names a request may use: the SD 2 and SDXL files are near in spelling, but not valid.
    assert nearest[0] == CHECKPOINT_SD15 and CHECKPOINT_LINKED in nearest
    assert CHECKPOINT_SDXL not in nearest and CHECKPOINT_SD2 not in nearest
    assert f"nearest: {CHECKPOINT_SD15}" in err.message
    assert err.details["searched"] == [str(comfyui / "models" / "checkpoints")]
    lora = _refusal(comfyui, "loras", "spyke_sd5.safetensors", "loraId")
    assert lora.details["nearest"] == [LORA_SD15]


def test_nearest_names_compare_file_names_not_folders() -> None:
    names = ["anime/anything-v5.safetensors", "realistic/realisticVision.safetensors", "x.ckpt"]
    assert nearest_names("Anything-V5.safetensors", names)[0] == "anime/anything-v5.safetensors"
    assert len(nearest_names("zzzzzz", names)) == 3  # nothing alike: still what could be named
    assert len(nearest_names("x", names * 3, n=2)) == 2
    assert nearest_names("x", []) == []


def test_the_catalog_says_what_each_file_is(comfyui: Path) -> None:
    folders = load_folders(comfyui)
    entries = {e.name: e for e in model_catalog.catalog(folders, "checkpoints")}
    sd15, linked, sdxl = entries[CHECKPOINT_SD15], entries[CHECKPOINT_LINKED], entries[CHECKPOINT_SDXL]
    assert sd15.judgement.usable and sd15.judgement.family == "sd15"
    assert sd15.bytes == (comfyui / "models" / "checkpoints" / CHECKPOINT_SD15).stat().st_size
    assert linked.link is not None and linked.judgement.usable
    assert "pickle" in (entries[CHECKPOINT_CKPT].judgement.reason or "")  # listed, as ComfyUI lists it
    assert sdxl.judgement.family == "sdxl" and not sdxl.judgement.usable
    assert entries[CHECKPOINT_JUNK].judgement.family is None


def test_a_pth_controlnet_is_judged_by_its_magic_only(comfyui: Path) -> None:
    folder = comfyui / "models" / "controlnet"
    folder.mkdir(parents=True)
    (folder / "openpose.pth").write_bytes(b"PK\x03\x04 torch zip archive, never unpickled")
    (folder / "legacy.pth").write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.")  # pre-1.6 pickle
    (folder / "page.pth").write_bytes(b"<!DOCTYPE html> a failed download")
    write_safetensors(folder / "cn.safetensors", SD15_CONTROLNET)
    (folder / "cn.ckpt").write_bytes(b"PK\x03\x04")
    folders = load_folders(comfyui)
    for name in ("openpose.pth", "legacy.pth", "cn.safetensors"):
        assert model_catalog.check_model(folders, "controlnet", name, "controlnet") == folder / name
    assert "not a PyTorch file" in _refusal(comfyui, "controlnet", "page.pth", "controlnet").message
    assert ".safetensors or .pth" in _refusal(comfyui, "controlnet", "cn.ckpt", "controlnet").message


def test_t2i_adapter_is_a_controlnet_folder_too(comfyui: Path) -> None:
    write_safetensors(comfyui / "models" / "t2i_adapter" / "adapter.safetensors", SD15_CONTROLNET)
    assert "adapter.safetensors" in load_folders(comfyui).names("controlnet")


# --- extra_model_paths.yaml: ComfyUI's folders, in ComfyUI's order ---------------------------------

A1111_YAML = """\
a111:
    base_path: ../a1111/
    checkpoints: models/Stable-diffusion
    loras: |
         models/Lora
         models/LyCORIS
    controlnet: models/ControlNet
    vae: models/VAE
shared:
    is_default: true
    checkpoints: {shared}
relative:
    loras: relative-loras
empty:
"""


def _write_yaml(root: Path, text: str, name: str = "extra_model_paths.yaml") -> Path:
    path = root / name
    path.write_text(text)
    return path


def test_extra_model_paths_are_searched_in_comfyuis_order(comfyui: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "ckpt"
    _write_yaml(comfyui, A1111_YAML.format(shared=shared))
    folders = load_folders(comfyui)
    models = comfyui.resolve() / "models"
    a1111 = comfyui.resolve().parent / "a1111" / "models"
    # is_default puts its folder first; the others come after ComfyUI's own, in the file's order.
    assert folders.search("checkpoints") == (shared, models / "checkpoints", a1111 / "Stable-diffusion")
    assert folders.search("loras") == (
        models / "loras", a1111 / "Lora", a1111 / "LyCORIS", comfyui.resolve() / "relative-loras",
    )
    controlnet = (models / "controlnet", models / "t2i_adapter", a1111 / "ControlNet")
    assert folders.search("controlnet") == controlnet
    assert folders.config_files == (comfyui.resolve() / "extra_model_paths.yaml",) and folders.problems == ()


def test_the_first_folder_holding_a_name_wins(comfyui: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    _write_yaml(comfyui, A1111_YAML.format(shared=shared))
    a1111 = comfyui.parent / "a1111" / "models"
    lora = write_safetensors(a1111 / "Lora" / "june.safetensors", SD15_LORA)
    write_safetensors(a1111 / "LyCORIS" / "june.safetensors", SD15_LORA)  # shadowed: never loaded
    write_safetensors(shared / CHECKPOINT_SD15, SD15_CHECKPOINT)  # is_default: before models/checkpoints
    folders = load_folders(comfyui)
    assert model_catalog.check_model(folders, "loras", "june.safetensors", "loraId") == lora.resolve()
    assert folders.find("checkpoints", CHECKPOINT_SD15) == shared / CHECKPOINT_SD15
    entry = next(e for e in model_catalog.catalog(folders, "loras") if e.name == "june.safetensors")
    assert entry.folder == (a1111 / "Lora").resolve() and entry.shadows == ((a1111 / "LyCORIS").resolve(),)
    assert folders.names("loras").count("june.safetensors") == 1


def test_a_broken_yaml_keeps_comfyuis_own_folders_and_says_why(comfyui: Path) -> None:
    _write_yaml(comfyui, "a111:\n  checkpoints: [unclosed\n")
    folders = load_folders(comfyui)
    assert folders.search("checkpoints") == (comfyui.resolve() / "models" / "checkpoints",)
    assert folders.problems and "cannot be read" in folders.problems[0]
    err = _refusal(comfyui, "checkpoints", "missing.safetensors")
    assert "extra_model_paths.yaml cannot be read" in err.message


def test_a_section_that_is_not_folder_lines_is_a_problem(comfyui: Path) -> None:
    _write_yaml(comfyui, "a111:\n  base_path: /x\n  checkpoints:\n    - a\n    - b\nother: 5\n")
    problems = load_folders(comfyui).problems
    assert any("a111.checkpoints" in p for p in problems) and any("'other'" in p for p in problems)


def test_base_path_takes_home_and_variables(
    comfyui: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLASMA_TEST_MODELS", str(tmp_path / "from-env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _write_yaml(comfyui, "e:\n  base_path: $PLASMA_TEST_MODELS\n  loras: l\nh:\n  base_path: ~/m\n  loras: l")
    expected = (tmp_path / "from-env" / "l", tmp_path / "home" / "m" / "l")
    assert load_folders(comfyui).search("loras")[1:] == expected


def test_comfyui_args_of_a_managed_comfyui(comfyui: Path, tmp_path: Path) -> None:
    """--base-directory moves ComfyUI's own models/; --extra-model-paths-config adds files."""
    extra = _write_yaml(tmp_path, "x:\n  checkpoints: /srv/ckpt\n", "mine.yaml")
    args = ["--cpu", "--base-directory", str(tmp_path / "base"), f"--extra-model-paths-config={extra}"]
    folders = load_folders(comfyui, args)
    assert folders.search("checkpoints") == (tmp_path / "base" / "models" / "checkpoints", Path("/srv/ckpt"))
    assert folders.models_dir == tmp_path / "base" / "models"


@pytest.mark.skipif(not COMFY_PYTHON.exists(), reason="no demo ComfyUI (scripts/setup-comfyui.sh)")
def test_the_order_is_comfyuis_own(tmp_path: Path) -> None:
    """The same YAML through ComfyUI's own folder_paths and extra_config gives the same folders."""
    shared = tmp_path / "shared" / "ckpt"
    yaml_file = _write_yaml(tmp_path, A1111_YAML.format(shared=shared), "extra.yaml")
    probe = (
        "import json, sys; sys.argv = ['main.py']\n"
        "import folder_paths, utils.extra_config as extra\n"
        f"extra.load_extra_path_config({str(yaml_file)!r})\n"
        f"print(json.dumps({{k: folder_paths.get_folder_paths(k) for k in {list(KINDS)!r}}}))\n"
    )
    out = subprocess.run(
        [str(COMFY_PYTHON), "-c", probe], cwd=COMFY_DIR, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": ""}, check=True,
    )
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    ours = load_folders(COMFY_DIR, ["--extra-model-paths-config", str(yaml_file)])
    for kind in KINDS:
        assert [str(p) for p in ours.search(kind)] == theirs[kind], kind
