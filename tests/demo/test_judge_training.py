"""The demo judge's training recipe (erasure_core/demo/judge_training.py, judge_data.py) on tiny data."""

import pytest
import torch

from erasure_core.demo import world
from erasure_core.demo.judge_data import ImageSet, outlier_set, outlier_targets
from erasure_core.demo.judge_training import Sources, clean_images, fit, probabilities, render_layers, train_judge
from erasure_core.errors import ErasureError


def _rendered_set(n: int, seed: int) -> ImageSet:
    alpha, labels, attrs = render_layers(n, seed)
    return ImageSet((clean_images(alpha, attrs) * 255).round().to(torch.uint8), labels)


def _noise_set(n: int, seed: int) -> ImageSet:
    gen = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=gen), size=64, mode="bilinear")
    labels = {a: torch.randint(len(v), (n,), generator=gen) for a, v in world.WORLD.items()}
    return ImageSet((images * 255).round().to(torch.uint8), labels)


def test_outlier_targets_keep_only_the_values_the_first_judge_is_sure_of():
    probs = {"shape": torch.tensor([[0.95, 0.05, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.05, 0.95]])}
    labels = {"shape": torch.tensor([0, 0, 2])}
    targets = outlier_targets(probs, labels, confidence=0.9)["shape"]
    assert targets[0].tolist() == [1.0, 0.0, 0.0, 0.0]  # sure of its caption's circle: kept
    assert targets[1].tolist() == [0.25] * 4  # unsure: no value
    assert targets[2].tolist() == [0.25] * 4  # sure of a star, but the caption asked for a triangle: no value


def test_a_batch_mixes_the_sources_with_their_own_targets():
    generated, outliers = _rendered_set(8, 1), _noise_set(8, 2)
    uniform = {a: torch.full((8, len(v)), 1 / len(v)) for a, v in world.WORLD.items()}
    sources = Sources(render_layers(16, 0), generated, outliers, uniform)
    x, targets = sources.batch(64, torch.Generator().manual_seed(0))
    assert x.shape == (64, 3, 64, 64) and 0 <= x.min() and x.max() <= 1
    for attribute, t in targets.items():
        assert t.shape == (64, len(world.WORLD[attribute]))
        assert torch.allclose(t.sum(dim=1), torch.ones(64))
        # the last quarter: outliers, with their uniform targets
        assert torch.allclose(t[48:], torch.full((16, t.shape[1]), 1 / t.shape[1]))
        assert (t[32:48].max(dim=1).values > 0.9).all()  # generated images keep their caption's label


def test_outlier_exposure_teaches_the_judge_that_noise_shows_no_value():
    """The recipe's point, on tiny data: a judge trained with uniform targets on off-manifold images is less sure
    of any value on new ones than the same judge trained without them."""
    renders, generated = render_layers(256, 0), _rendered_set(64, 1)
    noise = _noise_set(64, 2)
    uniform = {a: torch.full((64, len(v)), 1 / len(v)) for a, v in world.WORLD.items()}
    plain = fit(Sources(renders, generated), steps=100, seed=0, batch=32)
    exposed = fit(Sources(renders, generated, noise, uniform), steps=100, seed=0, batch=32)
    fresh = _noise_set(64, 3)

    def sureness(model):
        return probabilities(model, fresh)["shape"].max(dim=1).values.mean().item()

    # measured: 0.27 against 0.36 (uniform is 0.25)
    assert sureness(exposed) < 0.3 and sureness(exposed) < sureness(plain) - 0.05


def test_outlier_set_is_seeded_and_pushes_the_captions(tiny_model):
    a = outlier_set(tiny_model, 2, seed=3)
    assert torch.equal(a.images, outlier_set(tiny_model, 2, seed=3).images)
    unpushed = outlier_set(tiny_model, 2, seed=3, push_range=(0.0, 0.0))
    assert not torch.equal(a.images, unpushed.images)
    assert all(torch.equal(a.labels[k], unpushed.labels[k]) for k in world.WORLD)


def test_image_set_round_trip_and_foreign_files_refused(tmp_path):
    images = _noise_set(4, 0)
    images.save(tmp_path / "set.safetensors")
    back = ImageSet.load(tmp_path / "set.safetensors")
    assert torch.equal(back.images, images.images)
    assert all(torch.equal(back.labels[a], images.labels[a]) for a in world.WORLD)
    from safetensors.torch import save_file

    save_file({"images": images.images}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ErasureError, match="not a judge image set"):
        ImageSet.load(tmp_path / "foreign.safetensors")
    with pytest.raises(ErasureError, match="no judge image set"):
        ImageSet.load(tmp_path / "missing.safetensors")


def test_outliers_without_generated_images_are_refused(tmp_path):
    with pytest.raises(ErasureError, match="outliers need generated images"):
        train_judge(steps=1, outliers=_noise_set(4, 0), out=tmp_path)
    assert not any(tmp_path.iterdir())


def test_train_judge_with_every_source_writes_a_judge_that_loads(tmp_path):
    import json

    from erasure_core.demo.judge import DemoJudge

    info = train_judge(steps=4, generated=_rendered_set(16, 1), outliers=_noise_set(16, 2), out=tmp_path,
                       n_renders=32, record={"command": "test"})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["generated"] == 16 and config["outliers"] == 16 and config["command"] == "test"
    assert 0 <= config["outliers_read_as_captioned"] <= 16 and info["steps"] == 4
    assert len(DemoJudge("red", weights_dir=tmp_path).judge(torch.rand(2, 3, 64, 64)).scores) == 2


def test_an_image_set_of_another_shape_or_world_is_refused(tmp_path):
    from safetensors.torch import save_file

    good = _noise_set(4, 0)
    for tensors in {
        "float images": {"images": good.images.float()},  # each case: what replaces the good file's tensors
        "small images": {"images": good.images[:, :, :32, :32].contiguous()},
        "label out of range": {f"label.{a}": torch.full((4,), 9) for a in world.WORLD},
        "labels of another count": {f"label.{a}": v[:3].clone() for a, v in good.labels.items()},
    }.values():
        contents = {"images": good.images, **{f"label.{a}": v for a, v in good.labels.items()}, **tensors}
        save_file(contents, str(tmp_path / "set.safetensors"))
        with pytest.raises(ErasureError, match="not a judge image set of this world"):
            ImageSet.load(tmp_path / "set.safetensors")


def test_the_command_line_refuses_bad_values_before_any_work(tmp_path, capsys):
    from erasure_core.demo.judge_training import main

    (tmp_path / "a-file").write_text("x")
    for argv, message in ((["--threads", "0"], "--threads must be >= 1"),
                          (["--out", str(tmp_path / "a-file")], "is a file: pass a folder"),
                          (["--generated", "4", "--data-cache", str(tmp_path / "a-file")], "is a file")):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err
