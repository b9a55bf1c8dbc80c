"""Shared set-up for the bench scripts' tests: the scripts live in bench/, not in a package."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench_script():
    """load(name) -> the module bench/NAME.py, with bench/ on sys.path for the modules it imports by name."""
    def load(name: str):
        sys.path.insert(0, str(BENCH))
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
