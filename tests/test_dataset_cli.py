"""`plasmactl dataset` end to end, on real images drawn here with Pillow.

The local commands (suggest, build, add, repeats, check, sheet) run with no daemon at all. `reg`
runs through plasmad's queue: against the in-process daemon over a FAKE ComfyUI (fast: the
bookkeeping, resuming, jobs already queued), and against the REAL ComfyUI and a real plasmad
process at 64x64, 2 steps (marked comfyui).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from PIL import Image, ImageDraw

from plasmactl import dataset_cmds
from plasmactl.output import Exit
from plasmad import dataset as ds
from tests.support.cli import DaemonThread, ctl, run_cli
from tests.support.images import draw_figure, make_sheet
from tests.support.processes import ComfyServer, DaemonProcess
from tests.support.training import TRIGGER

NO_DAEMON = ["--socket", "/nonexistent"]  # the local commands must not need plasmad


def local(*args: str, env: dict[str, str] | None = None) -> Result:
    return run_cli([*NO_DAEMON, "dataset", *args], env=env)


def describe_poses(spec_path: Path) -> None:
    """What the artist does after `suggest`: replace every TODO placeholder with the real pose."""
    data = json.loads(spec_path.read_text())
    poses = ["standing, front view", "arms crossed", "walking, looking back", "sitting", "pointing"]
    for i, crop in enumerate(data["crops"]):
        for key in ("framing", "pose", "background"):
            if crop[key].startswith(ds.PLACEHOLDER):
                crop[key] = poses[(i // 3) % len(poses)]
    spec_path.write_text(json.dumps(data, indent=2))


def figure_png(path: Path, colour: tuple[int, int, int] = (30, 150, 150)) -> Path:
    """A supplementary image, as the old pipeline made them: one figure, off-white ground, not square."""
    img = Image.new("RGB", (300, 420), (250, 248, 240))
    draw_figure(ImageDraw.Draw(img), 90, 40, 340, colour)
    img.save(path)
    return path


def rgb(path: Path) -> bytes:
    with Image.open(path) as im:
        assert im.size == (64, 64)
        return im.convert("RGB").tobytes()


def image_dir(dataset: Path) -> Path:
    [folder] = [p for p in dataset.iterdir() if p.is_dir()]
    return folder


# ------------------------------------------------------------------------------- local commands


def test_suggest_edit_build_add_check_sheet(tmp_path: Path) -> None:
    sheet = tmp_path / "Spyke_Final.png"
    make_sheet(sheet, 5)

    result = local("suggest", str(sheet))
    assert result.exit_code == 0, result.output
    spec = tmp_path / "Spyke_Final.crops.json"
    assert result.stdout.startswith(f"{spec}: 15 crops for 5 figure(s) on #ffffff")
    # A second suggest never replaces the file the artist may have edited.
    again = json.loads(local("suggest", str(sheet), "--json").stdout)
    assert again["spec"] == str(tmp_path / "Spyke_Final.crops-2.json") and len(again["figures"]) == 5

    dataset = tmp_path / "datasets" / "spyke"
    refused = local("build", str(spec), str(dataset))
    assert refused.exit_code == int(Exit.USAGE)
    assert refused.stderr.startswith("plasmactl: crops[0].pose: still the placeholder")
    assert len(refused.stderr.splitlines()) == 1 and not dataset.exists()

    describe_poses(spec)
    built = local("build", str(spec), str(dataset))
    assert built.exit_code == 0, built.output
    assert "15 originals, 30 images, repeats 10 (30 x 10 = 300)" in built.stdout
    assert "upscaled" in built.stderr  # the small face crops are reported as soft
    folder = dataset / "10_spyke_plasma_v1"
    full = "full body, standing, front view, white background\n"
    assert (folder / "fig1-full.txt").read_text() == f"spyke_plasma_v1, {full}"
    assert (folder / "fig1-full-mirrored.txt").read_text() == f"spyke_plasma_v1, mirrored, {full}"
    rebuilt = json.loads(local("build", str(spec), str(dataset), "--json").stdout)
    assert {f["action"] for f in rebuilt["files"]} == {"kept"}  # the same file again: nothing rewritten

    caption = tmp_path / "caption.txt"
    caption.write_text("full body, standing, right arm raised, plain background\n")
    extra = figure_png(tmp_path / "gemini run 02.png")
    added = json.loads(local("add", str(dataset), str(extra), "--caption-file", str(caption), "--no-flip",
                             "--json").stdout)
    assert (added["originals"], added["images"], added["repeats"]) == (16, 31, 10)
    folder = dataset / "10_spyke_plasma_v1"
    assert (folder / "gemini-run-02.txt").read_text() == (
        "spyke_plasma_v1, full body, standing, right arm raised, plain background\n")
    assert not (folder / "gemini-run-02-mirrored.png").exists()
    with Image.open(folder / "gemini-run-02.png") as im:
        assert im.size == (512, 512) and im.getpixel((5, 5)) == (250, 248, 240)  # padded with its ground

    checked = local("check", str(dataset))
    assert checked.exit_code == 0, checked.output
    assert "original images   16 (need >= 15)" in checked.stdout and "PASS" in checked.stdout
    report = json.loads(local("check", str(dataset), "--json").stdout)
    assert report["ok"] is True and report["originals"] == 16 and report["mirrored"] == 15

    made = local("sheet", str(dataset))
    assert made.exit_code == 0, made.output
    assert made.stdout.strip() == str(dataset / "contact-sheet.png")
    with Image.open(dataset / "contact-sheet.png") as im:
        assert im.format == "PNG" and im.width > 512
    second_sheet = json.loads(local("sheet", str(dataset), "--json").stdout)["sheet"]
    assert second_sheet == str(dataset / "contact-sheet-2.png")
    taken = local("sheet", str(dataset), "--out", str(dataset / "contact-sheet.png"))
    assert taken.exit_code == int(Exit.CONFLICT) and "exists" in taken.stderr


def test_check_failing_exits_9_with_the_reasons(tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    make_sheet(sheet, 3)
    spec = Path(json.loads(local("suggest", str(sheet), "--json").stdout)["spec"])
    describe_poses(spec)
    dataset = tmp_path / "spyke"
    assert local("build", str(spec), str(dataset)).exit_code == 0
    folder = image_dir(dataset)
    (folder / "fig2-face.txt").unlink()
    (folder / "fig3-full.txt").write_text("fig3, full body, standing, white background\n")

    result = local("check", str(dataset))
    assert result.exit_code == int(Exit.CHECK_FAILED) == 9
    assert "FAIL: 3 problem(s)" in result.stdout
    assert "9 original images, need at least 15 (mirrored copies do not count)" in result.stdout
    assert "fig2-face.txt: no caption" in result.stdout
    assert "fig3-full.txt: does not start with the trigger word 'spyke_plasma_v1'" in result.stdout
    [line] = result.stderr.splitlines()
    assert line == f"plasmactl: {dataset} fails the check: 3 problem(s)"

    as_json = local("check", str(dataset), "--json")
    assert as_json.exit_code == 9
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and {p["kind"] for p in report["problems"]} == {"count", "caption"}

    # A regularisation set that is asked for must be there.
    reg = local("check", str(dataset), "--reg", str(tmp_path / "nowhere-reg"), "--json")
    assert {p["kind"] for p in json.loads(reg.stdout)["problems"]} == {"count", "caption", "reg"}


def test_add_and_trigger_errors_are_one_line(tmp_path: Path) -> None:
    dataset = tmp_path / "spyke"
    image = figure_png(tmp_path / "a.png")
    cases = [
        (["add", str(dataset), str(image)], Exit.USAGE, "--caption or --caption-file"),
        (["add", str(dataset), str(image), "--caption", "full body, standing"], Exit.USAGE,
         "caption: has 2 field(s), needs 3"),
        (["add", str(dataset), str(image), "--caption", "mirrored, full body, standing, street"], Exit.USAGE,
         "added to the flipped copy"),
        (["add", str(dataset), str(tmp_path / "missing.png"), "--caption", "a, b, c"], Exit.NOT_FOUND,
         "missing.png not found"),
        (["add", str(dataset), str(image), "--caption", "a, b, c", "--trigger", "bad word"], Exit.USAGE,
         "trigger: 'bad word'"),
        (["add", str(dataset), str(image), "--caption", "a, b, c", "--background", "nocolour"], Exit.USAGE,
         "background: 'nocolour' is not a colour"),
        (["build", str(tmp_path / "none.json"), str(dataset)], Exit.NOT_FOUND, "crops file"),
    ]
    for args, code, text in cases:
        result = local(*args)
        assert result.exit_code == int(code), (args, result.output)
        [line] = result.stderr.splitlines()
        assert line.startswith("plasmactl: ") and text in line, (args, line)
    assert not dataset.exists()


def test_the_default_trigger_is_plasmads() -> None:
    """The CLI's default (read from plasmad's config, so that `--help` need not import the dataset
    library) is the one the library uses."""
    from plasmad.core.config import Config

    assert Config.trigger_word == ds.DEFAULT_TRIGGER
    assert f"[default: {ds.DEFAULT_TRIGGER}]" in run_cli(["dataset", "check", "--help"]).stdout


def test_trigger_word_from_the_environment(tmp_path: Path) -> None:
    dataset = tmp_path / "spyke"
    env = {"PLASMA_TRIGGER_WORD": "spyke_plasma_v2"}
    for i in range(2):
        image = figure_png(tmp_path / f"img{i}.png", (40 + 90 * i, 90, 160))
        result = local("add", str(dataset), str(image), "--caption", "full body, standing, street", env=env)
        assert result.exit_code == 0, result.output
    folder = image_dir(dataset)
    assert folder.name == "75_spyke_plasma_v2"  # 4 images x 75 = 300
    assert (folder / "img0.txt").read_text().startswith("spyke_plasma_v2, full body")
    # The check reads the same setting: under the default trigger word this folder is foreign.
    assert local("check", str(dataset), env=env).exit_code == 9  # too few images, but the right folder
    other = json.loads(local("check", str(dataset), "--json").stdout)
    assert "layout" in {p["kind"] for p in other["problems"]}
    (folder / "img1.png").unlink()
    (folder / "img1.txt").unlink()
    (folder / "img1-mirrored.png").unlink()
    (folder / "img1-mirrored.txt").unlink()
    redone = local("repeats", str(dataset), env=env)
    assert redone.exit_code == 0 and "repeats 150, was 75" in redone.stdout
    assert image_dir(dataset).name == "150_spyke_plasma_v2"


# ----------------------------------------------------------------- reg, through a FAKE ComfyUI


def reg(socket: Path | str, dataset: Path, *args: str) -> Result:
    return run_cli(["--socket", str(socket), "dataset", "reg", str(dataset), *args])


def test_reg_count_and_paths_are_checked(daemon: DaemonThread, tmp_path: Path) -> None:
    dataset = tmp_path / "spyke"
    dataset.mkdir()
    cases = [
        (["--count", "3"], "count: 3 is outside 100-200 (DATA-03) (allowSmall permits fewer"),
        (["--count", "201", "--allow-small"], "count: 201 is outside 1-200"),
        (["--count", "3", "--allow-small", "--width", "1024"], "width: 1024 is over the hardware limit"),
        (["--count", "3", "--allow-small", "--class", "a b"], "className: 'a b' must be letters"),
        (["--count", "3", "--allow-small", "--checkpoint", "nope.safetensors"], "checkpoint"),
    ]
    for args, text in cases:
        result = reg(daemon.socket, dataset, *args)
        assert result.exit_code == int(Exit.USAGE), (args, result.output)
        line, *_notes = result.stderr.splitlines()  # notes: where an unknown checkpoint was looked for
        assert text in line, (args, line)
    result = reg(daemon.socket, tmp_path / "not-built", "--count", "3", "--allow-small")
    assert result.exit_code == 2 and "is not a folder" in result.stderr
    assert not ds.reg_root(dataset).exists()  # nothing queued, nothing made
    assert reg("/nonexistent", dataset).exit_code == int(Exit.NO_DAEMON)


def test_reg_resumes_and_never_queues_an_image_twice(
    daemon: DaemonThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = tmp_path / "spyke"
    dataset.mkdir()
    folder = ds.reg_dir(dataset)
    small = ("--count", "3", "--allow-small", "--width", "64", "--height", "64", "--steps", "2")

    daemon.fake.scenario = "hang"  # the first image hangs in "ComfyUI": the others wait in the queue
    first = json.loads(reg(daemon.socket, dataset, *small, "--no-wait", "--json").stdout)
    assert len(first["queued"]) == 3 and first["existing"] == 0 and first["regDir"] == str(folder)
    second = json.loads(reg(daemon.socket, dataset, *small, "--no-wait", "--json").stdout)
    assert second["queued"] == [] and second["alreadyQueued"] == first["queued"]

    daemon.fake.scenario = "error"  # every image fails from here on
    daemon.loop.call_soon_threadsafe(lambda: [e.set() for e in daemon.fake._hang.values()])
    for job_id in first["queued"]:
        assert ctl(daemon, "wait", job_id).exit_code == int(Exit.JOB_FAILED)
    failed = reg(daemon.socket, dataset, *small)  # nothing active: all three are queued again
    assert failed.exit_code == int(Exit.JOB_FAILED), failed.output
    assert "0/3 there; 3 queued" in failed.stderr
    assert "reg-0002.png: failed: " in failed.stderr and "run it again to retry them" in failed.stderr
    assert not folder.exists() or not any(folder.iterdir())

    daemon.fake.scenario = "normal"
    monkeypatch.setattr(dataset_cmds, "_interactive", lambda: True)  # as in a terminal: one bar, redrawn
    shown = reg(daemon.socket, dataset, *small, "--count", "1")
    assert shown.exit_code == 0, shown.output
    # (click drops the erase-line code when the output is not a real terminal)
    assert "\rreg [-" in shown.stderr and shown.stderr.endswith("\rreg [" + "#" * 30 + "] 1/1\n")
    monkeypatch.undo()
    done = reg(daemon.socket, dataset, *small, "--json")
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert (summary["existing"], summary["generated"], summary["present"]) == (1, 2, 3)
    assert sorted(p.name for p in folder.iterdir()) == [
        f"reg-000{i}.{ext}" for i in range(3) for ext in ("png", "txt")]
    assert (folder / "reg-0002.txt").read_text() == ds.reg_prompt(2) + "\n"
    job = json.loads(ctl(daemon, "status", summary["jobs"][-1]["id"], "--json").stdout)
    assert job["request"]["seed"] == 1002 and "loraId" not in job["request"]
    assert job["result"]["template"] == "txt2img-base" and job["outputs"] == [str(folder / "reg-0002.png")]

    nothing = reg(daemon.socket, dataset, *small)
    assert nothing.exit_code == 0
    assert "all 3 reg images are there; nothing to generate" in nothing.stderr
    assert f"{folder}: 3/3 reg images (0 generated now, 3 were there)" in nothing.stdout

    (folder / "reg-0001.png").unlink()
    (folder / "reg-0002.png").write_bytes(b"the artist's own file")  # present: never regenerated
    redo = json.loads(reg(daemon.socket, dataset, *small, "--json").stdout)
    assert [j["image"] for j in redo["jobs"]] == [str(folder / "reg-0001.png")]
    assert (folder / "reg-0002.png").read_bytes() == b"the artist's own file"


# ------------------------------------------------------------------ reg, through the REAL ComfyUI


@pytest.mark.comfyui
def test_reg_on_the_real_comfyui(comfyui: ComfyServer, start_daemon: Any, tmp_path: Path) -> None:
    d: DaemonProcess = start_daemon(COMFYUI_URL=comfyui.url, COMFYUI_DIR=str(comfyui.dir))
    dataset = tmp_path / "datasets" / "spyke"
    dataset.mkdir(parents=True)
    folder = tmp_path / "datasets" / "spyke-reg" / "1_character"
    small = ("--count", "3", "--allow-small", "--width", "64", "--height", "64", "--steps", "2")

    first = reg(d.denv.socket, dataset, *small)
    assert first.exit_code == 0, first.output + d.log.read_text()[-3000:]
    assert f"{folder}: 0/3 there; 3 queued" in first.stderr
    assert "reg [##########--------------------] 1/3  reg-0000.png succeeded" in first.stderr
    assert f"{folder}: 3/3 reg images (3 generated now, 0 were there)" in first.stdout
    assert sorted(p.name for p in folder.iterdir()) == [
        f"reg-000{i}.{ext}" for i in range(3) for ext in ("png", "txt")]
    first_pixels = [rgb(folder / f"reg-000{i}.png") for i in range(3)]
    for i in range(3):
        assert (folder / f"reg-000{i}.txt").read_text() == ds.reg_prompt(i) + "\n"
        assert TRIGGER not in (folder / f"reg-000{i}.txt").read_text()
    assert len(set(first_pixels)) == 3  # distinct seeds, distinct images
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}

    # Over HTTP too: a complete set queues nothing (200, not 202).
    body = {"datasetDir": str(dataset), "count": 3, "allowSmall": True, "width": 64, "height": 64, "steps": 2}
    status, again = d.http("POST", "/datasets/reg", body)
    assert status == 200 and again["queued"] == [] and again["existing"] == 3
    status, bad = d.http("POST", "/datasets/reg", {**body, "count": 3, "allowSmall": False})
    assert status == 400 and bad["error"]["field"] == "count"

    (folder / "reg-0001.png").unlink()
    redo = reg(d.denv.socket, dataset, *small, "--json")
    assert redo.exit_code == 0, redo.output
    summary = json.loads(redo.stdout)
    assert (summary["existing"], summary["generated"]) == (2, 1)
    assert [j["image"] for j in summary["jobs"]] == [str(folder / "reg-0001.png")]
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}
    for name, state in before.items():
        if name != "reg-0001.png":
            assert after[name] == state, name  # untouched: not rewritten, not regenerated
    # Same seed, same graph: the regenerated image is the one the first run made (pixel-exact on a
    # CPU; the files differ only in the graph SaveImage embeds, which names the job).
    assert rgb(folder / "reg-0001.png") == first_pixels[1]

    assert run_cli(["dataset", "check", str(dataset), "--json"]).exit_code == 9  # no training images yet
    report = json.loads(run_cli(["dataset", "check", str(dataset), "--json"]).stdout)
    assert report["regImages"] == 3 and "reg" not in {p["kind"] for p in report["problems"]}
