"""Encoder files: every layout in, one layout out, strict checks, hashing, swap and bake."""

from __future__ import annotations

import copy
import re
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig

from erasure_core import __version__
from erasure_core.encoders import (
    EncoderFile,
    check_encoder_fits,
    convert_encoder,
    describe_encoder,
    encoder_hash,
    load_robust_text_encoder,
    normalize_encoder_keys,
    read_encoder,
    save_encoder,
    state_dict_from_text_encoder,
)
from erasure_core.errors import ModelFormatError
from erasure_core.loading import load_sd1_from_path
from erasure_core.swap import bake, swap_text_encoder
from sd1_fixtures import advunlearn_training_state, canonical_state, tiny_sd1, tiny_text_encoder, write_encoder_layouts, write_single_file

FC1 = "text_model.encoder.layers.0.mlp.fc1.weight"  # what ComfyUI's CLIPLoader looks for


@pytest.fixture(scope="module")
def sd1():
    return tiny_sd1()


@pytest.fixture(scope="module")
def robust():
    """A different encoder of the same shape: the "erased" one."""
    return tiny_text_encoder(seed=42)


@pytest.fixture(scope="module")
def layouts(sd1, tmp_path_factory):
    return write_encoder_layouts(sd1.text_encoder, tmp_path_factory.mktemp("layouts"))


def assert_same_state(expected: dict, actual: dict):
    assert sorted(expected) == sorted(actual)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype and torch.equal(actual[key], tensor), key


# --------------------------------------------------------------------------------------------------------------
# Layouts in
# --------------------------------------------------------------------------------------------------------------

EXPECTED_FORMATS = {
    "text_model_safetensors": "text_model",
    "transformers5_safetensors": "transformers5",
    "hf_folder": "hf-folder-safetensors(transformers5)",
    "advunlearn_folder": "hf-folder-bin(text_model)",
    "advunlearn_pt": "advunlearn-pt",
    "sd1_text_encoder_old": "sd1-checkpoint-old",
    "comfyui": "comfyui",
}


@pytest.mark.parametrize("layout", sorted(EXPECTED_FORMATS))
def test_every_layout_loads_bit_exact(sd1, layouts, layout):
    encoder = read_encoder(layouts[layout])
    assert encoder.source_format == EXPECTED_FORMATS[layout]
    model = load_robust_text_encoder(layouts[layout])
    assert_same_state(canonical_state(sd1.text_encoder), state_dict_from_text_encoder(model))
    ids = sd1.tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids)[0], sd1.text_encoder(ids)[0])


def test_sd1_single_file_encoder_is_read(sd1, tmp_path):
    path = write_single_file(sd1, tmp_path / "model.safetensors")
    encoder = read_encoder(path)
    assert encoder.source_format == "sd1-checkpoint"
    assert_same_state(canonical_state(sd1.text_encoder), encoder.state_dict)


def test_published_folder_config_is_used(layouts):
    encoder = read_encoder(layouts["advunlearn_folder"])
    assert encoder.config["hidden_size"] == 64 and encoder.config["hidden_act"] == "quick_gelu"


def test_normalize_drops_position_ids_and_identical_aliases(sd1):
    canon = canonical_state(sd1.text_encoder)
    training = {k: v.clone() for k, v in advunlearn_training_state(canon).items()}
    assert "embedding.token_embedding.weight" in training and "encoder.layers.1.mlp.fc2.bias" in training
    assert_same_state(canon, normalize_encoder_keys(training))


@pytest.mark.parametrize("alias", ["final_layer_norm.weight", "embedding.token_embedding.weight",
                                   "encoder.layers.0.mlp.fc1.bias"])
def test_differing_aliases_are_an_error(sd1, tmp_path, alias):
    training = {k: v.clone() for k, v in advunlearn_training_state(canonical_state(sd1.text_encoder)).items()}
    training[alias][0] += 1
    with pytest.raises(ModelFormatError, match=f"different tensors.*{re.escape(alias)}"):
        normalize_encoder_keys(training)
    torch.save(training, str(tmp_path / "training.pt"))
    with pytest.raises(ModelFormatError, match=f"different tensors.*{re.escape(alias)}"):
        read_encoder(tmp_path / "training.pt")


