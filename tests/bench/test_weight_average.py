"""bench/weight_average.py: the mean of encoders' tensors, and bad input refused before any work."""

import copy

import pytest
import torch

from erasure_core.errors import ErasureError


def test_the_average_holds_each_tensors_mean_and_leaves_the_inputs(tiny_model, bench_script):
    average = bench_script("weight_average").average_encoders
    a, b = copy.deepcopy(tiny_model.text_encoder), copy.deepcopy(tiny_model.text_encoder)
    key = next(k for k, v in a.state_dict().items() if v.is_floating_point() and v.dim() == 2)
    with torch.no_grad():
        a.state_dict()[key].add_(1.0)
        b.state_dict()[key].sub_(3.0)
    mean = average([a, b]).state_dict()
    original = tiny_model.text_encoder.state_dict()
    torch.testing.assert_close(mean[key], original[key] - 1.0)
    other = next(k for k in original if k != key and original[k].is_floating_point())
    torch.testing.assert_close(mean[other], original[other])
    torch.testing.assert_close(a.state_dict()[key], original[key] + 1.0)  # the inputs are not changed


def test_encoders_of_other_shapes_are_refused(tiny_model, bench_script):
    average = bench_script("weight_average").average_encoders
    a = copy.deepcopy(tiny_model.text_encoder)
    b = torch.nn.Linear(2, 2)  # other tensors than an encoder's
    with pytest.raises(ErasureError, match="do not have the same tensors"):
        average([a, b])


def test_bad_input_is_refused_and_nothing_written(tmp_path, bench_script):
    main = bench_script("weight_average").main
    out = tmp_path / "avg.json"
    with pytest.raises(SystemExit, match="no encoder file at"):
        main(["--concept", "square", "--out", str(out), str(tmp_path / "missing.safetensors")])
    with pytest.raises(SystemExit, match="not a value of the demo"):
        main(["--concept", "squares", "--out", str(out), str(tmp_path / "missing.safetensors")])
    with pytest.raises(SystemExit, match="unknown probe"):
        main(["--concept", "square", "--probes", "nope", "--out", str(out), str(tmp_path / "x.safetensors")])
    (tmp_path / "blocker").write_text("")
    with pytest.raises(SystemExit, match="is a file, not a folder"):
        main(["--concept", "square", "--out", str(tmp_path / "blocker" / "avg.json"), str(tmp_path / "blocker")])
    assert not out.exists()
    out.write_text("{}")
    with pytest.raises(SystemExit, match="exists: choose another --out"):
        main(["--concept", "square", "--out", str(out), str(tmp_path / "x.safetensors")])
    assert out.read_text() == "{}"
