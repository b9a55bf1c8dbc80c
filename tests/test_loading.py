"""Loading SD1.x models from diffusers folders and single-file checkpoints, and refusing everything else."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from erasure_core.errors import ModelFormatError
from erasure_core.loading import detect_family, infer_ldm_config, load_sd1_from_path
from erasure_core.loading import load_model
from erasure_core.sampling import encode_prompts, generate
from sd1_fixtures import ldm_state_from_model, sd15_ldm_meta_state, tiny_sd1, write_diffusers_folder, write_single_file


@pytest.fixture(scope="module")
def sd1():
    return tiny_sd1()


@pytest.fixture(scope="module")
def single_file(sd1, tmp_path_factory):
    return write_single_file(sd1, tmp_path_factory.mktemp("single") / "tiny-sd1.safetensors")


@pytest.fixture(scope="module")
def diffusers_folder(sd1, tmp_path_factory):
    return write_diffusers_folder(sd1, tmp_path_factory.mktemp("folder") / "tiny-sd1")


def assert_same_weights(expected, actual):
    want, got = expected.state_dict(), actual.state_dict()
    assert sorted(want) == sorted(got)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype, key
        assert torch.equal(got[key], tensor), key


def assert_same_model(expected, actual):
    for part in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(expected, part), getattr(actual, part))


# --------------------------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------------------------


def test_single_file_round_trips_bit_exact(sd1, single_file):
    loaded = load_sd1_from_path(single_file, image_size=16)
    assert_same_model(sd1, loaded)
    assert loaded.latent_size == 8 and loaded.resolution == 16
    assert list(loaded.unet.config.block_out_channels) == [32, 64]
    assert len(loaded.tokenizer) == 49408


def test_single_file_without_text_model_prefix_loads(sd1, tmp_path):
    path = write_single_file(sd1, tmp_path / "old.safetensors", clip_prefix="cond_stage_model.transformer.")
    assert_same_weights(sd1.text_encoder, load_sd1_from_path(path, image_size=16).text_encoder)


def test_ckpt_pickle_loads_with_weights_only(sd1, tmp_path):
    path = write_single_file(sd1, tmp_path / "tiny.ckpt")  # {"state_dict": ..., "global_step": 7}
    assert_same_model(sd1, load_sd1_from_path(path, image_size=16))


def test_fp16_single_file_keeps_its_values(sd1, tmp_path):
    path = write_single_file(sd1, tmp_path / "half.safetensors", dtype=torch.float16)
    loaded = load_sd1_from_path(path, image_size=16)
    assert loaded.unet.dtype == torch.float16
    half = sd1.unet.state_dict()
    for key, tensor in loaded.unet.state_dict().items():
        assert torch.equal(tensor, half[key].half()), key


def test_diffusers_folder_round_trips_bit_exact(sd1, diffusers_folder):
    loaded = load_sd1_from_path(diffusers_folder)
    assert_same_model(sd1, loaded)
    assert loaded.latent_size == sd1.latent_size
    assert loaded.scheduler.config.beta_schedule == "scaled_linear"


def test_diffusers_folder_without_tokenizer_uses_the_shipped_one(diffusers_folder, tmp_path):
    copy = shutil.copytree(diffusers_folder, tmp_path / "no-tokenizer")
    shutil.rmtree(copy / "tokenizer")
    loaded = load_sd1_from_path(copy)
    assert loaded.tokenizer("a photo").input_ids[0] == 49406 and len(loaded.tokenizer) == 49408


def test_loaded_models_generate_the_same_images_as_the_original(sd1, single_file, diffusers_folder):
    cond = encode_prompts(sd1, ["a red circle"])
    reference = generate(sd1, cond, seeds=[3], steps=2, guidance=3.0)
    assert reference.shape == (1, 3, 16, 16) and torch.isfinite(reference).all()
    for source in (single_file, diffusers_folder):
        model = load_model(source)  # the shared entry point dispatches paths here
        assert model.resolution == (16 if source == diffusers_folder else 512)
        model = load_sd1_from_path(source, image_size=16).to(dtype=torch.float32).freeze()
        images = generate(model, encode_prompts(model, ["a red circle"]), seeds=[3], steps=2, guidance=3.0)
        assert torch.equal(images, reference)


# --------------------------------------------------------------------------------------------------------------
# Family detection and refusals
# --------------------------------------------------------------------------------------------------------------


def test_sd15_shapes_give_the_sd15_config():
    """Config inference on the real SD1.5 key layout (shapes only: meta tensors, no memory)."""
    ldm_config = infer_ldm_config(sd15_ldm_meta_state())
    unet = ldm_config["model"]["params"]["unet_config"]["params"]
    assert (unet["model_channels"], unet["channel_mult"], unet["num_res_blocks"]) == (320, [1, 2, 4, 4], 2)
    assert (unet["attention_resolutions"], unet["context_dim"], unet["transformer_depth"]) == ([1, 2, 4], 768, 1)
    assert unet["use_linear_in_transformer"] is False
    vae = ldm_config["model"]["params"]["first_stage_config"]["params"]["ddconfig"]
    assert (vae["ch"], vae["ch_mult"], vae["num_res_blocks"], vae["z_channels"]) == (128, [1, 2, 4, 4], 2, 4)


def test_detect_family_from_keys_and_shapes(sd1):
    state = ldm_state_from_model(sd1)
    assert detect_family(state) == "sd1"
    assert detect_family(list(state)) == "sd1"
    assert detect_family({k: tuple(v.shape) for k, v in state.items()}) == "sd1"
    assert detect_family(["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"]) == "sdxl"
    assert detect_family(["cond_stage_model.model.token_embedding.weight"]) == "sd2"
    assert detect_family(["text_model.final_layer_norm.weight"]) == "text-encoder"
    assert detect_family(["weight", "bias"]) == "unknown"
    inpaint = dict(state)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    inpaint[key] = torch.zeros(32, 9, 3, 3)
    assert detect_family(inpaint) == "sd1-inpainting"
    wide = {k: v for k, v in state.items()}
    to_k = next(k for k in state if k.endswith("attn2.to_k.weight"))
    wide[to_k] = torch.zeros(32, 1024)
    assert detect_family(wide) == "sd2"


@pytest.mark.parametrize(
    "keys, found",
    [
        ({"conditioner.embedders.1.model.positional_embedding": (77, 1280),
          "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, "SDXL"),
        ({"cond_stage_model.model.token_embedding.weight": (49408, 1024),
          "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, "2.x"),
        ({"classifier.weight": (10, 512), "classifier.bias": (10,)}, "no Stable Diffusion 1.x layout"),
    ],
)
def test_other_families_are_refused_with_what_was_found(tmp_path, keys, found):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(path))
    with pytest.raises(ModelFormatError) as err:
        load_sd1_from_path(path)
    message = str(err.value)
    assert found in message and "Stable Diffusion 1.4/1.5" in message
    assert next(iter(sorted(keys))) in message


def test_truncated_single_file_is_refused(single_file, tmp_path):
    data = single_file.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_sd1_from_path(cut)


def test_truncated_ckpt_is_refused(sd1, tmp_path):
    path = write_single_file(sd1, tmp_path / "full.ckpt")
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_sd1_from_path(cut)


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "callback": shutil.rmtree}, str(path))
    with pytest.raises(ModelFormatError, match="weights_only"):
        load_sd1_from_path(path)


def _edited_file(single_file, tmp_path, edit):
    state = load_file(str(single_file))
    edit(state)
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path))
    return path


def test_missing_unet_key_is_named(single_file, tmp_path):
    key = "model.diffusion_model.output_blocks.1.0.skip_connection.weight"
    path = _edited_file(single_file, tmp_path, lambda s: s.pop(key))
    with pytest.raises(ModelFormatError, match=r"missing: .*up_blocks\.0\.resnets\.1\.conv_shortcut\.weight"):
        load_sd1_from_path(path)


@pytest.mark.parametrize(
    "key",
    [
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn3.to_k.weight",  # renamed, then extra
        "model.diffusion_model.label_emb.0.0.weight",  # diffusers' converter would drop it silently
    ],
)
def test_extra_unet_key_is_named(single_file, tmp_path, key):
    path = _edited_file(single_file, tmp_path, lambda s: s.__setitem__(key, torch.zeros(8, 8)))
    with pytest.raises(ModelFormatError, match=key.split(".", 2)[-1].replace(".", r"\.")[-30:]):
        load_sd1_from_path(path)


def test_misshaped_text_encoder_key_is_named(single_file, tmp_path):
    key = "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.weight"
    path = _edited_file(single_file, tmp_path, lambda s: s.__setitem__(key, torch.zeros(64, 100)))
    with pytest.raises(ModelFormatError, match=r"encoder\.layers\.1\.mlp\.fc2\.weight \(64, 100\)"):
        load_sd1_from_path(path)


def test_sdxl_and_broken_diffusers_folders_are_refused(diffusers_folder, tmp_path):
    xl = shutil.copytree(diffusers_folder, tmp_path / "xl")
    index = json.loads((xl / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionXLPipeline"
    (xl / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFormatError, match="SDXL"):
        load_sd1_from_path(xl)

    broken = shutil.copytree(diffusers_folder, tmp_path / "broken")
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state.pop("conv_out.weight")
    save_file(state, str(weights))
    with pytest.raises(ModelFormatError, match="conv_out.weight"):
        load_sd1_from_path(broken)


def test_paths_that_are_no_model_are_refused(tmp_path):
    with pytest.raises(ModelFormatError, match="does not exist"):
        load_sd1_from_path(tmp_path / "nothing.safetensors")
    with pytest.raises(ModelFormatError, match="model_index.json"):
        load_sd1_from_path(tmp_path)
