"""The shipped UI-format workflows: in sync with the nodes, served as templates, and runnable via POST /prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import workflow_tools
from comfy_server import assert_success

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
# CI runs on 2 shared CPU cores: the demo workflow's training and sampling are shrunk (same graph, same nodes).
FAST = {
    "RobustErasureErase": {"iterations": 3, "attack_steps": 1, "warmup_iterations": 1,
                           "options": "num_ddim_steps=2, concept_pool_size=1, retain_pool_size=1, retain_batch=1, "
                                      "contrast_words=square,triangle,star"},
    "RobustErasureProbe": {"steps": 3, "options": "k=1, sampling_steps=2, trajectories=1, points=2",
                           "generation_steps": 3},
    "KSampler": {"steps": 3},
}


def shipped() -> list[str]:
    return sorted(p.name for p in WORKFLOWS.glob("*.json"))


def test_workflows_are_generated_from_the_current_nodes(comfy):
    """The shipped files (generated on ComfyUI 0.3.75) mean what the generator makes on this server: same nodes,
    widgets, links and our nodes' sockets (workflow_tools.graph_essence). Unused sockets a stock node gained
    upstream do not count: the frontend adds them when it loads the file."""
    info = comfy.get("/object_info")
    for name, (make, title) in workflow_tools.WORKFLOWS.items():
        on_disk = json.loads((WORKFLOWS / name).read_text())
        generated = json.loads(json.dumps(workflow_tools.build_ui(make(), info, title)))
        assert workflow_tools.graph_essence(on_disk) == workflow_tools.graph_essence(generated), (
            f"workflows/{name} is stale: regenerate with `python tests/comfy/workflow_tools.py --server URL`")


def test_graph_essence_ignores_only_unused_stock_sockets(comfy):
    """The staleness check can fail: a changed widget, a changed link or a changed socket of ours is seen; an
    unlinked socket added to a stock node is not."""
    info = comfy.get("/object_info")
    make, title = workflow_tools.WORKFLOWS["demo_erase_and_probe.json"]
    base = workflow_tools.build_ui(make(), info, title)
    essence = workflow_tools.graph_essence(base)

    def changed(edit) -> bool:
        copy = json.loads(json.dumps(base))
        edit({n["type"] + str(n["id"]): n for n in copy["nodes"]}, copy)
        return workflow_tools.graph_essence(copy) != essence

    assert not changed(lambda n, w: n["PreviewImage25"]["outputs"].append(
        {"name": "IMAGE", "type": "IMAGE", "links": [], "slot_index": 0}))
    assert changed(lambda n, w: n["PreviewImage25"]["outputs"].append(
        {"name": "IMAGE", "type": "IMAGE", "links": [99], "slot_index": 0}))
    assert changed(lambda n, w: n["RobustErasureErase10"]["outputs"].pop())
    assert changed(lambda n, w: n["RobustErasureErase10"]["widgets_values"].__setitem__(0, "square"))
    assert changed(lambda n, w: w["links"][0].__setitem__(2, w["links"][0][2] + 1))


def test_workflows_are_served_as_templates(comfy):
    templates = comfy.get("/api/workflow_templates")
    assert sorted(templates.get("robust-erasure", [])) == sorted(Path(n).stem for n in shipped())
    body = comfy.get("/api/workflow_templates/robust-erasure/demo_erase_and_probe.json")
    assert body["nodes"]


@pytest.mark.parametrize("name", ["demo_erase_and_probe.json"])
def test_workflow_runs_through_the_api(comfy, name):
    info = comfy.get("/object_info")
    prompt = workflow_tools.ui_to_api(json.loads((WORKFLOWS / name).read_text()), info)
    for node in prompt.values():
        node["inputs"].update(FAST.get(node["class_type"], {}))
    entry = comfy.run(prompt, timeout=900)
    assert_success(entry)
    outputs = entry["outputs"]
    compare = [v for k, v in outputs.items() if prompt[k]["class_type"] == "RobustErasureCompare"]
    assert compare and len(compare[0]["robust_erasure_compare"]) == 4
    judged = [v for k, v in outputs.items() if prompt[k]["class_type"] == "RobustErasureJudge"]
    assert len(judged) == 2 and all("concept shown in" in v["text"][0] for v in judged)
    assert (comfy.text_encoders / "demo_no_circle.safetensors").is_file()
