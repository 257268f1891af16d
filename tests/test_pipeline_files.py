"""plasmad.generation.pipeline_files: where a page lands, its version, and the generation log (PIPE-03/04/05).

The rules under test: nothing is ever overwritten, a job writes its page once however often it is
retried, other tools' log entries survive, a broken log stops the write before any image exists,
and concurrent writers never lose an entry.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.generation import pipeline_files as pf

WORKFLOW: dict[str, Any] = {"7": {"class_type": "KSampler", "inputs": {"seed": 1}}}


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    root = tmp_path / "pipeline"
    root.mkdir()
    return root


def raw(pipeline: Path, chapter: int = 1) -> Path:
    return pf.raw_dir(pipeline, chapter)


def log_path(pipeline: Path, chapter: int = 1) -> Path:
    return pf.chapter_dir(pipeline, chapter) / pf.LOG_NAME


def read_log(pipeline: Path, chapter: int = 1) -> list[Any]:
    return list(json.loads(log_path(pipeline, chapter).read_text()))


def touch(folder: Path, *names: str, data: bytes = b"someone else's file") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(data)


def save(pipeline: Path, job_id: str, png: bytes = b"png-1", page: int = 1,
         reserved: str | None = None, **entry: Any) -> pf.SavedPage:
    """save_page as the generation handler calls it: the reserved name first, then the write."""
    name = reserved or pf.next_free_stem(pipeline, 1, page)
    return pf.save_page(pipeline, 1, page, name, png, WORKFLOW, {"seed": 1, **entry}, job_id)


def files(pipeline: Path) -> list[str]:
    return sorted(p.name for p in raw(pipeline).iterdir())


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# --- version numbering ------------------------------------------------------------------------------


def test_first_version_is_v1_and_names_are_padded(pipeline: Path) -> None:
    assert pf.next_free_stem(pipeline, 1, 1) == "ch01_p001_v1"
    assert pf.next_free_stem(pipeline, 12, 34) == "ch12_p034_v1"
    assert pf.next_free_stem(pipeline, 123, 5) == "ch123_p005_v1"


def test_next_version_is_past_the_highest_even_with_gaps(pipeline: Path) -> None:
    touch(raw(pipeline), "ch01_p001_v1.png", "ch01_p001_v3.png")
    assert pf.next_free_stem(pipeline, 1, 1) == "ch01_p001_v4"  # v2 was deleted: never reused


def test_stray_workflow_files_take_their_version(pipeline: Path) -> None:
    # The artist deleted a rejected image but its workflow stayed: that version stays taken.
    touch(raw(pipeline), "ch01_p001_v1.png", "ch01_p001_v5.workflow.json")
    assert pf.next_free_stem(pipeline, 1, 1) == "ch01_p001_v6"


def test_other_pages_and_foreign_files_do_not_count(pipeline: Path) -> None:
    touch(raw(pipeline), "ch01_p002_v9.png", "ch01_p001_vX.png", "ch01_p001_v2-edit.png", "notes.txt",
          "ch01_p0011_v7.png", "ch02_p001_v4.png")
    assert pf.next_free_stem(pipeline, 1, 1) == "ch01_p001_v1"


# --- save_page ----------------------------------------------------------------------------------------


def test_save_writes_image_workflow_and_log_entry(pipeline: Path) -> None:
    saved = save(pipeline, "j_1", b"png-1", model="sd15.safetensors")
    folder = raw(pipeline)
    assert saved.image == folder / "ch01_p001_v1.png" and saved.image.read_bytes() == b"png-1"
    assert saved.workflow == folder / "ch01_p001_v1.workflow.json"
    assert json.loads(saved.workflow.read_text()) == WORKFLOW
    [entry] = read_log(pipeline)
    assert entry == saved.entry
    assert entry == {"seed": 1, "model": "sd15.safetensors", "imageFile": "ch01_p001_v1.png",
                     "workflowFile": "ch01_p001_v1.workflow.json", "version": 1, "jobId": "j_1"}
    assert save(pipeline, "j_2", b"png-2").image.name == "ch01_p001_v2.png"
    assert [e["version"] for e in read_log(pipeline)] == [1, 2]
    assert temp_files(pipeline) == []


def test_never_overwrites_an_existing_version(pipeline: Path) -> None:
    touch(raw(pipeline), "ch01_p001_v1.png", data=b"the artist's favourite")
    # Even told to use v1 (a stale reservation), the job moves on to the next free name.
    saved = save(pipeline, "j_1", b"png-new", reserved="ch01_p001_v1")
    assert saved.image.name == "ch01_p001_v2.png"
    assert (raw(pipeline) / "ch01_p001_v1.png").read_bytes() == b"the artist's favourite"
    assert read_log(pipeline)[0]["version"] == 2


def test_same_job_id_is_written_once(pipeline: Path) -> None:
    first = save(pipeline, "j_1", b"png-1")
    again = save(pipeline, "j_1", b"png-1")
    assert again == first
    # A retry that produced other bytes (a rerun after a crash) still does not add a version.
    other = save(pipeline, "j_1", b"png-other")
    assert other.image == first.image and other.entry == first.entry
    assert files(pipeline) == ["ch01_p001_v1.png", "ch01_p001_v1.workflow.json"]
    assert len(read_log(pipeline)) == 1


def test_retry_reuses_its_reserved_name_when_the_image_is_its_own(pipeline: Path) -> None:
    # The first attempt wrote the image (and the workflow) and died before the log entry.
    touch(raw(pipeline), "ch01_p001_v1.png", data=b"png-1")
    touch(raw(pipeline), "ch01_p001_v1.workflow.json", data=pf._dump(WORKFLOW))
    saved = save(pipeline, "j_1", b"png-1", reserved="ch01_p001_v1")
    assert saved.image.name == "ch01_p001_v1.png"
    assert files(pipeline) == ["ch01_p001_v1.png", "ch01_p001_v1.workflow.json"]
    assert [e["jobId"] for e in read_log(pipeline)] == ["j_1"]


def test_foreign_log_entries_are_kept_intact(pipeline: Path) -> None:
    foreign: list[Any] = [
        {"tool": "letterer", "page": 1, "balloons": [{"x": 1, "text": "ハロー"}], "approved": True},
        {"imageFile": "ch01_p001_v0.png", "approvedBy": "editor", "extra": {"nested": [1, 2, None]}},
        "a bare string someone added",
        42,
    ]
    log_path(pipeline).parent.mkdir(parents=True)
    log_path(pipeline).write_text(json.dumps(foreign, ensure_ascii=False))
    save(pipeline, "j_1")
    entries = read_log(pipeline)
    assert entries[:4] == foreign and entries[4]["jobId"] == "j_1"
    assert "ハロー" in log_path(pipeline).read_text(encoding="utf-8")  # written as UTF-8, not escaped


@pytest.mark.parametrize("content", [b'{"entries": []}', b'"text"', b"[1, 2", b"not json", b"[\xff]"])
def test_broken_log_refuses_before_writing_an_image(pipeline: Path, content: bytes) -> None:
    log_path(pipeline).parent.mkdir(parents=True)
    log_path(pipeline).write_bytes(content)
    with pytest.raises(PlasmaError) as err:
        save(pipeline, "j_1")
    assert err.value.code == ErrorCode.CONFLICT and "nothing was written" in err.value.message
    assert not raw(pipeline).exists() or list(raw(pipeline).iterdir()) == []
    assert log_path(pipeline).read_bytes() == content  # left for the artist to fix
    assert temp_files(pipeline) == []


def test_empty_log_file_counts_as_empty(pipeline: Path) -> None:
    log_path(pipeline).parent.mkdir(parents=True)
    log_path(pipeline).write_text("")
    save(pipeline, "j_1")
    assert len(read_log(pipeline)) == 1


def test_concurrent_saves_of_one_page_lose_nothing(pipeline: Path) -> None:
    writers = 8
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            reserved = pf.next_free_stem(pipeline, 1, 1)  # all of them see v1 free
            start.wait()
            pf.save_page(pipeline, 1, 1, reserved, f"png-{i}".encode(), {"job": i}, {"seed": i}, f"j_{i}")
        except BaseException as exc:  # surfaced below: an exception in a thread is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    entries = read_log(pipeline)
    assert sorted(e["version"] for e in entries) == list(range(1, writers + 1))
    assert sorted(e["jobId"] for e in entries) == sorted(f"j_{i}" for i in range(writers))
    for e in entries:  # every image and workflow holds its own job's bytes
        i = int(e["jobId"].removeprefix("j_"))
        assert (raw(pipeline) / e["imageFile"]).read_bytes() == f"png-{i}".encode()
        assert json.loads((raw(pipeline) / e["workflowFile"]).read_text()) == {"job": i}
    assert temp_files(pipeline) == []


# --- approve -----------------------------------------------------------------------------------------


def test_approve_and_undo(pipeline: Path) -> None:
    save(pipeline, "j_1")
    save(pipeline, "j_2", b"png-2")
    entry = pf.approve(pipeline, "ch01_p001_v2.png")
    assert entry["approved"] is True and entry["jobId"] == "j_2"
    assert [e.get("approved") for e in read_log(pipeline)] == [None, True]
    assert pf.approve(pipeline, "ch01_p001_v2", approved=False)["approved"] is False
    assert [e.get("approved") for e in read_log(pipeline)] == [None, False]
    assert temp_files(pipeline) == []


def test_approve_keeps_foreign_entries(pipeline: Path) -> None:
    save(pipeline, "j_1")
    entries = [{"tool": "letterer"}, *read_log(pipeline)]
    log_path(pipeline).write_text(json.dumps(entries))
    pf.approve(pipeline, "ch01_p001_v1")
    assert read_log(pipeline)[0] == {"tool": "letterer"}


def test_approve_unknown_image_is_404(pipeline: Path) -> None:
    with pytest.raises(PlasmaError) as err:
        pf.approve(pipeline, "ch01_p001_v1")  # no log at all
    assert err.value.code == ErrorCode.NOT_FOUND
    save(pipeline, "j_1")
    with pytest.raises(PlasmaError) as err:
        pf.approve(pipeline, "ch01_p001_v9.png")
    assert err.value.code == ErrorCode.NOT_FOUND


@pytest.mark.parametrize(
    "name",
    ["page1.png", "ch1_p1_v1", "ch01_p001", "ch01_p001_v1.jpg", "../ch01_p001_v1", "ch01_p001_v1/x", ""],
)
def test_approve_bad_name_is_400(pipeline: Path, name: str) -> None:
    with pytest.raises(PlasmaError) as err:
        pf.approve(pipeline, name)
    assert err.value.code == ErrorCode.INVALID_INPUT and err.value.field == "image"


# --- page prompt files ---------------------------------------------------------------------------------


def write_prompt(pipeline: Path, text: str) -> Path:
    path = pf.prompt_file(pipeline, 1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_prompt_file_location(pipeline: Path) -> None:
    assert pf.prompt_file(pipeline, 1, 7) == pipeline / "prompts" / "ch-01" / "p007.txt"


def test_read_page_prompt_with_negative_and_comments(pipeline: Path) -> None:
    path = write_prompt(
        pipeline,
        "# chapter 1, page 1: the rooftop\n"
        "spyke_plasma_v1, standing on a rooftop,\n"
        "   night, rain   \n"
        "\n"
        "Negative: lowres, blurry\n"
        "negative:extra fingers\n"
        "  # an indented comment\n",
    )
    page = pf.read_page_prompt(path)
    assert page.prompt == "spyke_plasma_v1, standing on a rooftop, night, rain"
    assert page.negative_prompt == "lowres, blurry extra fingers"
    assert page.path == path


def test_read_page_prompt_without_negative(pipeline: Path) -> None:
    page = pf.read_page_prompt(write_prompt(pipeline, "just a prompt"))
    assert (page.prompt, page.negative_prompt) == ("just a prompt", "")


@pytest.mark.parametrize("text", ["", "\n\n  \n", "# only a comment\n", "negative: only a negative\n"])
def test_read_page_prompt_without_prompt_text_is_400(pipeline: Path, text: str) -> None:
    with pytest.raises(PlasmaError) as err:
        pf.read_page_prompt(write_prompt(pipeline, text))
    assert err.value.code == ErrorCode.INVALID_INPUT and err.value.field == "promptFile"


def test_unreadable_prompt_file_is_400(pipeline: Path) -> None:
    with pytest.raises(PlasmaError) as err:
        pf.read_page_prompt(pipeline / "prompts" / "missing.txt")
    assert err.value.field == "promptFile"
    path = pf.prompt_file(pipeline, 1, 1)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe not utf-8 \x80")
    with pytest.raises(PlasmaError) as err:  # an editor saving in Latin-1 or Shift-JIS: a 400, not a crash
        pf.read_page_prompt(path)
    assert err.value.field == "promptFile" and "UTF-8" in err.value.message


def test_prompt_hash_depends_on_both_prompts() -> None:
    assert pf.prompt_hash("a", "b") == pf.prompt_hash("a", "b")
    assert pf.prompt_hash("a", "b") != pf.prompt_hash("a", "c") != pf.prompt_hash("a b", "")
