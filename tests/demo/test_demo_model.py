"""The shipped demo model and judge: format, size, loading, generation, judge accuracy; the helpers of the training
script (tools/train_demo_model.py)."""

import functools
import importlib.util
import random
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from erasure_core.demo import WEIGHTS_DIR, load_demo_model, world
from erasure_core.demo.judge import DemoJudge
from erasure_core.errors import ErasureError
from erasure_core.judges.base import Judge
from erasure_core.sampling import encode_prompts, generate

SHIPPED = sorted(WEIGHTS_DIR.rglob("*.safetensors"))
TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "train_demo_model.py"


@functools.cache
def _train_script():
    """The maintainers' training script, outside the installed package, loaded as a module."""
    spec = importlib.util.spec_from_file_location("train_demo_model", TRAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_model():
    return load_demo_model()


@pytest.fixture(scope="module")
def clean_renders():
    """64 fresh renders (a seed the judge never trained on), with their attributes."""
    rng = random.Random(987_654)
    attrs = [world.random_attrs(rng) for _ in range(64)]
    return world.to_tensor_batch([world.render(a, rng) for a in attrs]), attrs


def test_shipped_weights_are_fp16_safetensors_within_20_mb():
    parts = {p.parent.name for p in SHIPPED}
    assert {"unet", "text_encoder", "vae", "judge"} <= parts
    for path in SHIPPED:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                assert not tensor.is_floating_point() or tensor.dtype == torch.float16, (path, key)
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert total <= 20_000_000, f"{total / 1e6:.1f} MB shipped"


def test_demo_model_is_sd1_shaped(demo_model):
    te, unet, vae = demo_model.text_encoder.config, demo_model.unet.config, demo_model.vae.config
    assert demo_model.name == "demo"
    assert (te.vocab_size, te.max_position_embeddings, te.hidden_act) == (49408, 77, "quick_gelu")
    assert (te.bos_token_id, te.eos_token_id) == (49406, 49407)
    assert te.hidden_size == unet.cross_attention_dim
    assert len(vae.block_out_channels) == 3 and vae.latent_channels == 4 and unet.in_channels == 4
    assert demo_model.resolution == 64 and demo_model.latent_size == 16
    assert demo_model.max_length == 77
    assert vae.scaling_factor != 0.18215  # measured on the demo VAE's own latents
    sched = demo_model.scheduler.config
    assert (sched.beta_schedule, sched.num_train_timesteps) == ("scaled_linear", 1000)  # SD1's schedule
    assert sched.prediction_type == "v_prediction"  # as SD 2.x-v: see architecture.build_scheduler


def test_demo_model_generates_through_the_standard_path(demo_model):
    cond = encode_prompts(demo_model, ["a red circle on a white background", "a blue star"])
    images = generate(demo_model, cond, [1, 2], steps=4, guidance=5.0)
    assert images.shape == (2, 3, 64, 64)
    assert 0 <= images.min() and images.max() <= 1 and images.std() > 0.05


def test_missing_weights_say_how_to_train_them(tmp_path):
    with pytest.raises(ErasureError, match="tools/train_demo_model.py"):
        load_demo_model(tmp_path)


def test_judge_is_accurate_on_fresh_clean_renders(clean_renders):
    images, attrs = clean_renders
    predicted = DemoJudge("circle").predict(images)
    for attribute in world.ATTRIBUTES:
        correct = sum(p == a[attribute] for p, a in zip(predicted[attribute], attrs))
        assert correct / len(attrs) >= 0.97, (attribute, correct)


def test_judge_flags_its_concept(clean_renders):
    images, attrs = clean_renders
    judge = DemoJudge("red")
    assert isinstance(judge, Judge) and judge.name == "demo-judge"
    result = judge(images)
    truth = [a["colour"] == "red" for a in attrs]
    assert len(result) == 64 and sum(f == t for f, t in zip(result.flags, truth)) >= 62
    assert all(0 <= s <= 1 for s in result.scores)
    assert set(result.details[0]) == set(world.ATTRIBUTES)
    with pytest.raises(ErasureError):
        DemoJudge("hexagon")


def test_judge_description_names_its_weights(tmp_path):
    """A benchmark stores the judge's description with its results and reuses them only when it is equal, so the
    description must change when the weights do (a retrained judge must never be mixed with the old one's calls)."""
    from erasure_core.demo.judge import JUDGE_DIR, ShapesClassifier
    from erasure_core.demo.judge_training import save_judge

    shipped = DemoJudge("red").describe()
    assert shipped == DemoJudge("red").describe() and len(shipped["weights_sha256"]) == 16
    torch.manual_seed(1)
    save_judge(ShapesClassifier().eval(), tmp_path, {"steps": 0})
    other = DemoJudge("red", weights_dir=tmp_path).describe()
    assert other["weights_sha256"] != shipped["weights_sha256"]
    assert {k: v for k, v in other.items() if k != "weights_sha256"} == \
        {k: v for k, v in shipped.items() if k != "weights_sha256"}
    assert JUDGE_DIR.is_dir()


def test_judge_folder_without_its_config_is_refused_with_the_fix(tmp_path):
    from erasure_core.demo.judge import weights_file

    (tmp_path / "model.safetensors").write_bytes(weights_file().read_bytes())
    with pytest.raises(ErasureError, match="no config.json.*copy the folder whole"):
        DemoJudge("red", weights_dir=tmp_path)


def test_export_and_load_round_trip_keeps_every_weight(tmp_path):
    """Exported fp16 weights load back into the same classes with every key (text_model.* prefix included)."""
    from erasure_core.demo.architecture import build_text_encoder, build_unet, build_vae
    export_weights = _train_script().export_weights

    torch.manual_seed(0)
    te, unet, vae = build_text_encoder(), build_unet(), build_vae()
    export_weights(tmp_path, te, unet, vae)
    model = load_demo_model(tmp_path)
    for original, loaded in ((te, model.text_encoder), (unet, model.unet), (vae, model.vae)):
        a, b = original.state_dict(), loaded.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.allclose(a[k].half().float(), b[k]) for k in a)


