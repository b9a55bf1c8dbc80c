"""On a (shared) ComfyUI server a classifier judge loads only folders inside models/classifiers, named without a
path; the CLI keeps free paths (tests/test_judges.py)."""

from __future__ import annotations

import pytest
import torch

from comfy_server import assert_success, execution_error


def _judge_graph(spec: str) -> dict:
    return {
        "demo": {"class_type": "RobustErasureLoadDemoModel", "inputs": {}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["latent", 0], "vae": ["demo", 2]}},
        "judge": {"class_type": "RobustErasureJudge", "inputs": {"images": ["decode", 0], "judge": spec}},
    }


@pytest.fixture(scope="module")
def classifier_name(comfy, tmp_path_factory):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    labels = {0: "cat", 1: "church"}
    config = ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()})
    folder = comfy.models / "classifiers" / "tiny_vit"
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    outside = tmp_path_factory.mktemp("outside_models") / "vit"
    ViTForImageClassification(config).save_pretrained(outside)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(outside)
    return "tiny_vit", outside


def test_classifier_from_the_models_directory_is_loaded(comfy, classifier_name):
    name, _ = classifier_name
    assert_success(comfy.run(_judge_graph(f"classifier:{name}:cat")))


@pytest.mark.parametrize("how", ["absolute", "traversal"])
def test_classifier_paths_outside_the_models_directory_are_refused(comfy, classifier_name, how):
    _, outside = classifier_name
    spec = f"classifier:{outside}:cat" if how == "absolute" else "classifier:../../outside/vit:cat"
    err = execution_error(comfy.run(_judge_graph(spec)))
    assert err is not None and comfy.alive()
    assert "must be a folder inside" in err["exception_message"], err
