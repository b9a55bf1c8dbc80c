"""The demo's two trainings: ESD and AdvUnlearn of one concept, side by side on a CPU with two cores or more.

Why side by side: on a CPU a second thread makes one of these trainings only 1.26-1.29x faster (session 16), so two
trainings on half the threads each get through more work than one after the other on all of them. Measured on an
idle 2-core machine (the demo preset on circle, 400 iterations each, latent pools already sampled): ESD then
AdvUnlearn on 2 threads took 46.6 + 195.0 = 241.6 s, the two side by side on one thread each 213.7 s.

Reproducible: a CPU kernel's result can depend on how many threads split it, so every thread count here is fixed
by the iteration, never by the clock. AdvUnlearn samples the latent pools (which ESD shares: one cache) and runs
its first iteration on every thread; it then trains on half of them beside ESD until it has made as many UNet
evaluations since that first iteration as ESD's whole run (the two go at about the same pace per evaluation:
in the measurement above ESD ended when AdvUnlearn had made 8,320 to its 8,000), waits there for ESD if it is
not done, and takes every thread back. A slower or faster ESD costs idle time, never a different encoder.

Threads, not processes: the trainings share the model and the pools, and PyTorch's kernels release the GIL.
Elsewhere (a GPU, one core) the two run one after the other, as before.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import torch

Progress = Callable[[str, int], None]  # (method, iterations done)


def train_methods(model, concept: str, configs: dict, progress: Progress | None = None) -> dict:
    """{method: (EraseResult, seconds)} for the configs {method: EraseConfig} (ESD first, then AdvUnlearn)."""
    cache: dict = {}  # the two sample the same latent pools: sample them once
    report = progress or (lambda _method, _done: None)
    half = side_by_side_threads(model.device)
    if half is None:
        return {method: _timed(model, concept, config, cache, _reporter(report, method))
                for method, config in configs.items()}
    return _side_by_side(model, concept, configs, cache, report, half)


def side_by_side_threads(device) -> int | None:
    """Threads each training gets side by side (equal halves: see `_SideBySide`), or None to train in turn."""
    threads = torch.get_num_threads()
    return threads // 2 if torch.device(device).type == "cpu" and threads >= 2 else None


def _reporter(report: Progress, method: str):
    return lambda step, _total, _logs: report(method, step)


def _timed(model, concept, config, cache, progress, should_cancel=None):
    """(EraseResult, seconds) of one training."""
    from ..training import erase

    started = time.perf_counter()
    result = erase(model, [concept], config, latent_cache=cache, progress=progress, should_cancel=should_cancel)
    return result, round(time.perf_counter() - started, 1)


def _side_by_side(model, concept, configs, cache, report, half: int) -> dict:
    (first, first_config), (second, second_config) = configs.items()  # ESD, then AdvUnlearn (the longer)
    run = _SideBySide(half, report, first, second, (model, concept, first_config, cache))
    try:
        run.done[second] = _timed(model, concept, second_config, cache, run.progress)
        run.worker.join()  # when AdvUnlearn made fewer evaluations than ESD: ESD may still be training
    except BaseException:
        run.stop.set()  # Ctrl-C or an error here: ESD stops at its next iteration, nothing is left running
        if run.worker.ident is not None:
            run.worker.join()
        raise
    finally:
        torch.set_num_threads(run.threads)
    run.raise_first_error()
    return {first: run.done[first], second: run.done[second]}


class _SideBySide:
    """ESD on a thread of its own, AdvUnlearn on the caller's. Equal halves, because PyTorch sets a new thread's
    count from one process-wide value when its first kernel runs: with unequal halves it could read the other's."""

    def __init__(self, half: int, report: Progress, first: str, second: str, first_job: tuple):
        self.threads, self.half = torch.get_num_threads(), half
        self.report, self.first, self.second = report, first, second
        self.first_iterations = first_job[2].iterations
        self.done: dict = {}
        self.error: BaseException | None = None
        self.stop, self.planned = threading.Event(), threading.Event()
        self.first_evaluations = 0  # what ESD's whole run will make, known after its first iteration
        self.start: int | None = None  # AdvUnlearn's evaluations when ESD started
        self.joined = False
        self.worker = threading.Thread(target=self.train_first, args=first_job, name=f"demo-{first}", daemon=True)

    def train_first(self, model, concept, config, cache):
        def progress(step, _total, logs):
            if step == 1:  # ESD's iterations all cost the same: its first says what the whole run will make
                self.first_evaluations = logs["unet_evaluations"] * self.first_iterations
                self.planned.set()
            self.report(self.first, step)

        try:
            self.done[self.first] = _timed(model, concept, config, cache, progress, self.stop.is_set)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread, which raises it
            self.error = err
        finally:
            self.planned.set()

    def progress(self, step: int, _total: int, logs: dict):
        """AdvUnlearn's progress: where, by its iteration count and evaluations, the threads change hands."""
        self.report(self.second, step)
        self.raise_first_error()
        if self.start is None:  # pools sampled, first iteration done on every thread: hand half to ESD
            self.start = logs["unet_evaluations"]
            torch.set_num_threads(self.half)
            self.worker.start()
            return
        if self.joined:
            return
        self.planned.wait()
        if logs["unet_evaluations"] - self.start >= self.first_evaluations:
            self.worker.join()
            self.joined = True
            torch.set_num_threads(self.threads)
            self.raise_first_error()

    def raise_first_error(self):
        if self.error is not None:
            raise self.error
