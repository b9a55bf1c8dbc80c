"""The demo's two trainings side by side (erasure_core/demo/training.py): thread counts fixed by the iteration,
reproducible, the same work as one after the other, and nothing left running after an error or a cancel."""

import threading
import time

import pytest
import torch

from erasure_core.demo import training as demo_training
from erasure_core.demo.run import DemoSettings, demo_erase_config
from erasure_core.loading import load_model

SMALL = dict(warmup_iterations=1, concept_pool_size=2, retain_pool_size=4, num_ddim_steps=6)


@pytest.fixture(scope="module")
def model():
    return load_model("demo")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def configs(esd_iterations=2, advunlearn_iterations=8):
    made = {}
    for method, iterations in (("esd", esd_iterations), ("advunlearn", advunlearn_iterations)):
        settings = DemoSettings(erase=dict(SMALL, iterations=iterations))
        made[method] = demo_erase_config(method, 0, settings, "square")
    return made


def weights(result) -> dict:
    return {k: v.clone() for k, v in result.text_encoder.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_threads_change_hands_by_evaluations_not_by_the_clock(model, two_threads):
    seen = []  # (method, iteration, the threads it ran on)

    def progress(method, step):
        seen.append((method, step, torch.get_num_threads()))
        if method == "esd":
            time.sleep(0.5)  # a slow ESD (a busy machine): AdvUnlearn must wait for it, not train on

    trained = demo_training.train_methods(model, "square", configs(), progress)
    esd, advunlearn = trained["esd"][0], trained["advunlearn"][0]
    assert [t for m, _, t in seen if m == "esd"] == [1, 1]
    adv_threads = [t for m, _, t in seen if m == "advunlearn"]
    # The pools and the first iteration on both threads; then one each until AdvUnlearn has made, since its
    # first iteration, as many evaluations as ESD's whole run; both threads again from the next iteration.
    counts = [logs["unet_evaluations"] for logs in advunlearn.history]
    switch = next(i for i, c in enumerate(counts) if i > 0 and c - counts[0] >= esd.unet_evaluations)
    assert switch < len(counts) - 1, "the test needs a switch before AdvUnlearn's last iteration"
    assert adv_threads == [2] + [1] * switch + [2] * (len(counts) - 1 - switch)
    # ESD had finished when AdvUnlearn took both threads back
    assert seen.index(("esd", 2, 1)) < seen.index(("advunlearn", switch + 2, 2))
    assert torch.get_num_threads() == 2


def test_side_by_side_is_reproducible_and_does_the_same_work(model, two_threads):
    first = demo_training.train_methods(model, "square", configs())
    again = demo_training.train_methods(model, "square", configs())
    for method in ("esd", "advunlearn"):
        assert same(weights(first[method][0]), weights(again[method][0])), method
    torch.set_num_threads(1)  # one thread: one after the other, as before
    in_turn = demo_training.train_methods(model, "square", configs())
    # the shared pools are sampled once either way: by AdvUnlearn side by side, by ESD in turn
    assert sum(r.unet_evaluations for r, _ in first.values()) == sum(r.unet_evaluations for r, _ in in_turn.values())
    assert first["esd"][0].unet_evaluations < in_turn["esd"][0].unet_evaluations


def test_an_error_in_esd_stops_both_and_is_raised(model, two_threads, monkeypatch):
    real = demo_training._timed

    def failing(model, concept, config, cache, progress, should_cancel=None):
        if config.method == "esd":
            raise RuntimeError("ESD broke")
        return real(model, concept, config, cache, progress, should_cancel)

    monkeypatch.setattr(demo_training, "_timed", failing)
    with pytest.raises(RuntimeError, match="ESD broke"):
        demo_training.train_methods(model, "square", configs(advunlearn_iterations=30))
    assert torch.get_num_threads() == 2
    assert not [t for t in threading.enumerate() if t.name.startswith("demo-")]


def test_a_cancel_during_advunlearn_stops_esd_too(model, two_threads):
    esd_steps = []

    def progress(method, step):
        if method == "esd":
            esd_steps.append(step)
        elif step == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread

    with pytest.raises(KeyboardInterrupt):
        demo_training.train_methods(model, "square", configs(esd_iterations=50), progress)
    assert not [t for t in threading.enumerate() if t.name.startswith("demo-")]
    assert len(esd_steps) < 50  # ESD stopped at its next iteration, not at its end
    assert torch.get_num_threads() == 2
