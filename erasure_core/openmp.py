"""OpenMP's wait policy on a CPU shared with other work.

PyTorch's CPU kernels run on OpenMP threads that, by default, spin while they wait for each other. When another
process keeps one of the cores busy, a spinning thread burns the time slice its partner needs, and every one of
the thousands of small parallel regions in a training step waits a whole scheduler slice. Measured on a 2-core
machine with one core busy (5 demo-preset erase iterations plus the latent pool): 27 s with one thread, 32 s with
two passive threads, and more than 600 s with two spinning threads. Passive waiting is set through the
environment and is read once, when the OpenMP runtime loads with torch, so entry points call
`prefer_passive_waiting()` before they import torch. A value the user set is kept.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "OMP_WAIT_POLICY"
ADVICE = (f"On a CPU shared with other work, set {VARIABLE}=PASSIVE before starting the process: OpenMP's default "
          "busy-waiting can make CPU training many times slower there.")


def prefer_passive_waiting() -> bool:
    """Ask OpenMP to sleep instead of spin while waiting, unless the user chose; True if the setting can still
    take effect (torch not imported yet)."""
    os.environ.setdefault(VARIABLE, "PASSIVE")
    return "torch" not in sys.modules


def passive_waiting_advice() -> str | None:
    """The advice above when this process runs with OpenMP's default wait policy, else None."""
    return None if os.environ.get(VARIABLE) else ADVICE
