"""The dataset workflow on real images drawn here with Pillow: sheets of figures on a plain
background, crops, captions, flips, kohya's layout, the check, the reg-set helpers, the contact sheet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageOps

from plasmad import dataset as ds
from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.core.limits import DATASET_IMAGE_SIZE, DATASET_MIN_IMAGES
from tests.support.images import WHITE, draw_figure, make_sheet
from tests.support.training import TRIGGER


def filled_spec(sheet: Path, out: Path, *, no_flip: frozenset[str] = frozenset()) -> Path:
    """suggest's spec with the placeholders described, as the artist would."""
    suggestion = ds.suggest_crops(sheet, spec_dir=out.parent)
    data = suggestion.spec.model_dump(mode="json")
    for crop in data["crops"]:
        crop["pose"] = f"standing, front view, {crop['name'].split('-')[0]}"
        crop["flip"] = crop["name"] not in no_flip
    out.write_text(json.dumps(data))
    return out


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def image_dir(dataset: Path) -> Path:
    found = ds.find_image_dir(dataset, TRIGGER)
    assert found is not None
    return found


# ---------------------------------------------------------------------------------- captions


def test_caption_format_and_parse() -> None:
    text = ds.format_caption(TRIGGER, "close-up", "standing,  looking at viewer", "white background")
    assert text == "spyke_plasma_v1, close-up, standing, looking at viewer, white background"
    parsed = ds.parse_caption(text, TRIGGER)
    assert parsed.trigger == TRIGGER and not parsed.mirrored
    assert parsed.fields == ds.CaptionFields("close-up", "standing, looking at viewer", "white background")

    flipped = ds.format_caption(TRIGGER, "full body", "walking", "white background", mirrored=True)
    assert flipped == "spyke_plasma_v1, mirrored, full body, walking, white background"
    assert ds.parse_caption(flipped, TRIGGER).mirrored

    with pytest.raises(PlasmaError, match="not first"):
        ds.parse_caption("close-up, spyke_plasma_v1, standing, white background", TRIGGER)
    with pytest.raises(PlasmaError, match="needs 3"):
        ds.parse_caption("spyke_plasma_v1, close-up, white background", TRIGGER)
    with pytest.raises(PlasmaError, match="does not start"):
        ds.parse_caption("other_v1, close-up, standing, white background", TRIGGER)
    with pytest.raises(PlasmaError) as exc:
        ds.format_caption(TRIGGER, "close-up, portrait", "standing", "white background")
    assert exc.value.field == "framing"
    with pytest.raises(PlasmaError) as exc:
        ds.format_caption(TRIGGER, "close-up", "mirrored", "white background")
    assert exc.value.field == "pose"
    with pytest.raises(PlasmaError):
        ds.check_trigger("spyke plasma")


def test_caption_text_from_the_command_line() -> None:
    fields = ds.CaptionFields("upper body", "arms crossed, smiling", "city street")
    assert ds.caption_fields_from_text("upper body, arms crossed, smiling, city street", TRIGGER) == fields
    with_trigger = f"{TRIGGER}, upper body, arms crossed, smiling, city street"
    assert ds.caption_fields_from_text(with_trigger, TRIGGER) == fields
    with pytest.raises(PlasmaError, match="mirrored"):
        ds.caption_fields_from_text(f"{TRIGGER}, mirrored, upper body, standing, city street", TRIGGER)
    with pytest.raises(PlasmaError, match="needs 3"):
        ds.caption_fields_from_text("upper body, city street", TRIGGER)


# ---------------------------------------------------------------------------------- normalise


