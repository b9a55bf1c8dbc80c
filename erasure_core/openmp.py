"""OpenMP's wait policy on a CPU shared with other work, and the default the command line sets.

PyTorch's CPU kernels run on OpenMP threads that spin for a while when they wait for each other. When another
process keeps a core busy, a spinning thread burns the time slice its partner needs, and every one of the
thousands of small parallel regions in a training step stalls. Measured on a 2-core machine, 2 threads, the
demo's ESD stage:

| policy                      | idle      | beside one busy process |
|-----------------------------|-----------|-------------------------|
| default (spin ~300,000)     | 33-35 s   | > 600 s (1,073 s once)  |
| GOMP_SPINCOUNT=10000        | 31 s      | 132 s                   |
| OMP_WAIT_POLICY=PASSIVE     | 65-69 s   | (32 s for a 5-iteration erase where the default took > 240 s) |

On a heavily loaded machine (this shared one, load average 5-10 on 2 cores: `bench/openmp_policy.py --model tiny
--iterations 1 --conditions idle`, one run each) the default took > 200 s, GOMP_SPINCOUNT=10000 78 s and PASSIVE
30 s: the more the CPU is oversubscribed, the more passive waiting wins.

A short spin keeps the idle speed (a waiting thread still catches the next parallel region while it spins) and
stops most of the stalls beside a busy core; passive waiting is the cure there but costs 2x on an idle CPU. So
the command line (`python -m erasure_core`) and the benchmarks start with GOMP_SPINCOUNT=10000 unless the user
chose a policy (OMP_WAIT_POLICY or GOMP_SPINCOUNT set: theirs wins). `bench/openmp_policy.py` measures the
table again on a given machine. GOMP_SPINCOUNT is read by GNU libgomp, which Linux PyTorch wheels use; other
OpenMP runtimes ignore it (LLVM's libomp has KMP_BLOCKTIME instead).

These variables are read once, when the OpenMP runtime loads with torch, so they must be set before torch is
imported; ComfyUI imports torch before any node pack, so the pack can only advise (`passive_waiting_advice`).
"""

from __future__ import annotations

import os
import sys

VARIABLE = "OMP_WAIT_POLICY"
SPIN_VARIABLE = "GOMP_SPINCOUNT"
DEFAULT_SPINCOUNT = "10000"  # the measured choice: see the table above
ADVICE = (f"if other work keeps a core busy, start ComfyUI with {SPIN_VARIABLE}={DEFAULT_SPINCOUNT} (or "
          f"{VARIABLE}=PASSIVE): OpenMP's default busy-waiting made CPU erasure here more than 7x slower beside a "
          "busy core; a short spin keeps the idle speed.")


def user_chose_policy(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return bool(environ.get(VARIABLE) or environ.get(SPIN_VARIABLE))


def passive_waiting_advice() -> str | None:
    """The advice above when this process runs with OpenMP's default wait policy, else None."""
    return None if user_chose_policy() else ADVICE


def apply_default_wait_policy(environ=None) -> str | None:
    """Set GOMP_SPINCOUNT=10000 in `environ` (os.environ) unless the user chose a policy or torch is already
    imported (too late: the runtime has read its settings). Returns the 'NAME=value' set, or None."""
    environ = os.environ if environ is None else environ
    if user_chose_policy(environ) or "torch" in sys.modules:
        return None
    environ[SPIN_VARIABLE] = DEFAULT_SPINCOUNT
    return f"{SPIN_VARIABLE}={DEFAULT_SPINCOUNT}"