def test_checkpoint_round_trip_restores_optimiser_and_ema(tmp_path):
    from diffusers.training_utils import EMAModel

    load_checkpoint, save_checkpoint = _train_script().load_checkpoint, _train_script().save_checkpoint

    def make():
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 3)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
        return net, opt, EMAModel(list(net.parameters()), decay=0.9)

    net, opt, ema = make()
    for _ in range(3):
        net(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step(), opt.zero_grad(), ema.step(list(net.parameters()))
    save_checkpoint(tmp_path / "c.safetensors", {"net": net}, opt, ema, {"step": 3})
    net2, opt2, ema2 = make()
    meta = load_checkpoint(tmp_path / "c.safetensors", {"net": net2}, opt2, ema2)
    assert meta["step"] == 3 and ema2.optimization_step == ema.optimization_step
    assert torch.equal(net.weight, net2.weight)
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow_params, ema2.shadow_params))
    x = torch.randn(5, 4)
    for n, o in ((net, opt), (net2, opt2)):  # one more identical step must give identical weights
        n(x).pow(2).mean().backward()
        o.step()
    assert torch.equal(net.weight, net2.weight)


def test_lr_schedule_warms_up_then_decays():
    lr_factor = _train_script().lr_factor

    assert lr_factor(0, 0.0, 100, 0.05) == pytest.approx(0.01)
    assert lr_factor(200, 0.0, 100, 0.05) == pytest.approx(1.0)
    assert lr_factor(200, 1.0, 100, 0.05) == pytest.approx(0.05)
    assert lr_factor(200, 0.5, 100, 0.05) == pytest.approx(0.525)


def test_loss_weights_keep_high_noise_whole_and_cap_low_noise():
    loss_weights = _train_script().loss_weights
    from erasure_core.models import make_scheduler

    scheduler = make_scheduler(prediction_type="v_prediction")
    t = torch.tensor([10, 300, 999])
    w = loss_weights(scheduler, t, 5.0)
    snr = scheduler.alphas_cumprod[t] / (1 - scheduler.alphas_cumprod[t])
    assert w[0] == pytest.approx(6.0 / (snr[0] + 1))  # low noise: the x0 weight capped at gamma + 1
    assert w[0] < 0.5 and torch.allclose(w[1:], torch.ones(2))  # high noise: the whole v-MSE counts
    eps = loss_weights(make_scheduler(), t, 5.0)  # epsilon phase: the published Min-SNR-gamma
    assert eps[0] == pytest.approx(5.0 / snr[0]) and torch.allclose(eps[1:], torch.ones(2))


def test_denoising_target_follows_the_prediction_type():
    from erasure_core.models import denoising_target, make_scheduler

    x0, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([999, 999])
    assert denoising_target(make_scheduler(), x0, noise, t) is noise
    v = denoising_target(make_scheduler(prediction_type="v_prediction"), x0, noise, t)
    assert (v + x0).abs().mean() < 0.1  # at the last step the velocity is about minus the clean latent
    with pytest.raises(ValueError, match="sample"):
        denoising_target(make_scheduler(prediction_type="sample"), x0, noise, t)

def test_at_resolution_changes_the_working_size_only(demo_model):
    small = demo_model.at_resolution(32)
    assert (small.resolution, small.latent_size) == (32, 8)
    assert small.unet is demo_model.unet and demo_model.resolution == 64  # same modules, the original unchanged
    images = generate(small, encode_prompts(small, ["a red circle"]), [0], steps=2, guidance=5.0)
    assert images.shape == (1, 3, 32, 32)
    with pytest.raises(ErasureError, match="multiple of 16 px"):
        demo_model.at_resolution(40)