def test_alias_without_its_twin_is_an_error(sd1):
    training = advunlearn_training_state(canonical_state(sd1.text_encoder))
    del training["text_encoder.text_model.final_layer_norm.bias"]
    with pytest.raises(ModelFormatError, match="final_layer_norm.bias.*no text_encoder.text_model"):
        normalize_encoder_keys(training)


def test_unexpected_keys_are_named(sd1):
    state = canonical_state(sd1.text_encoder)
    state["vision_model.post_layernorm.weight"] = torch.zeros(4)
    with pytest.raises(ModelFormatError, match="vision_model.post_layernorm.weight"):
        normalize_encoder_keys(state)


def _drop_q_bias(state):
    state.pop("text_model.encoder.layers.1.self_attn.q_proj.bias")


def _add_third_layer(state):
    state["text_model.encoder.layers.2.mlp.fc1.weight"] = torch.zeros(256, 64)


def _narrow_fc1(state):
    state[FC1] = torch.zeros(255, 64)


@pytest.mark.parametrize(
    "edit, message",
    [
        (_drop_q_bias, r"1 missing: .*layers\.1\.self_attn\.q_proj\.bias"),
        (_add_third_layer, r"1 unexpected: .*layers\.2\.mlp\.fc1\.weight"),
        (_narrow_fc1, r"misshaped: .*fc1\.weight \(255, 64\) \(expected \(256, 64\)\)"),
    ],
)
def test_strict_load_names_missing_extra_and_misshaped_keys(sd1, tmp_path, edit, message):
    state = canonical_state(sd1.text_encoder)
    path = save_encoder(sd1.text_encoder, tmp_path / "ok.safetensors")  # carries the config in its metadata
    config = json.loads(safe_open(str(path), "pt").metadata()["robust_erasure"])["config"]
    edit(state)
    with pytest.raises(ModelFormatError, match=message):
        load_robust_text_encoder(EncoderFile(state, {}, "test", config))


def test_truncated_and_garbage_encoder_files_are_refused(layouts, tmp_path):
    data = layouts["text_model_safetensors"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFormatError, match="truncated"):
        read_encoder(cut)
    pickle_cut = tmp_path / "cut.pt"
    pickle_cut.write_bytes(layouts["advunlearn_pt"].read_bytes()[:3000])
    with pytest.raises(ModelFormatError, match="truncated"):
        read_encoder(pickle_cut)


def test_published_folder_with_code_in_its_pickle_is_refused(layouts, tmp_path):
    folder = tmp_path / "evil_unlearned"
    folder.mkdir()
    (folder / "config.json").write_text((layouts["advunlearn_folder"] / "config.json").read_text())
    torch.save({"text_model.final_layer_norm.weight": torch.ones(64), "hook": print}, str(folder / "pytorch_model.bin"))
    with pytest.raises(ModelFormatError, match="weights_only=True"):
        read_encoder(folder)


