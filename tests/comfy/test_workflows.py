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
                           "options": "num_ddim_steps=2, concept_pool_size=1, retain_pool_size=1, retain_batch=1"},
    "RobustErasureProbe": {"steps": 3, "options": "k=1, sampling_steps=2, trajectories=1, points=2",
                           "generation_steps": 3},
    "KSampler": {"steps": 3},
}


def shipped() -> list[str]:
    return sorted(p.name for p in WORKFLOWS.glob("*.json"))


def test_workflows_are_generated_from_the_current_nodes(comfy):
    info = comfy.get("/object_info")
    for name, (make, title) in workflow_tools.WORKFLOWS.items():
        on_disk = json.loads((WORKFLOWS / name).read_text())
        assert on_disk == json.loads(json.dumps(workflow_tools.build_ui(make(), info, title))), (
            f"workflows/{name} is stale: regenerate with `python tests/comfy/workflow_tools.py --server URL`")


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
