"""average_last: the written encoder is the mean of the weights after each of the run's last iterations."""

import itertools

import pytest
import torch

from erasure_core.errors import ErasureCancelled, ErasureError
from erasure_core.files import atomic_save_safetensors
from erasure_core.models import build_tiny_model
from erasure_core.training import EraseConfig, erase, read_checkpoint

FAST = dict(iterations=5, warmup_iterations=2, attack_steps=3, num_ddim_steps=8, concept_pool_size=2,
            retain_pool_size=4, retain_batch=2, lr=1e-3, checkpoint_every=0,
            diagnostics_every=0)  # diagnostics at a run's last iteration would make its history end differently


def _weights(result):
    return {k: v.clone() for k, v in result.text_encoder.state_dict().items()}


def test_the_average_is_the_mean_of_the_last_iterations_and_the_trajectory_is_unchanged():
    # lr is constant and nothing in a run depends on its total, so a run stopped at 4 is the 5-iteration run's
    # state after iteration 4 (checked here too: the 4-iteration history is the 5's first four entries).
    at4 = erase(build_tiny_model(), ["nudity"], EraseConfig(**{**FAST, "iterations": 4}))
    at5 = erase(build_tiny_model(), ["nudity"], EraseConfig(**FAST))
    averaged = erase(build_tiny_model(), ["nudity"], EraseConfig(**FAST, average_last=0.4))  # the last 2 of 5
    assert at5.history[:4] == at4.history
    assert averaged.history == at5.history  # averaging never feeds back into training
    assert averaged.metadata["averaged_iterations"] == 2 and at5.metadata["averaged_iterations"] == 0
    w4, w5, avg = _weights(at4), _weights(at5), _weights(averaged)
    moved = [k for k in w5 if not torch.equal(w4[k], w5[k])]
    assert moved, "the last iteration changed no weight: the test would not tell the average from either end"
    for k in w5:
        torch.testing.assert_close(avg[k], (w4[k] + w5[k]) / 2, rtol=0, atol=1e-6, msg=k)
    assert any(not torch.equal(avg[k], w5[k]) for k in moved)


def test_average_last_one_averages_every_iteration_and_out_of_range_is_refused():
    everything = erase(build_tiny_model(), ["nudity"], EraseConfig(**{**FAST, "iterations": 3}, average_last=1.0))
    assert everything.metadata["averaged_iterations"] == 3
    for bad in (-0.1, 1.5):
        with pytest.raises(ErasureError, match="average_last .* must be in \\[0, 1\\]"):
            EraseConfig(average_last=bad).validate()
    with pytest.raises(ErasureError, match="average_last 0.001 of 400 iterations averages none of them"):
        EraseConfig(iterations=400, average_last=0.001).validate()  # round(0.4) = 0: no silent "off"


def test_a_run_cancelled_inside_the_window_resumes_to_the_same_average(tmp_path):
    config = EraseConfig(**FAST, average_last=0.6)  # iterations 3, 4 and 5
    straight = erase(build_tiny_model(), ["nudity"], config)
    ckpt = tmp_path / "run.ckpt.safetensors"
    reported, polls = [], itertools.count()
    cancel = lambda: len(reported) >= 4 and next(polls) >= 2  # noqa: E731  (inside iteration 5's attack)
    with pytest.raises(ErasureCancelled):
        erase(build_tiny_model(), ["nudity"], config, checkpoint_path=ckpt,
              progress=lambda step, total, logs: reported.append(step), should_cancel=cancel)
    tensors, meta = read_checkpoint(ckpt)
    assert meta["step"] == 4 and meta["average_count"] == 2 and any(k.startswith("average.") for k in tensors)
    resumed = erase(build_tiny_model(), ["nudity"], config, resume_from=ckpt)
    assert resumed.metadata["averaged_iterations"] == 3
    for (name, a), b in zip(straight.text_encoder.state_dict().items(), resumed.text_encoder.state_dict().values()):
        assert torch.equal(a, b), name
    # Another `iterations` moves the window: the mean so far would cover other iterations than the run's.
    moved_window = "holds the mean of iterations 3-4, but .* would hold the mean of iterations 4-4 at its step 4"
    with pytest.raises(ErasureError, match=moved_window):
        erase(build_tiny_model(), ["nudity"], EraseConfig(**{**FAST, "iterations": 8}, average_last=0.6),
              resume_from=ckpt)
    with pytest.raises(ErasureError, match="holds the mean of iterations 3-4, but .* would hold no mean yet"):
        erase(build_tiny_model(), ["nudity"], EraseConfig(**FAST), resume_from=ckpt)


def test_a_checkpoint_missing_its_running_mean_is_refused(tmp_path):
    config = EraseConfig(**{**FAST, "checkpoint_every": 4}, average_last=0.6)
    ckpt = tmp_path / "run.ckpt.safetensors"
    erase(build_tiny_model(), ["nudity"], config, checkpoint_path=ckpt)  # written after iteration 4 of 5
    tensors, meta = read_checkpoint(ckpt)
    assert meta["average_count"] == 2
    damaged = {k: v for k, v in tensors.items() if not k.startswith("average.")}
    atomic_save_safetensors(damaged, ckpt, meta)
    with pytest.raises(ErasureError, match="average.* is missing or of another shape: the file is damaged"):
        erase(build_tiny_model(), ["nudity"], config, resume_from=ckpt)
