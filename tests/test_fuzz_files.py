"""Seeded fuzzing of the encoder loaders (tests/fuzz_files.py): 10 generated files per category, valid and
malformed, through read_encoder, load_robust_text_encoder, convert and `info`.

Asserted per case: a valid file loads bit-exactly; a malformed one raises ErasureError (`info` exits 2); nothing
hangs (30 s per case); no output or temporary file is left; no pickle payload runs. About 20 s on 2 cores.
"""

import pytest
import torch

from fuzz_files import CATEGORIES, CaseMaker, run_case

CASES_PER_CATEGORY = 10


@pytest.mark.parametrize("seed", [11])
def test_fuzzed_files_are_loaded_exactly_or_refused_clearly(tmp_path, seed):
    torch.set_num_threads(1)
    maker = CaseMaker(seed)
    outcomes = {category: {"accepted": 0, "refused": 0} for category in CATEGORIES}
    failures = []
    for i in range(CASES_PER_CATEGORY * len(CATEGORIES)):
        case = maker.make(i, tmp_path / f"case{i}")
        outcome, failure = run_case(case, tmp_path / f"out{i}", limit_s=30)
        if failure:
            failures.append(failure)
        if outcome in ("accepted", "refused"):
            outcomes[case.category][outcome] += 1
    assert not failures, "\n".join(failures)
    # Every category ran, and the generator made what it meant to: valid files accepted, malformed ones refused.
    assert outcomes["valid"] == {"accepted": CASES_PER_CATEGORY, "refused": 0}
    for category in ("truncate", "garbage", "dtype", "nonfinite", "shape", "missing", "extra", "mixed",
                     "config-file", "metadata", "foreign", "huge", "payload", "fs-object"):
        assert outcomes[category] == {"accepted": 0, "refused": CASES_PER_CATEGORY}, category
