"""OpenMP's wait policy on a CPU shared with other work: advice only, because no one setting wins everywhere.

PyTorch's CPU kernels run on OpenMP threads that spin for a while when they wait for each other. When another
process keeps a core busy, a spinning thread burns the time slice its partner needs, and every one of the
thousands of small parallel regions in a training step stalls. Measured on this 2-core machine, 2 threads,
`python -m erasure_core erase --model demo`:

- one core busy, 5 iterations plus the latent pool: more than 240 s with the default policy (more than 600 s in
  an earlier run), 32 s with OMP_WAIT_POLICY=PASSIVE, 45 s with GOMP_SPINCOUNT=1000, 27 s with one thread;
- idle, 40 iterations: 33-35 s with the default, 65-69 s with PASSIVE, 44-45 s with GOMP_SPINCOUNT=1000.

So passive waiting is the cure beside a busy core and costs twice the time on an idle one: we advise it and do not
impose it. It is read once, when the OpenMP runtime loads with torch, so it must be set before the process starts
(ComfyUI imports torch before any node pack).
"""

from __future__ import annotations

import os

VARIABLE = "OMP_WAIT_POLICY"
ADVICE = (f"if other work keeps a core busy, start ComfyUI with {VARIABLE}=PASSIVE: OpenMP's default busy-waiting "
          "made CPU erasure here more than 7x slower beside a busy core (passive waiting costs about 2x on an idle "
          "CPU, so it is not the default).")


def passive_waiting_advice() -> str | None:
    """The advice above when this process runs with OpenMP's default wait policy, else None."""
    return None if os.environ.get(VARIABLE) else ADVICE