def test_normalise_pads_with_the_background_and_keeps_the_aspect() -> None:
    bg = (10, 20, 30)
    wide = Image.new("RGB", (300, 150), (250, 0, 0))
    out = ds.normalise(wide, bg)
    assert out.image.size == (DATASET_IMAGE_SIZE, DATASET_IMAGE_SIZE) and out.image.mode == "RGB"
    assert out.scale == pytest.approx(512 / 300) and out.warnings == []
    assert out.image.getpixel((256, 20)) == bg  # padding above
    assert out.image.getpixel((256, 500)) == bg  # and below
    assert out.image.getpixel((256, 256)) == (250, 0, 0)
    assert out.image.getpixel((3, 256)) == (250, 0, 0)  # the long side fills the width

    assert ds.normalise(Image.new("RGB", (1024, 2048), bg), bg).scale == 0.25

    tiny = ds.normalise(Image.new("RGB", (100, 50), (0, 250, 0)), bg)
    assert tiny.scale == pytest.approx(5.12)
    assert len(tiny.warnings) == 1 and "upscaled 5.1x" in tiny.warnings[0]

    clear = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    ImageDraw.Draw(clear).rectangle((50, 50, 150, 150), fill=(0, 0, 255, 255))
    flat = ds.normalise(clear, (255, 255, 255)).image
    assert flat.getpixel((10, 10)) == (255, 255, 255)  # transparent became the background, not black
    assert flat.getpixel((256, 256)) == (0, 0, 255)


def test_detect_background() -> None:
    img = Image.new("RGB", (200, 100), (240, 235, 220))
    ImageDraw.Draw(img).rectangle((50, 10, 150, 90), fill=(0, 0, 0))
    assert ds.detect_background(img) == (240, 235, 220)
    assert ds.detect_background(Image.new("RGBA", (50, 50), (0, 0, 0, 0))) == (255, 255, 255)


# ---------------------------------------------------------------------------------- suggest


def test_suggest_finds_the_figures_and_never_overwrites_a_spec(tmp_path: Path) -> None:
    sheet = tmp_path / "Spyke_Final.png"
    boxes = make_sheet(sheet, 4)
    suggestion = ds.suggest_crops(sheet)
    assert suggestion.background == WHITE and suggestion.warnings == []
    assert len(suggestion.figures) == 4  # the speck and the label are not figures
    for fig, drawn in zip(suggestion.figures, boxes, strict=True):
        assert all(abs(a - b) <= 3 for a, b in zip(fig.box, drawn, strict=True)), (fig.box, drawn)

    spec = suggestion.spec
    assert spec.sheet == "Spyke_Final.png" and spec.sheet_background == "#ffffff"
    assert [c.name for c in spec.crops[:3]] == ["fig1-face", "fig1-bust", "fig1-full"]
    assert [c.framing for c in spec.crops[:3]] == ["close-up", "upper body", "full body"]
    for i, drawn in enumerate(boxes):
        face, bust, full = spec.crops[3 * i: 3 * i + 3]
        x0, y0, x1, y1 = drawn
        assert full.box[0] <= x0 and full.box[1] <= y0 and full.box[2] >= x1 and full.box[3] >= y1
        fx0, fy0, fx1, fy1 = face.box
        assert fx1 - fx0 == fy1 - fy0  # square
        assert fx0 < (x0 + x1) / 2 < fx1 and fy0 <= y0 and fy1 < y0 + 0.35 * (y1 - y0)  # around the head
        assert bust.box[3] < y0 + 0.5 * (y1 - y0)
        for crop in (face, bust, full):
            assert crop.pose.startswith("TODO") and crop.background == "white background"
        others = [b for j, b in enumerate(boxes) if j != i]
        assert all(full.box[2] <= o[0] or full.box[0] >= o[2] for o in others)  # one figure per crop

    first = ds.write_spec(spec, ds.default_spec_path(sheet))
    second = ds.write_spec(spec, ds.default_spec_path(sheet))
    assert first.name == "Spyke_Final.crops.json" and second.name == "Spyke_Final.crops-2.json"
    assert ds.load_spec(first)[0] == spec and ds.load_spec(first)[1] == sheet


def test_suggest_on_a_transparent_and_a_coloured_sheet(tmp_path: Path) -> None:
    clear = tmp_path / "clear.png"
    make_sheet(clear, 2, mode="RGBA", extras=False)
    assert len(ds.suggest_crops(clear).figures) == 2
    grey = tmp_path / "grey.png"
    make_sheet(grey, 3, background=(128, 128, 128))
    suggestion = ds.suggest_crops(grey)
    assert len(suggestion.figures) == 3 and suggestion.spec.crops[0].background == "grey background"
    blank = tmp_path / "blank.png"
    Image.new("RGB", (100, 100), WHITE).save(blank)
    with pytest.raises(PlasmaError, match="no figures"):
        ds.suggest_crops(blank)


