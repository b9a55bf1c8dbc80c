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

Re-measured alone on an idle 2-core machine (load 0.13 before the run; `bench/openmp_policy.py --timeout 150`,
10 ESD iterations of the demo preset, 2 threads, one run each):

| policy                      | idle   | beside one busy process |
|-----------------------------|--------|-------------------------|
| default                     | 15.8 s | > 150 s (stopped)       |
| GOMP_SPINCOUNT=10000        | 15.9 s | 68.5 s                  |
| GOMP_SPINCOUNT=1000         | 27.5 s | 29.9 s                  |
| OMP_WAIT_POLICY=PASSIVE     | 34.9 s | 22.8 s                  |

No one policy wins both columns: a short spin keeps the idle speed (a waiting thread still catches the next
parallel region while it spins) but is still 4.3x slower beside a busy core; passive waiting is the fastest there
but 2.2x slower idle. So the command line (`python -m erasure_core`) and the benchmarks look at the machine
before torch loads: when other processes keep at least BUSY_CORES of a core busy over a quarter of a second (read
from /proc/stat; torch's threads use every core, so one busy process is enough to stall them) they choose
OMP_WAIT_POLICY=PASSIVE (the command line says so and why), otherwise GOMP_SPINCOUNT=10000; a user's own choice
(OMP_WAIT_POLICY or GOMP_SPINCOUNT set) always wins. Not the load average: it is a one-minute exponential
average, so for a minute or two after other work ends it still reads busy; the README's `scripts/setup.sh && ...
demo` runs the demo right after pip kept a core busy, and would have paid 2.2x for it. Where /proc/stat is
missing (macOS, Windows) the short spin is chosen. `bench/openmp_policy.py` measures the table again on a given
machine. GOMP_SPINCOUNT is read by GNU libgomp, which Linux PyTorch wheels use; other OpenMP runtimes ignore it
(LLVM's libomp has KMP_BLOCKTIME instead).

These variables are read once, when the OpenMP runtime loads with torch, so they must be set before torch is
imported; ComfyUI imports torch before any node pack, so the pack can only advise (`passive_waiting_advice`).
"""

from __future__ import annotations

import os
import sys
import time

VARIABLE = "OMP_WAIT_POLICY"
SPIN_VARIABLE = "GOMP_SPINCOUNT"
DEFAULT_SPINCOUNT = "10000"  # the measured choice on an idle CPU: see the table above
# Cores kept busy by other processes from which the machine counts as busy: one process spinning on a core reads
# about 1, an idle machine a few hundredths.
BUSY_CORES = 0.5
SAMPLE_SECONDS = 0.25
ADVICE = (f"if other work keeps a core busy, start ComfyUI with {VARIABLE}=PASSIVE (on an idle CPU, "
          f"{SPIN_VARIABLE}={DEFAULT_SPINCOUNT}): OpenMP's default busy-waiting made CPU erasure here more than 9x "
          "slower beside a busy core, passive waiting the fastest there (see erasure_core/openmp.py).")


def user_chose_policy(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return bool(environ.get(VARIABLE) or environ.get(SPIN_VARIABLE))


def passive_waiting_advice() -> str | None:
    """The advice above when this process runs with OpenMP's default wait policy, else None."""
    return None if user_chose_policy() else ADVICE


def _cpu_times(path: str) -> tuple[int, int]:
    """(busy, total) jiffies of all cores from the first line of /proc/stat."""
    with open(path, encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(fields) - fields[3] - fields[4], sum(fields)


def busy_cores(seconds: float = SAMPLE_SECONDS, path: str = "/proc/stat") -> float | None:
    """How many cores other processes kept busy over the next `seconds` (this one sleeps meanwhile), or None
    where /proc/stat is missing."""
    try:
        busy0, total0 = _cpu_times(path)
        time.sleep(seconds)
        busy1, total1 = _cpu_times(path)
    except (OSError, ValueError):
        return None
    if total1 <= total0:
        return None
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def choose_policy(busy: float | None) -> tuple[str, str]:
    """(variable, value) for a machine where other processes keep `busy` cores busy: passive waiting from
    BUSY_CORES up, else the short spin (the table above)."""
    if busy is not None and busy >= BUSY_CORES:
        return VARIABLE, "PASSIVE"
    return SPIN_VARIABLE, DEFAULT_SPINCOUNT


def apply_default_wait_policy(environ=None, busy: float | None = None) -> str | None:
    """Set the wait policy `choose_policy` picks for this machine (`busy`: cores other processes keep busy,
    default measured now) in `environ` (os.environ), unless the user chose a policy or torch is already imported
    (too late: the runtime has read its settings). Returns 'NAME=value (why)' for what was set, or None."""
    environ = os.environ if environ is None else environ
    if user_chose_policy(environ) or "torch" in sys.modules:
        return None
    busy = busy_cores() if busy is None else busy
    name, value = choose_policy(busy)
    environ[name] = value
    why = "other work is keeping the CPU busy" if name == VARIABLE else "the CPU is idle"
    shown = "unknown" if busy is None else f"{busy:.1f}"
    return f"{name}={value} ({why}: {shown} cores busy; set OMP_WAIT_POLICY or GOMP_SPINCOUNT to choose)"
