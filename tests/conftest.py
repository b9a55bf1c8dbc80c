"""Shared test set-up: fully offline, deterministic, small."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from erasure_core.models import build_tiny_model  # noqa: E402


@pytest.fixture
def tiny_model():
    """A fresh random tiny SD1-architecture model (real tokenizer), frozen, on the CPU."""
    torch.manual_seed(0)
    return build_tiny_model(seed=0)