# ---------------------------------------------------------------------------------- the spec


def test_spec_errors_name_the_field(tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    make_sheet(sheet, 1)
    good: dict[str, object] = {"name": "a", "box": [0, 0, 50, 50], "framing": "close-up", "pose": "standing",
            "background": "white background"}

    def field_of(crops: list[dict[str, object]], **top: object) -> str | None:
        spec = tmp_path / "crops.json"
        spec.unlink(missing_ok=True)
        spec.write_text(json.dumps({"sheet": "sheet.png", "crops": crops, **top}))
        with pytest.raises(PlasmaError) as exc:
            ds.build_from_sheet(spec, tmp_path / "ds", TRIGGER)
        assert exc.value.code == ErrorCode.INVALID_INPUT
        return exc.value.field

    assert field_of([good, {**good, "name": "b", "box": [0, 0, 5000, 50]}]) == "crops[1].box"
    assert field_of([{**good, "box": [10, 10, 10, 50]}]) == "crops[0].box"
    assert field_of([{**good, "box": [0, 0, 50]}]) == "crops[0].box[3]"
    assert field_of([{**good, "box": [0, 0, 50.5, 50]}]) == "crops[0].box[2]"
    assert field_of([{**good, "colour": "red"}]) == "crops[0].colour"
    assert field_of([good, {**good, "name": "A"}]) == "crops[1].name"
    assert field_of([{**good, "name": "a-mirrored"}]) == "crops[0].name"
    assert field_of([{**good, "name": "../evil"}]) == "crops[0].name"
    assert field_of([{**good, "framing": "close-up, portrait"}]) == "crops[0].framing"
    assert field_of([{**good, "pose": TRIGGER}]) == "crops[0].pose"
    assert field_of([good], sheet_background="not-a-colour") == "sheet_background"
    assert field_of([]) == "crops"
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PlasmaError, match="not valid JSON"):
        ds.load_spec(tmp_path / "bad.json")
    assert not (tmp_path / "ds").exists()


