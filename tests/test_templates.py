"""The stored ComfyUI graphs and their slot maps agree with each other and with what we promise.

Pure unit tests: no ComfyUI needed. The graphs are in ComfyUI's API format (what "Save (API)"
writes): {node_id: {"inputs": {...}, "class_type": ..., "_meta": {"title": ...}}}, where an input
whose value is [node_id, output_index] is a link to another node's output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"

Graph = dict[str, dict[str, Any]]
Slots = dict[str, list[list[str]]]

COMMON_SLOTS = {
    "prompt_text",
    "negative_prompt",
    "seed",
    "checkpoint_name",
    "steps",
    "cfg",
    "sampler",
    "scheduler",
    "filename_prefix",
}
LORA_SLOTS = {"lora_name", "lora_strength"}
SIZE_SLOTS = {"width", "height"}
CONTROLNET_SLOTS = {"pose_image", "init_image", "controlnet_name", "controlnet_strength", "denoise"}

# Template name -> the slots it must offer (it may offer more).
EXPECTED_SLOTS: dict[str, set[str]] = {
    "txt2img-lora": COMMON_SLOTS | LORA_SLOTS | SIZE_SLOTS,
    "txt2img-base": COMMON_SLOTS | SIZE_SLOTS,
    # img2img takes its size from the init image, so it has no width/height.
    "img2img-lora-controlnet": COMMON_SLOTS | LORA_SLOTS | CONTROLNET_SLOTS,
    # Its variants (tests/test_controlnet.py checks their wiring): no LoRA; the OpenPose preprocessor.
    "img2img-base-controlnet": COMMON_SLOTS | CONTROLNET_SLOTS,
    "img2img-lora-controlnet-preprocess": COMMON_SLOTS | LORA_SLOTS | CONTROLNET_SLOTS,
    "img2img-base-controlnet-preprocess": COMMON_SLOTS | CONTROLNET_SLOTS,
}
NAMES = sorted(EXPECTED_SLOTS)
# Not generation graphs: the LoRA trainer (training.comfy_trainer), checked in tests/test_training.py.
TRAINING_TEMPLATES = {"train-lora-comfy"}


def load_graph(name: str) -> Graph:
    data = json.loads((TEMPLATES / f"{name}.json").read_text())
    assert isinstance(data, dict)
    return data


def load_slots(name: str) -> Slots:
    data = json.loads((TEMPLATES / f"{name}.slots.json").read_text())
    assert isinstance(data, dict)
    return data


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def links(graph: Graph) -> list[tuple[str, str, list[Any]]]:
    """(node_id, input_name, [source_id, output_index]) for every link in the graph."""
    return [
        (node_id, input_name, value)
        for node_id, node in graph.items()
        for input_name, value in node["inputs"].items()
        if is_link(value)
    ]


def nodes_of(graph: Graph, class_type: str) -> list[str]:
    return [node_id for node_id, node in graph.items() if node["class_type"] == class_type]


def only(graph: Graph, class_type: str) -> dict[str, Any]:
    found = nodes_of(graph, class_type)
    assert len(found) == 1, f"expected one {class_type}, found {found}"
    return graph[found[0]]


def source(graph: Graph, node: dict[str, Any], input_name: str) -> dict[str, Any]:
    """The node that feeds node's input."""
    value = node["inputs"][input_name]
    assert is_link(value), f"{input_name} is not a link: {value!r}"
    return graph[value[0]]


def test_every_template_has_a_slot_map() -> None:
    graphs = {p.name.removesuffix(".json") for p in TEMPLATES.glob("*.json")}
    graphs = {g for g in graphs if not g.endswith(".slots")}
    assert graphs == set(NAMES) | TRAINING_TEMPLATES
    for name in NAMES:
        assert (TEMPLATES / f"{name}.slots.json").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_graph_is_api_format(name: str) -> None:
    graph = load_graph(name)
    assert graph
    for node_id, node in graph.items():
        assert node_id.isdigit(), f"node id {node_id!r} is not a string of digits"
        assert set(node) == {"inputs", "class_type", "_meta"}, node_id
        assert isinstance(node["inputs"], dict)
        assert isinstance(node["class_type"], str) and node["class_type"]
        assert isinstance(node["_meta"].get("title"), str) and node["_meta"]["title"]


@pytest.mark.parametrize("name", NAMES)
def test_links_point_at_existing_nodes(name: str) -> None:
    graph = load_graph(name)
    for node_id, input_name, (target, index) in links(graph):
        assert target in graph, f"{node_id}.{input_name} links to missing node {target}"
        assert target != node_id, f"{node_id}.{input_name} links to itself"
        assert isinstance(index, int) and index >= 0, f"{node_id}.{input_name}: bad index {index}"


@pytest.mark.parametrize("name", NAMES)
def test_graph_is_acyclic(name: str) -> None:
    graph = load_graph(name)
    deps: dict[str, set[str]] = {node_id: set() for node_id in graph}
    for node_id, _, (target, _) in links(graph):
        deps[node_id].add(target)
    done: set[str] = set()
    while len(done) < len(graph):
        ready = {n for n, d in deps.items() if n not in done and d <= done}
        assert ready, f"cycle among {sorted(set(graph) - done)}"
        done |= ready


