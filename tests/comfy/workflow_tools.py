"""UI-format workflows (what ComfyUI's frontend saves and loads) <-> API-format prompts (what POST /prompt runs).

`ui_to_api` does what the frontend does when you press Run: links become [node_id, slot] inputs, widget values
are matched to the node's widget inputs in /object_info order (the frontend's extra "control after generate"
value after a seed is skipped). `build_ui` writes a UI-format workflow from a compact description, using the
same widget order, so the shipped workflows/*.json are generated rather than hand-typed
(`python tests/comfy/workflow_tools.py --server URL` regenerates them).
"""

from __future__ import annotations

import json
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
MUTED, BYPASSED = 2, 4


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control(name: str, spec) -> bool:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0] == "INT" and bool(options.get("control_after_generate"))


def widget_inputs(object_info: dict, node_type: str) -> list[tuple[str, list]]:
    """(name, spec) of a node type's widget inputs, in the order the frontend creates its widgets."""
    if node_type not in object_info:
        raise KeyError(f"node type {node_type!r} is not installed (not in /object_info)")
    info = object_info[node_type]
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    out = []
    for group in ("required", "optional"):
        specs = info["input"].get(group, {})
        for name in order.get(group, []):
            if name in specs and _is_widget(specs[name]):
                out.append((name, specs[name]))
    return out


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """An API-format prompt from a UI-format workflow (node ids as strings)."""
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"])
        else:
            link_id, origin, slot = link[0], link[1], link[2]
            links[link_id] = (origin, slot)
    prompt = {}
    for node in workflow["nodes"]:
        mode = node.get("mode", 0)
        if mode == MUTED:
            continue
        if mode == BYPASSED:
            raise ValueError(f"node {node['id']} ({node['type']}) is bypassed; the converter does not rewire bypasses")
        if node["type"] in ("Note", "MarkdownNote"):
            continue  # UI-only
        if node["type"] in ("Reroute", "PrimitiveNode"):
            raise ValueError(f"node type {node['type']} is not supported by this converter")
        inputs = {}
        linked = set()
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                origin, slot = links[inp["link"]]
                inputs[inp["name"]] = [str(origin), slot]
                linked.add(inp["name"])
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):
            for name, _spec in widget_inputs(object_info, node["type"]):
                if name not in linked and name in node["widgets_values"]:
                    inputs[name] = node["widgets_values"][name]
        else:
            index = 0
            for name, spec in widget_inputs(object_info, node["type"]):
                if index >= len(values):
                    break
                value = values[index]
                index += 1
                if name not in linked:
                    inputs[name] = value
                if _has_control(name, spec) and index < len(values) and values[index] in CONTROL_VALUES:
                    index += 1
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def build_ui(nodes: list[dict], object_info: dict, title: str = "") -> dict:
    """A UI-format workflow from compact node descriptions.

    Each node: {"id": int, "type": str, "pos": [x, y], "widgets": {name: value}, "inputs": {name: [id, slot]},
    "size": [w, h] (optional), "title": str (optional)}. Widgets missing from "widgets" take /object_info
    defaults; seeds get a "fixed" control value, as the frontend saves them.
    """
    by_id = {n["id"]: n for n in nodes}
    links, link_id = [], 0
    out_links: dict[tuple[int, int], list[int]] = {}
    ui_nodes = []
    for order, node in enumerate(nodes):
        info = object_info[node["type"]]
        ui_inputs = []
        for name, (origin, slot) in node.get("inputs", {}).items():
            if origin not in by_id:
                raise ValueError(f"node {node['id']} links to missing node {origin}")
            link_id += 1
            out_type = object_info[by_id[origin]["type"]]["output"][slot]
            links.append([link_id, origin, slot, node["id"], len(ui_inputs), out_type])
            out_links.setdefault((origin, slot), []).append(link_id)
            ui_inputs.append({"name": name, "type": out_type, "link": link_id})
        values = []
        widgets = dict(node.get("widgets", {}))
        for name, spec in widget_inputs(object_info, node["type"]):
            if name in node.get("inputs", {}):
                continue
            if name in widgets:
                value = widgets.pop(name)
            else:
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if "default" in options:
                    value = options["default"]
                elif isinstance(spec[0], list):
                    value = spec[0][0]
                elif spec[0] == "COMBO":
                    value = options.get("options", [""])[0]
                else:
                    value = {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[spec[0]]
            values.append(value)
            if _has_control(name, spec):
                values.append("fixed")
        if widgets:
            raise ValueError(f"node {node['id']} ({node['type']}) has no widget(s) {sorted(widgets)}")
        ui_node = {
            "id": node["id"],
            "type": node["type"],
            "pos": node.get("pos", [0, 0]),
            "size": node.get("size", [320, 160]),
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": ui_inputs,
            "outputs": [],
            "properties": {"Node name for S&R": node["type"]},
            "widgets_values": values,
        }
        if node.get("title"):
            ui_node["title"] = node["title"]
        ui_nodes.append(ui_node)
    for ui_node in ui_nodes:
        info = object_info[ui_node["type"]]
        names = info.get("output_name") or info["output"]
        ui_node["outputs"] = [
            {"name": names[slot], "type": kind, "links": out_links.get((ui_node["id"], slot), []), "slot_index": slot}
            for slot, kind in enumerate(info["output"])
        ]
    return {
        "last_node_id": max(n["id"] for n in nodes),
        "last_link_id": link_id,
        "nodes": ui_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"robust_erasure": {"title": title}} if title else {},
        "version": 0.4,
    }


# ---------------------------------------------------------------------------------------------------------------
# The shipped workflows
# ---------------------------------------------------------------------------------------------------------------