def test_build_refuses_the_placeholders_of_suggest(tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    make_sheet(sheet, 1)
    spec = ds.write_spec(ds.suggest_crops(sheet).spec, tmp_path / "crops.json")
    with pytest.raises(PlasmaError) as exc:
        ds.build_from_sheet(spec, tmp_path / "ds", TRIGGER)
    assert exc.value.field == "crops[0].pose" and "placeholder" in exc.value.message


# ---------------------------------------------------------------------------------- build


def test_build_layout_captions_flips_and_opt_out(tmp_path: Path) -> None:
    sheet = tmp_path / "Spyke_Final.png"
    make_sheet(sheet, 4)
    spec = filled_spec(sheet, tmp_path / "crops.json", no_flip=frozenset({"fig2-full"}))
    dataset = tmp_path / "spyke"
    result = ds.build_from_sheet(spec, dataset, TRIGGER)

    # 12 originals + 11 flips = 23 images; 300 / 23 -> 13 repeats (299 per epoch).
    assert (result.originals, result.images, result.repeats, result.previous_repeats) == (12, 23, 13, None)
    folder = dataset / "13_spyke_plasma_v1"
    assert result.image_dir == folder and [p.name for p in dataset.iterdir() if p.is_dir()] == [folder.name]
    assert len(list(folder.glob("*.png"))) == 23 and len(list(folder.glob("*.txt"))) == 23
    assert all(f.path.parent == folder for f in result.files)

    face = Image.open(folder / "fig1-face.png")
    assert face.size == (512, 512) and face.mode == "RGB"
    assert face.getpixel((0, 0)) == WHITE
    mirrored = Image.open(folder / "fig1-face-mirrored.png")
    assert mirrored.tobytes() == ImageOps.mirror(face).tobytes()
    assert (folder / "fig1-face.txt").read_text() == (
        "spyke_plasma_v1, close-up, standing, front view, fig1, white background\n"
    )
    assert (folder / "fig1-face-mirrored.txt").read_text() == (
        "spyke_plasma_v1, mirrored, close-up, standing, front view, fig1, white background\n"
    )
    # The opt-out: no flipped copy, and the result says why.
    assert not (folder / "fig2-full-mirrored.png").exists()
    assert any(f.action == "skipped" and f.note == "flip: false" for f in result.files)
    # Faces and busts of a 280 px figure are upscaled past 2x: each says so; full bodies are not.
    assert any(w.startswith("fig1-face: upscaled") for w in result.warnings)
    assert not any(w.startswith("fig1-full") for w in result.warnings)
    assert ds.check_dataset(dataset, TRIGGER).problems[0].kind == ds.ProblemKind.COUNT  # 12 < 15


def test_rebuild_is_idempotent_and_never_clobbers(tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    make_sheet(sheet, 2)
    spec = filled_spec(sheet, tmp_path / "crops.json")
    dataset = tmp_path / "spyke"
    first = ds.build_from_sheet(spec, dataset, TRIGGER)
    before = snapshot(dataset)

    again = ds.build_from_sheet(spec, dataset, TRIGGER)
    assert again.written == [] and len(again.kept) == len(first.written) == 24
    assert again.repeats == again.previous_repeats == first.repeats
    assert snapshot(dataset) == before

    data = json.loads(spec.read_text())
    data["crops"][0]["pose"] = "sitting"
    data["crops"].append({**data["crops"][1], "name": "new-crop", "box": [0, 0, 60, 60]})
    spec.write_text(json.dumps(data))
    with pytest.raises(PlasmaError) as exc:
        ds.build_from_sheet(spec, dataset, TRIGGER)
    assert exc.value.code == ErrorCode.CONFLICT
    assert exc.value.details == {"conflicts": ["fig1-face.txt", "fig1-face-mirrored.txt"]}
    assert snapshot(dataset) == before  # nothing written, not even the new crop


def test_add_image_renames_the_repeats_folder_without_losing_files(tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    make_sheet(sheet, 4)
    dataset = tmp_path / "spyke"
    spec = filled_spec(sheet, tmp_path / "crops.json", no_flip=frozenset({"fig2-full"}))
    ds.build_from_sheet(spec, dataset, TRIGGER)
    assert image_dir(dataset).name == "13_spyke_plasma_v1"
    files_before = {p.name for p in image_dir(dataset).iterdir()}

    source = tmp_path / "gemini run 02.jpg"
    extra = Image.new("RGB", (400, 600), (250, 250, 250))
    draw_figure(ImageDraw.Draw(extra), 100, 40, 500, (30, 30, 200))
    extra.save(source, quality=95)
    result = ds.add_image(dataset, source, "full body, running, looking back, city street", TRIGGER)
    assert (result.images, result.previous_repeats, result.repeats) == (25, 13, 12)
    assert result.image_dir == dataset / "12_spyke_plasma_v1"
    assert not (dataset / "13_spyke_plasma_v1").exists()
    names = {p.name for p in result.image_dir.iterdir()}
    assert files_before <= names
    assert names - files_before == {"gemini-run-02.png", "gemini-run-02.txt", "gemini-run-02-mirrored.png",
                                    "gemini-run-02-mirrored.txt"}
    assert (result.image_dir / "gemini-run-02.txt").read_text() == (
        "spyke_plasma_v1, full body, running, looking back, city street\n"
    )
    added = Image.open(result.image_dir / "gemini-run-02.png")
    assert added.size == (512, 512) and added.getpixel((5, 256)) == (250, 250, 250)  # its own background

    # The same image again: kept; under another name: refused as a duplicate.
    again = ds.add_image(dataset, source, "full body, running, looking back, city street", TRIGGER)
    assert again.written == [] and again.repeats == 12
    with pytest.raises(PlasmaError, match="same pixels"):
        ds.add_image(dataset, source, "full body, running, city street", TRIGGER, name="copy")
    # An explicit repeat count wins, and is a rename too.
    caption = "full body, running, looking back, city street"
    pinned = ds.add_image(dataset, source, caption, TRIGGER, repeats=5)
    assert pinned.image_dir.name == "5_spyke_plasma_v1" and len(list(pinned.image_dir.glob("*.png"))) == 25
    assert not list(dataset.rglob("*.tmp"))

    # Files removed by hand: update_repeats re-derives the count from what is left.
    for stale in pinned.image_dir.glob("gemini-run-02*"):
        stale.unlink()
    relaid = ds.update_repeats(dataset, TRIGGER)
    assert (relaid.previous_repeats, relaid.repeats, relaid.images) == (5, 13, 23)
    assert {p.name for p in relaid.image_dir.iterdir()} == files_before


def test_add_image_skips_the_flip_of_a_symmetric_picture_and_opt_out(tmp_path: Path) -> None:
    source = tmp_path / "round.png"
    img = Image.new("RGB", (512, 512), WHITE)
    ImageDraw.Draw(img).rectangle((106, 106, 405, 300), fill=(200, 30, 30))  # mirror: x -> 511 - x
    img.save(source)
    result = ds.add_image(tmp_path / "spyke", source, "close-up, standing, white background", TRIGGER)
    assert [(f.path.name, f.action) for f in result.files if f.action == "skipped"] == [
        ("round-mirrored.png", "skipped")
    ]
    assert result.images == 1 and result.repeats == 300
    other = tmp_path / "other.png"
    Image.new("RGB", (100, 512), (0, 0, 0)).save(other)
    caption = "close-up, standing, black background"
    result = ds.add_image(tmp_path / "spyke", other, caption, TRIGGER, flip=False)
    assert result.images == 2 and result.image_dir.name == "150_spyke_plasma_v1"


def test_one_trigger_per_dataset(tmp_path: Path) -> None:
    (tmp_path / "spyke" / "10_june_v1").mkdir(parents=True)
    source = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(source)
    with pytest.raises(PlasmaError) as exc:
        ds.add_image(tmp_path / "spyke", source, "close-up, standing, white background", TRIGGER)
    assert exc.value.code == ErrorCode.CONFLICT


@pytest.mark.parametrize("count", [1, 2, 7, 15, 23, 30, 40, 99, 150, 201, 333, 400])
def test_repeats_land_in_200_to_400(count: int) -> None:
    repeats = ds.derive_repeats(count)
    assert repeats >= 1 and 200 <= count * repeats <= 400


# ---------------------------------------------------------------------------------- the check


@pytest.fixture(scope="module")
def good_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """15 originals (5 figures x face, bust, full body) and their 15 flips: a set that passes."""
    root = tmp_path_factory.mktemp("good")
    sheet = root / "sheet.png"
    make_sheet(sheet, 5)
    dataset = root / "spyke"
    result = ds.build_from_sheet(filled_spec(sheet, root / "crops.json"), dataset, TRIGGER)
    assert (result.originals, result.images, result.repeats) == (15, 30, 10)
    return dataset


@pytest.fixture
def dataset(good_dataset: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "spyke"
    shutil.copytree(good_dataset, copy)
    return copy


def kinds(report: ds.CheckReport) -> set[ds.ProblemKind]:
    return {p.kind for p in report.problems}


def test_check_passes_a_good_set(dataset: Path) -> None:
    report = ds.check_dataset(dataset, TRIGGER)
    assert report.ok, report.format_table()
    assert (report.originals, report.mirrored, report.repeats) == (DATASET_MIN_IMAGES, 15, 10)
    assert report.warnings == [] and not report.reg_required
    table = report.format_table()
    assert "PASS" in table and "10_spyke_plasma_v1" in table and "30 x 10 = 300" in table
    assert ds.require_dataset(dataset, TRIGGER).ok


def test_check_counts_only_originals(dataset: Path) -> None:
    folder = image_dir(dataset)
    for name in ("fig5-full", "fig5-full-mirrored"):
        (folder / f"{name}.png").unlink()
        (folder / f"{name}.txt").unlink()
    report = ds.check_dataset(dataset, TRIGGER)
    assert kinds(report) == {ds.ProblemKind.COUNT}
    assert "14 original images, need at least 15" in report.problems[0].reason
    with pytest.raises(PlasmaError) as exc:
        ds.require_dataset(dataset, TRIGGER, field_name="datasetDir")
    assert exc.value.field == "datasetDir" and exc.value.details["problems"][0]["kind"] == "count"


@pytest.mark.parametrize(
    ("caption", "reason"),
    [
        ("spyke_plasma_v1, close-up, white background", "needs 3"),
        ("close-up, spyke_plasma_v1, standing, white background", "not first"),
        ("close-up, standing, white background", "does not start with the trigger word"),
        ("spyke_plasma_v1, mirrored, close-up, standing, white background", "original's caption may not say"),
        ("", "empty"),
    ],
)
def test_check_reports_a_bad_caption(dataset: Path, caption: str, reason: str) -> None:
    (image_dir(dataset) / "fig3-bust.txt").write_text(caption)
    report = ds.check_dataset(dataset, TRIGGER)
    assert kinds(report) == {ds.ProblemKind.CAPTION}
    assert len(report.problems) == 1 and reason in report.problems[0].reason
    assert report.problems[0].path == f"spyke/{image_dir(dataset).name}/fig3-bust.txt"


def test_check_reports_a_mirrored_copy_without_its_tag(dataset: Path) -> None:
    (image_dir(dataset) / "fig3-bust-mirrored.txt").write_text(
        "spyke_plasma_v1, upper body, standing, white background\n"
    )
    report = ds.check_dataset(dataset, TRIGGER)
    assert kinds(report) == {ds.ProblemKind.CAPTION} and "needs 'mirrored'" in report.problems[0].reason


def test_check_reports_each_kind_of_broken_file(dataset: Path) -> None:
    folder = image_dir(dataset)
    caption = "spyke_plasma_v1, close-up, standing, white background\n"
    shutil.copy(folder / "fig1-face.png", folder / "zz-dup.png")  # a duplicate
    (folder / "zz-dup.txt").write_text(caption)
    Image.new("RGB", (256, 256), (9, 9, 9)).save(folder / "zz-small.png")  # 256 px
    (folder / "zz-small.txt").write_text(caption)
    (folder / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # unreadable
    (folder / "zz-broken.txt").write_text(caption)
    (folder / "fig2-face.txt").unlink()  # missing caption
    report = ds.check_dataset(dataset, TRIGGER)
    by_kind = {p.kind: p for p in report.problems}
    assert set(by_kind) == {ds.ProblemKind.DUPLICATE, ds.ProblemKind.SIZE, ds.ProblemKind.UNREADABLE,
                            ds.ProblemKind.CAPTION}
    assert by_kind[ds.ProblemKind.DUPLICATE].reason == "same pixels as fig1-face.png"
    assert by_kind[ds.ProblemKind.SIZE].reason.startswith("256x256 px")
    assert by_kind[ds.ProblemKind.SIZE].path.endswith("zz-small.png")
    assert by_kind[ds.ProblemKind.UNREADABLE].path.endswith("zz-broken.png")
    assert by_kind[ds.ProblemKind.CAPTION].reason == "no caption"
    table = report.format_table()
    assert "FAIL: 4 problem(s)" in table and "zz-broken.png: unreadable" in table


def test_check_without_any_image_folder(tmp_path: Path) -> None:
    report = ds.check_dataset(tmp_path / "nothing", TRIGGER)
    assert kinds(report) == {ds.ProblemKind.LAYOUT, ds.ProblemKind.COUNT}
    (tmp_path / "empty").mkdir()
    report = ds.check_dataset(tmp_path / "empty", TRIGGER)
    assert kinds(report) == {ds.ProblemKind.LAYOUT, ds.ProblemKind.COUNT}


# ---------------------------------------------------------------------------------- regularisation


def reg_png(seed: int) -> bytes:
    img = Image.new("RGB", (64, 64), (seed % 256, 80, 120))
    ImageDraw.Draw(img).ellipse((16, 8, 48, 56), fill=(250, 220, 200))
    from io import BytesIO

    buf = BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_reg_items_are_resumable_with_distinct_seeds(tmp_path: Path) -> None:
    dataset = tmp_path / "spyke"
    folder = ds.reg_dir(dataset)
    assert folder == tmp_path.absolute() / "spyke-reg" / "1_character"
    assert ds.reg_root(dataset) == folder.parent

    todo = ds.missing_reg_items(folder, 6, base_seed=7)
    assert [i.index for i in todo] == list(range(6)) and len({i.seed for i in todo}) == 6
    assert todo == ds.missing_reg_items(folder, 6, base_seed=7)  # deterministic
    assert all(TRIGGER not in i.prompt and i.caption == i.prompt for i in todo)
    assert {i.prompt.split(", ")[2] for i in todo} == {"full body", "upper body", "close-up"}
    assert todo[0].image_path.name == "reg-0000.png" and todo[0].caption_path.name == "reg-0000.txt"

    for item in todo[:4]:
        assert ds.save_reg_image(item, reg_png(item.seed)) == "written"
    assert ds.save_reg_image(todo[0], reg_png(todo[0].seed)) == "kept"  # never regenerated
    rest = ds.missing_reg_items(folder, 6, base_seed=7)
    assert [(i.index, i.seed) for i in rest] == [(4, todo[4].seed), (5, todo[5].seed)]
    assert ds.missing_reg_items(folder, 3, base_seed=7) == []  # a smaller count removes nothing
    assert len(list(folder.glob("*.png"))) == 4

    with pytest.raises(PlasmaError, match="all black"):
        black = Image.new("RGB", (64, 64))
        from io import BytesIO

        buf = BytesIO()
        black.save(buf, "PNG")
        ds.save_reg_image(rest[0], buf.getvalue())
    assert not rest[0].image_path.exists()
    with pytest.raises(PlasmaError):
        ds.missing_reg_items(folder, 0)
    with pytest.raises(PlasmaError):
        ds.missing_reg_items(folder, 201)


def test_check_requires_the_reg_set_when_configured(dataset: Path) -> None:
    report = ds.check_dataset(dataset, TRIGGER, reg_required=True)
    assert kinds(report) == {ds.ProblemKind.REG} and "no regularisation set" in report.problems[0].reason

    folder = ds.reg_dir(dataset)
    folder.mkdir(parents=True)
    report = ds.check_dataset(dataset, TRIGGER)  # the folder exists: now it is checked
    assert kinds(report) == {ds.ProblemKind.REG} and "no images" in report.problems[-1].reason

    for item in ds.missing_reg_items(folder, 3):
        ds.save_reg_image(item, reg_png(item.seed))
    report = ds.check_dataset(dataset, TRIGGER)
    assert report.ok and report.reg_images == 3
    assert [w.kind for w in report.warnings] == [ds.ProblemKind.REG]  # 3 < 100: a warning, not a failure
    assert "3 images in spyke-reg" in report.format_table()

    (folder / "reg-0001.txt").unlink()
    (folder / "reg-0002.txt").write_text(f"{TRIGGER}, anime character\n")
    reasons = [p.reason for p in ds.check_dataset(dataset, TRIGGER).problems]
    assert reasons == ["no caption", f"a regularisation caption may not carry the trigger word {TRIGGER!r}"]
    assert ds.check_dataset(dataset, TRIGGER, reg_required=False).ok


# ---------------------------------------------------------------------------------- contact sheet


def test_contact_sheet(dataset: Path, tmp_path: Path) -> None:
    out = ds.contact_sheet(dataset)
    assert out == dataset / "contact-sheet.png"
    sheet = Image.open(out)
    # 30 images in 6 columns of 160 px + 8 px gaps, 5 rows with their captions.
    assert sheet.width == 8 + 6 * 168 and sheet.height > 5 * 168
    assert sheet.getpixel((sheet.width - 2, sheet.height - 2)) == WHITE
    assert ds.contact_sheet(dataset, thumb=48) == dataset / "contact-sheet-2.png"  # never overwritten
    explicit = tmp_path / "mine.png"
    assert ds.contact_sheet(dataset, explicit, thumb=64) == explicit
    with pytest.raises(PlasmaError) as exc:
        ds.contact_sheet(dataset, explicit)
    assert exc.value.code == ErrorCode.CONFLICT
    assert ds.check_dataset(dataset, TRIGGER).ok  # kohya, and the check, ignore the top level