@pytest.mark.parametrize("name", NAMES)
def test_slots_target_existing_widget_inputs(name: str) -> None:
    graph, slots = load_graph(name), load_slots(name)
    missing = EXPECTED_SLOTS[name] - set(slots)
    assert not missing, f"{name} lacks slots {sorted(missing)}"
    for slot, targets in slots.items():
        assert isinstance(targets, list) and targets, slot
        for target in targets:
            assert isinstance(target, list) and len(target) == 2, f"{slot}: {target!r}"
            node_id, input_name = target
            assert node_id in graph, f"{slot} targets missing node {node_id}"
            inputs = graph[node_id]["inputs"]
            assert input_name in inputs, f"{slot} targets missing input {node_id}.{input_name}"
            # A slot replaces a value; replacing a link would cut the graph.
            assert not is_link(inputs[input_name]), f"{slot} targets a link {node_id}.{input_name}"


@pytest.mark.parametrize("name", [n for n in NAMES if "lora" in n])
def test_lora_strength_sets_model_and_clip(name: str) -> None:
    graph, slots = load_graph(name), load_slots(name)
    targets = {(graph[n]["class_type"], i) for n, i in slots["lora_strength"]}
    assert targets == {("LoraLoader", "strength_model"), ("LoraLoader", "strength_clip")}
    lora = only(graph, "LoraLoader")
    assert lora["inputs"]["lora_name"] == "spyke_plasma_demo.safetensors"
    # Both prompts are encoded with the LoRA'd CLIP, so the LoRA reaches the text encoder too.
    for encoder in nodes_of(graph, "CLIPTextEncode"):
        assert source(graph, graph[encoder], "clip") is lora


@pytest.mark.parametrize("name", NAMES)
def test_exactly_one_save_image(name: str) -> None:
    graph = load_graph(name)
    assert len(nodes_of(graph, "SaveImage")) == 1
    save = only(graph, "SaveImage")
    decode = source(graph, save, "images")
    assert decode["class_type"] == "VAEDecode"
    # The checkpoint's own VAE decodes (its precision is ComfyUI's --fp32-vae launch flag).
    assert source(graph, decode, "vae")["class_type"] == "CheckpointLoaderSimple"


@pytest.mark.parametrize("name", NAMES)
def test_unet_precision_is_explicit_fp16(name: str) -> None:
    graph = load_graph(name)
    dtype_node = only(graph, "ModelComputeDtype")
    assert dtype_node["inputs"]["dtype"] == "fp16"
    sampler = only(graph, "KSampler")
    assert source(graph, sampler, "model") is dtype_node


@pytest.mark.parametrize("name", NAMES)
def test_sampler_defaults(name: str) -> None:
    graph = load_graph(name)
    sampler = only(graph, "KSampler")["inputs"]
    assert sampler["steps"] == 20
    assert sampler["cfg"] == 7
    assert sampler["sampler_name"] == "euler_ancestral"
    assert sampler["scheduler"] == "normal"
    assert only(graph, "CheckpointLoaderSimple")["inputs"]["ckpt_name"] == ("plasma-demo-sd15.safetensors")


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("txt2img")])
def test_txt2img_batch_of_one_at_512x768(name: str) -> None:
    graph = load_graph(name)
    sampler = only(graph, "KSampler")
    latent = source(graph, sampler, "latent_image")
    assert latent["class_type"] == "EmptyLatentImage"
    assert latent["inputs"]["batch_size"] == 1
    assert (latent["inputs"]["width"], latent["inputs"]["height"]) == (512, 768)
    assert sampler["inputs"]["denoise"] == 1


def test_img2img_controlnet_wiring() -> None:
    graph = load_graph("img2img-lora-controlnet")
    slots = load_slots("img2img-lora-controlnet")
    sampler = only(graph, "KSampler")
    assert not nodes_of(graph, "EmptyLatentImage")

    # The init image (one image, so a batch of one) is encoded by the checkpoint's VAE.
    encode = source(graph, sampler, "latent_image")
    assert encode["class_type"] == "VAEEncode"
    # Both images are scaled and centre-cropped to the page's size first (the width/height slots).
    scaled = source(graph, encode, "pixels")
    assert scaled["class_type"] == "ImageScale" and scaled["inputs"]["crop"] == "center"
    init = source(graph, scaled, "image")
    assert init["class_type"] == "LoadImage"
    assert init["inputs"]["image"] == "plasma-demo-init.png"
    assert source(graph, encode, "vae")["class_type"] == "CheckpointLoaderSimple"

    # ControlNet conditions both prompts, from the start to the end of sampling.
    apply = only(graph, "ControlNetApplyAdvanced")
    assert sampler["inputs"]["positive"] == [nodes_of(graph, "ControlNetApplyAdvanced")[0], 0]
    assert sampler["inputs"]["negative"] == [nodes_of(graph, "ControlNetApplyAdvanced")[0], 1]
    assert apply["inputs"]["start_percent"] == 0
    assert apply["inputs"]["end_percent"] == 1
    loader = source(graph, apply, "control_net")
    assert loader["class_type"] == "ControlNetLoader"
    assert loader["inputs"]["control_net_name"] == "plasma-demo-openpose.safetensors"
    scaled_pose = source(graph, apply, "image")
    assert scaled_pose["class_type"] == "ImageScale" and scaled_pose["inputs"]["crop"] == "center"
    pose = source(graph, scaled_pose, "image")
    assert pose["class_type"] == "LoadImage"
    assert pose["inputs"]["image"] == "plasma-demo-pose.png"
    assert {
        source(graph, apply, "positive")["_meta"]["title"],
        source(graph, apply, "negative")["_meta"]["title"],
    } == {
        "Positive Prompt",
        "Negative Prompt",
    }

    def target(slot: str) -> dict[str, Any]:
        ((node_id, _input),) = slots[slot]
        return graph[node_id]

    assert target("pose_image") is pose
    assert target("init_image") is init
    assert target("controlnet_strength") is apply
    assert target("denoise") is sampler
    assert 0 < sampler["inputs"]["denoise"] < 1