DEMO_PROMPT = "a red circle"


def demo_erase_and_probe() -> list[dict]:
    """Load Demo Model -> erase "circle" -> before/after -> probe the erased encoder -> judge -> compare."""
    seed = 7
    ksampler = {"seed": seed, "steps": 20, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    return [
        {"id": 1, "type": "RobustErasureLoadDemoModel", "pos": [20, 200], "size": [300, 120]},
        {"id": 2, "type": "CLIPTextEncode", "pos": [360, 40], "title": "prompt (original CLIP)",
         "inputs": {"clip": [1, 1]}, "widgets": {"text": DEMO_PROMPT}},
        {"id": 3, "type": "CLIPTextEncode", "pos": [360, 260], "title": "negative (empty)",
         "inputs": {"clip": [1, 1]}, "widgets": {"text": ""}},
        {"id": 4, "type": "EmptyLatentImage", "pos": [20, 400], "size": [300, 110],
         "widgets": {"width": 128, "height": 128, "batch_size": 4}},
        {"id": 5, "type": "KSampler", "pos": [760, 40], "title": "before", "size": [300, 260],
         "inputs": {"model": [1, 0], "positive": [2, 0], "negative": [3, 0], "latent_image": [4, 0]},
         "widgets": ksampler},
        {"id": 6, "type": "VAEDecode", "pos": [1100, 40], "inputs": {"samples": [5, 0], "vae": [1, 2]}},
        {"id": 10, "type": "RobustErasureErase", "pos": [360, 520], "size": [360, 520],
         "inputs": {"model": [1, 0], "clip": [1, 1]},
         "widgets": {"concepts": "circle", "preset": "object", "method": "advunlearn", "iterations": 30,
                     "seed": 0, "resume": False, "file_name": "demo_no_circle", "attack_steps": 3,
                     "warmup_iterations": 5,
                     "options": "lr=1e-4, retain_weight=1.0, num_ddim_steps=10, concept_pool_size=4, "
                                "retain_pool_size=8, retain_batch=2"}},
        {"id": 11, "type": "CLIPTextEncode", "pos": [760, 520], "title": "prompt (erased CLIP)",
         "inputs": {"clip": [10, 0]}, "widgets": {"text": DEMO_PROMPT}},
        {"id": 12, "type": "CLIPTextEncode", "pos": [760, 740], "title": "negative (erased CLIP)",
         "inputs": {"clip": [10, 0]}, "widgets": {"text": ""}},
        {"id": 13, "type": "KSampler", "pos": [1100, 520], "title": "after", "size": [300, 260],
         "inputs": {"model": [1, 0], "positive": [11, 0], "negative": [12, 0], "latent_image": [4, 0]},
         "widgets": ksampler},
        {"id": 14, "type": "VAEDecode", "pos": [1440, 520], "inputs": {"samples": [13, 0], "vae": [1, 2]}},
        {"id": 15, "type": "RobustErasureCompare", "pos": [1440, 40], "size": [360, 420], "title": "before / after",
         "inputs": {"before": [6, 0], "after": [14, 0]},
         "widgets": {"label_before": "original", "label_after": "circle erased"}},
        {"id": 20, "type": "RobustErasureProbe", "pos": [760, 1000], "size": [360, 420],
         "inputs": {"model": [1, 0], "original_clip": [1, 1], "clip_under_test": [10, 0], "vae": [1, 2]},
         "widgets": {"prompt": DEMO_PROMPT, "probe": "soft_prompt", "steps": 30, "seed": 0, "judge": "demo:circle",
                     "options": "k=3, sampling_steps=10", "generation_steps": 20, "guidance": 5.0}},
        {"id": 21, "type": "KSampler", "pos": [1160, 1000], "title": "under attack", "size": [300, 260],
         "inputs": {"model": [1, 0], "positive": [20, 0], "negative": [12, 0], "latent_image": [4, 0]},
         "widgets": ksampler},
        {"id": 22, "type": "VAEDecode", "pos": [1500, 1000], "inputs": {"samples": [21, 0], "vae": [1, 2]}},
        {"id": 23, "type": "RobustErasureJudge", "pos": [1840, 1000], "size": [320, 380],
         "inputs": {"images": [22, 0]}, "widgets": {"judge": "demo:circle"}},
        {"id": 24, "type": "RobustErasureJudge", "pos": [1840, 520], "size": [320, 380],
         "inputs": {"images": [14, 0]}, "widgets": {"judge": "demo:circle"}},
        {"id": 25, "type": "PreviewImage", "pos": [1160, 1300], "size": [300, 300], "title": "probe loss",
         "inputs": {"images": [20, 2]}},
        {"id": 26, "type": "PreviewImage", "pos": [1440, 1300], "size": [300, 300], "title": "erase loss",
         "inputs": {"images": [10, 2]}},
    ]


WORKFLOWS = {"demo_erase_and_probe.json": (demo_erase_and_probe, "Demo: erase a shape, probe it, judge it")}


def main():
    import argparse
    import urllib.request

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True, help="a running ComfyUI with the pack, e.g. http://127.0.0.1:8188")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "workflows"))
    args = parser.parse_args()
    with urllib.request.urlopen(args.server.rstrip("/") + "/object_info") as resp:
        object_info = json.load(resp)
    for name, (make, title) in WORKFLOWS.items():
        workflow = build_ui(make(), object_info, title)
        path = Path(args.out) / name
        path.write_text(json.dumps(workflow, indent=1) + "\n", encoding="utf-8")
        print("wrote", path)


if __name__ == "__main__":
    main()
