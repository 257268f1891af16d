"""The TypeScript client (clients/typescript/): its spec and types are those plasmad serves, it
builds with `tsc --strict`, and a Node program drives a real plasmad on the real ComfyUI to a page
on disk with its log entry: `stage:generate --comfyui -c 1 --page 1`, from TypeScript.

The Node parts need `npm ci` in clients/typescript (`make ts-client`, which `make test` runs):
outside CI they are skipped when it has not been run; under CI that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ComfyServer, DaemonProcess

REPO = Path(__file__).resolve().parent.parent
CLIENT = REPO / "clients" / "typescript"
sys.path.insert(0, str(REPO / "scripts"))
from openapi import document_text  # noqa: E402  (scripts/openapi.py: what writes the committed copy)


def need_node() -> str:
    node = shutil.which("node")
    if node is None or not (CLIENT / "node_modules" / ".bin" / "tsc").exists():
        message = "node and clients/typescript/node_modules are needed (make ts-client)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return node


def run(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=CLIENT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_the_committed_spec_is_what_plasmad_serves() -> None:
    committed = (CLIENT / "openapi.json").read_text()
    assert committed == document_text(), (
        "clients/typescript/openapi.json is out of date: run `make ts-types` and commit the result"
    )


def test_the_generated_types_are_up_to_date(tmp_path: Path) -> None:
    node = need_node()
    out = tmp_path / "schema.ts"
    generator = CLIENT / "node_modules" / "openapi-typescript" / "bin" / "cli.js"
    proc = run(node, str(generator), "openapi.json", "--default-non-nullable", "false", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == (CLIENT / "src" / "schema.ts").read_text(), (
        "clients/typescript/src/schema.ts is out of date: run `make ts-types` and commit the result"
    )


@pytest.fixture(scope="module")
def built_client() -> Path:
    need_node()
    proc = run("npm", "run", "--silent", "build")  # tsc --project tsconfig.json: strict
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return CLIENT / "dist"


def test_the_client_builds_with_tsc_strict(built_client: Path) -> None:
    assert json.loads((CLIENT / "tsconfig.json").read_text())["compilerOptions"]["strict"] is True
    assert (built_client / "index.js").is_file() and (built_client / "index.d.ts").is_file()


@pytest.mark.comfyui
def test_generate_page_from_typescript(
    built_client: Path, comfyui: ComfyServer, start_daemon: Any, tmp_path: Path
) -> None:
    daemon: DaemonProcess = start_daemon(COMFYUI_URL=comfyui.url, COMFYUI_DIR=str(comfyui.dir))
    pipeline = daemon.denv.pipeline_dir
    prompt = pipeline / "prompts" / "ch-01" / "p001.txt"
    prompt.parent.mkdir(parents=True)
    prompt.write_text("spyke_plasma_v1, full body, standing on a rooftop\nnegative: blurry\n")
    proc = run(
        "node", str(built_client / "e2e.js"),
        env={"PLASMA_URL": daemon.url, "PLASMA_PIPELINE_DIR": str(pipeline)},
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"] and result["versions"] == [1, 2] and result["refusal"] == "invalid_input"
    raw = pipeline / "output" / "ch-01" / "raw"
    assert [Path(p) for p in result["images"]] == [raw / "ch01_p001_v1.png", raw / "ch01_p001_v2.png"]
    log = json.loads((pipeline / "output" / "ch-01" / "generation-log.json").read_text())
    assert [e["imageFile"] for e in log] == ["ch01_p001_v1.png", "ch01_p001_v2.png"]
