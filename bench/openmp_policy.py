"""Which OpenMP wait policy should the command line default to? Time one fixed workload per policy, on an idle
CPU and beside one busy process, and print the table (erasure_core/openmp.py holds the choice and why).

    python bench/openmp_policy.py                    # default workload: 10 ESD iterations on the demo model
    python bench/openmp_policy.py --iterations 5 --repeats 3 --json out/openmp.json

Each (policy, condition) runs in a fresh process, because OpenMP reads its settings once, when torch loads it.
"Busy" starts one pure-Python spinning process beside the workload (a laptop doing other work); "idle" starts
none, and is only idle if nothing else runs on the machine: the script prints the load average before it
starts so a reader can tell. The workload uses every core (torch's default thread count) unless --threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# name -> environment; "default" is OpenMP's own spin (libgomp: ~300,000 spins, or ~30 billion with
# OMP_WAIT_POLICY=ACTIVE)
POLICIES = {
    "default": {},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
}
OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

WORKLOAD = """
import sys, time
sys.path.insert(0, {root!r})
import torch
if {threads}:
    torch.set_num_threads({threads})
from erasure_core.loading import load_model
from erasure_core.training import EraseConfig, erase
model = load_model({model!r})
config = EraseConfig.from_preset("demo", method="esd", seed=0, iterations={iterations})
start = time.perf_counter()
erase(model, ["circle"], config)
print("SECONDS", time.perf_counter() - start, "THREADS", torch.get_num_threads())
"""


def run_once(env_extra: dict, busy: bool, iterations: int, threads: int, timeout: float,
             model: str = "demo") -> float | None:
    """Seconds the workload took (None if it ran past `timeout`)."""
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_VARIABLES}
    env.update(env_extra, HF_HUB_OFFLINE="1")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        code = WORKLOAD.format(root=str(ROOT), iterations=iterations, threads=threads, model=model)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
        if out.returncode:
            raise RuntimeError(f"workload failed: {out.stderr[-2000:]}")
        return float(out.stdout.split("SECONDS")[1].split()[0])
    except subprocess.TimeoutExpired:
        return None
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=10, help="ESD iterations of the workload")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a run counts as '> timeout'")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--conditions", default="idle,busy", help="idle, busy or both")
    parser.add_argument("--model", default="demo", help="demo (the measurement) or tiny (to try the script)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"{os.cpu_count()} CPUs; load average before the run: {load}; workload: {args.iterations} ESD iterations "
          f"on the {args.model} model", flush=True)
    conditions = [c for c in ("idle", "busy") if c in args.conditions.split(",")]
    rows = {}
    for name in args.policies.split(","):
        rows[name] = {}
        for condition in conditions:
            times = [run_once(POLICIES[name], condition == "busy", args.iterations, args.threads, args.timeout,
                              args.model) for _ in range(args.repeats)]
            done = [t for t in times if t is not None]
            rows[name][condition] = {"seconds": times, "median": statistics.median(done) if done else None}
            shown = "-" if not done else f"{statistics.median(done):.1f}"
            print(f"{name:26s} {condition}: {shown} s  (runs: {times})", flush=True)
    heads = {"idle": "idle (s)", "busy": "beside a busy process (s)"}
    print("\n| policy | " + " | ".join(heads[c] for c in conditions) + " |")
    print("|---" * (len(conditions) + 1) + "|")
    for name, row in rows.items():
        cell = lambda c: f"> {args.timeout:g}" if row[c]["median"] is None else f"{row[c]['median']:.1f}"  # noqa: E731
        print(f"| {name} | " + " | ".join(cell(c) for c in conditions) + " |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"load_before": load, "iterations": args.iterations, "model": args.model,
                                               "time": time.time(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