def test_sdxl_checkpoint_is_not_read_as_an_encoder(tmp_path):
    path = tmp_path / "xl.safetensors"
    save_file({"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(768),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, str(path))
    with pytest.raises(ModelFormatError, match="SDXL"):
        read_encoder(path)


# --------------------------------------------------------------------------------------------------------------
# Our format out
# --------------------------------------------------------------------------------------------------------------


def test_save_encoder_writes_fp16_text_model_keys_and_metadata(sd1, tmp_path):
    meta = {"concepts": ["nudity"], "method": "advunlearn", "preset": "nudity", "gamma": 0.3,
            "base_model": "tiny-sd1", "base_encoder_hash": encoder_hash(sd1.text_encoder)}
    path = save_encoder(sd1.text_encoder, tmp_path / "robust.safetensors", metadata=meta)
    tensors = load_file(str(path))
    assert FC1 in tensors and all(k.startswith("text_model.") for k in tensors)
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    encoder = read_encoder(path)
    assert encoder.source_format == "robust-erasure"
    assert encoder.metadata["library_version"] == __version__ and encoder.metadata["format_version"] == 1
    assert {k: encoder.metadata[k] for k in meta} == meta
    assert encoder.config["hidden_size"] == 64 and encoder.config["num_hidden_layers"] == 2
    loaded = load_robust_text_encoder(path)  # no config.json needed
    for key, tensor in canonical_state(sd1.text_encoder).items():
        assert torch.equal(state_dict_from_text_encoder(loaded)[key], tensor.half().float()), key
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temporary file"


def test_fp32_save_round_trips_bit_exact(sd1, tmp_path):
    path = save_encoder(sd1.text_encoder, tmp_path / "fp32.safetensors", dtype=torch.float32)
    assert_same_state(canonical_state(sd1.text_encoder), state_dict_from_text_encoder(load_robust_text_encoder(path)))


def test_save_refuses_incomplete_state_and_other_suffixes(sd1, tmp_path):
    state = canonical_state(sd1.text_encoder)
    state.pop("text_model.final_layer_norm.bias")
    with pytest.raises(ModelFormatError, match="final_layer_norm.bias"):
        save_encoder(state, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
    with pytest.raises(ModelFormatError, match="safetensors"):
        save_encoder(sd1.text_encoder, tmp_path / "bad.pt")


def test_convert_and_describe(sd1, layouts, tmp_path):
    out = convert_encoder(layouts["advunlearn_pt"], tmp_path / "converted.safetensors", metadata={"concepts": ["x"]})
    info = describe_encoder(out)
    assert info["keys"] == 36 and info["dtype"] == "float16" and info["width"] == 64 and info["layers"] == 2
    assert info["vocab"] == 49408 and info["metadata"]["source_format"] == "advunlearn-pt"
    assert info["metadata"]["concepts"] == ["x"]
    assert encoder_hash(load_robust_text_encoder(out)) == encoder_hash(
        {k: v.half() for k, v in canonical_state(sd1.text_encoder).items()}
    )


def test_encoder_hash_ignores_layout_and_sees_every_weight(sd1, layouts):
    hashes = {encoder_hash(read_encoder(p)) for p in layouts.values()}
    assert hashes == {encoder_hash(sd1.text_encoder)} and len(encoder_hash(sd1.text_encoder)) == 16
    changed = canonical_state(sd1.text_encoder)
    changed["text_model.encoder.layers.1.mlp.fc2.bias"][3] += 1e-3
    assert encoder_hash(changed) != encoder_hash(sd1.text_encoder)


def test_shapes_only_file_takes_heads_from_the_reference(tmp_path):
    narrow = tiny_text_encoder(seed=1, width=32)
    narrow.config.num_attention_heads = 2
    narrow = type(narrow)(narrow.config)
    path = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in narrow.state_dict().items()}, str(path))
    loaded = load_robust_text_encoder(path, reference=narrow.config)
    assert loaded.config.num_attention_heads == 2
    assert load_robust_text_encoder(path).config.num_attention_heads == 1  # the SD1 convention: 64-wide heads


def test_check_encoder_fits_names_both_shapes(sd1):
    wide = CLIPTextConfig(hidden_size=1024, num_hidden_layers=23, vocab_size=49408, intermediate_size=4096)
    with pytest.raises(ModelFormatError) as err:
        check_encoder_fits(canonical_state(sd1.text_encoder), wide)
    assert "width 64, 2 layers" in str(err.value) and "width 1024, 23 layers" in str(err.value)
    check_encoder_fits(sd1.text_encoder, sd1.text_encoder.config)


# --------------------------------------------------------------------------------------------------------------
# Swap and bake
# --------------------------------------------------------------------------------------------------------------


def test_swap_puts_the_robust_encoder_into_a_pipeline(sd1, robust, tmp_path):
    path = save_encoder(robust, tmp_path / "robust.safetensors", dtype=torch.float32)
    pipe = sd1.pipeline(text_encoder=copy.deepcopy(sd1.text_encoder).double())
    assert swap_text_encoder(pipe, path) is pipe
    assert pipe.text_encoder.dtype == torch.float64 and pipe.text_encoder.device == sd1.unet.device
    want = {k: v.double() for k, v in canonical_state(robust).items()}
    assert_same_state(want, state_dict_from_text_encoder(pipe.text_encoder))
    assert_same_state(canonical_state(tiny_sd1().text_encoder), canonical_state(sd1.text_encoder))


def test_swap_refuses_an_encoder_of_another_shape(sd1, tmp_path):
    deeper = tiny_text_encoder(seed=3, layers=3)
    path = save_encoder(deeper, tmp_path / "deep.safetensors")
    with pytest.raises(ModelFormatError) as err:
        swap_text_encoder(sd1.pipeline(), path)
    assert "width 64, 3 layers" in str(err.value) and "width 64, 2 layers" in str(err.value)
    wider = tiny_text_encoder(seed=3, width=128)
    with pytest.raises(ModelFormatError, match="width 128"):
        swap_text_encoder(sd1.pipeline(), wider)


@pytest.mark.parametrize("clip_prefix", ["cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."])
def test_bake_replaces_only_the_encoder(sd1, robust, tmp_path, clip_prefix):
    source = write_single_file(sd1, tmp_path / "base.safetensors", dtype=torch.float16, clip_prefix=clip_prefix)
    encoder = save_encoder(robust, tmp_path / "robust.safetensors", metadata={"concepts": ["nudity"]})
    out = bake(source, encoder, tmp_path / "baked.safetensors")

    before, after = load_file(str(source)), load_file(str(out))
    assert sorted(before) == sorted(after)
    robust_state = canonical_state(robust)
    for key, tensor in before.items():
        if key.startswith(clip_prefix) and not key.endswith("position_ids"):
            canon = "text_model." + key[len(clip_prefix):].removeprefix("text_model.")
            assert after[key].dtype == torch.float16 and torch.equal(after[key], robust_state[canon].half()), key
        else:
            assert after[key].dtype == tensor.dtype, key
            assert torch.equal(after[key].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), key
    with safe_open(str(source), "pt") as a, safe_open(str(out), "pt") as b:
        assert {k: b.metadata()[k] for k in a.metadata()} == a.metadata()
        assert json.loads(b.metadata()["robust_erasure_baked_encoder"])["concepts"] == ["nudity"]

    reloaded = load_sd1_from_path(out, image_size=16)
    baked_encoder = state_dict_from_text_encoder(reloaded.text_encoder)
    assert_same_state({k: v.half() for k, v in robust_state.items()}, baked_encoder)


def test_bake_refuses_an_encoder_that_does_not_fit(sd1, tmp_path):
    source = write_single_file(sd1, tmp_path / "base.safetensors")
    with pytest.raises(ModelFormatError, match="width 64, 3 layers.*width 64, 2 layers"):
        bake(source, tiny_text_encoder(seed=5, layers=3), tmp_path / "baked.safetensors")
    assert not (tmp_path / "baked.safetensors").exists()


def test_bake_from_ckpt_writes_safetensors(sd1, robust, tmp_path):
    source = write_single_file(sd1, tmp_path / "base.ckpt")
    out = bake(source, robust, tmp_path / "baked.safetensors")
    reloaded = load_sd1_from_path(out, image_size=16)
    assert_same_state(canonical_state(robust), state_dict_from_text_encoder(reloaded.text_encoder))
    for key, tensor in sd1.unet.state_dict().items():
        assert torch.equal(reloaded.unet.state_dict()[key], tensor), key


def test_sd1_text_config_is_the_shipped_json_with_changes():
    from erasure_core.layouts import sd1_text_config

    sd1 = sd1_text_config()
    assert (sd1["hidden_size"], sd1["num_hidden_layers"], sd1["vocab_size"]) == (768, 12, 49408)
    small = sd1_text_config(hidden_size=64, num_hidden_layers=2)
    assert small == {**sd1, "hidden_size": 64, "num_hidden_layers": 2}
    with pytest.raises(ValueError, match="hidden_width"):
        sd1_text_config(hidden_width=64)


def test_tiny_model_encoder_is_sd1_with_smaller_sizes(tiny_model):
    from erasure_core.layouts import CONFIG_FIELDS, sd1_text_config

    config = tiny_model.text_encoder.config
    same = {k for k in CONFIG_FIELDS if getattr(config, k) == sd1_text_config()[k]}
    assert same == {"vocab_size", "max_position_embeddings", "hidden_act", "layer_norm_eps", "bos_token_id",
                    "eos_token_id", "pad_token_id"}
