"""The ComfyUI nodes of Robust Erasure: thin V3 classes that translate ComfyUI objects to `erasure_core` calls.

Imported only by ComfyUI (through the repository's root `__init__.py`); never import it from `erasure_core`.
"""

from __future__ import annotations

import importlib
import logging

# A numbered API version, as ComfyUI's V3 migration guide advises (docs.comfy.org/custom-nodes/v3_migration):
# `comfy_api.latest` is the version still being developed (0.28.2 marks it STABLE = False) and may change without
# warning; v0_0_2 exists in every server we test (0.3.75 and 0.28.2) and only moves behind a new number.
from comfy_api.v0_0_2 import ComfyExtension, io

LOG = logging.getLogger("robust_erasure")

# One module per theme; each exports NODES. A module that fails to import (a missing optional dependency) is
# logged and skipped, so the rest of the pack still loads.
THEMES = ("demo", "encoders", "compare", "erase", "probe", "judge", "report")


def node_classes() -> list[type[io.ComfyNode]]:
    nodes: list[type[io.ComfyNode]] = []
    for theme in THEMES:
        try:
            module = importlib.import_module(f".{theme}", __name__)
        except ModuleNotFoundError as err:
            if err.name and err.name.endswith(f"nodes.{theme}"):
                continue  # theme not written yet
            LOG.exception("Robust Erasure: the %s nodes failed to import", theme)
            continue
        except Exception:  # noqa: BLE001 - one broken theme must not hide the others
            LOG.exception("Robust Erasure: the %s nodes failed to import", theme)
            continue
        nodes.extend(module.NODES)
    return nodes


def _cpu_wait_policy_hint():
    """ComfyUI loads torch before any pack, so the pack cannot choose OpenMP's wait policy itself; on a CPU it
    says once how to start ComfyUI so that training is not slowed many times over (see erasure_core/openmp.py)."""
    import comfy.model_management
    import torch

    from erasure_core.openmp import passive_waiting_advice

    advice = passive_waiting_advice()
    if advice and comfy.model_management.cpu_mode() and torch.get_num_threads() > 1:
        LOG.info("Robust Erasure: %s", advice)


class RobustErasureExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # Here rather than in on_load: 0.28.2 calls ComfyExtension.on_load, but 0.3.75 never does, and both
        # call get_node_list once at start-up.
        _cpu_wait_policy_hint()
        return node_classes()
