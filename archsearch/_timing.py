"""The timing protocol, free of torch: warm-up, timed rounds, interleaving with bursts.

One definition serves every backend: the local ones (torch CPU, CUDA, ONNX Runtime in
:mod:`archsearch.measure.latency`) and the device server (:mod:`archsearch.serve`), which times ONNX
models on a machine that has no torch. A backend hands in :class:`Timed` forwards; this module decides
how often and in which order they run.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from . import _interrupts

__all__ = ["MAX_BURST", "Timed", "interleave", "ort_forward", "round_robin", "rounds", "timed", "warm_up"]

#: B runs at most this many times after each A when A is much longer (see :func:`interleave`).
MAX_BURST = 5


@dataclass
class Timed:
    """A ready-to-time forward: ``run()`` does one inference; ``sync`` waits for the device."""

    run: Callable[[], object]
    sync: Callable[[], None] = lambda: None
    timer: Optional[Callable[[Callable[[], object]], float]] = None  # returns ms; default perf_counter


def timed(t: Timed) -> float:
    """One run of ``t`` in milliseconds."""
    if t.timer is not None:
        return t.timer(t.run)
    start = time.perf_counter_ns()
    t.run()
    t.sync()
    return (time.perf_counter_ns() - start) / 1e6


def warm_up(forwards: Sequence[Timed], warmup: int) -> None:
    for _ in range(warmup):
        _interrupts.check()
        for t in forwards:
            t.run()
    for t in forwards:
        t.sync()


def rounds(repeats: int, time_budget_s: Optional[float]) -> Iterator[int]:
    """``repeats`` timing rounds, fewer when ``time_budget_s`` has run out after a round (never fewer than 3)."""
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
    for i in range(repeats):
        _interrupts.check()  # a safe point every round: Ctrl-C stops thousands of repeats at once
        yield i
        if deadline is not None and i >= 2 and time.monotonic() > deadline:
            return


def round_robin(forwards: Sequence[Timed], warmup: int, repeats: int, time_budget_s: Optional[float] = None) -> List[List[float]]:
    """Warm up, then time each forward in turn (A B A B ... for two), ``repeats`` rounds or the budget."""
    warm_up(forwards, warmup)
    samples: List[List[float]] = [[] for _ in forwards]
    for _ in rounds(repeats, time_budget_s):
        for t, out in zip(forwards, samples):
            out.append(timed(t))
    return samples


def interleave(
    a: Timed, b: Timed, warmup: int, repeats: int, time_budget_s: Optional[float] = None, *, max_burst: int = MAX_BURST
) -> Tuple[List[float], List[float], List[float]]:
    """(A times, B times, A/B ratios) with A and B timed back to back.

    When A takes much longer than B (a whole model at 1024 px against the predictor's 30 ms probe), B runs
    in a burst after each A, of up to ``max_burst`` runs costing at most a quarter of A, and each pair's
    ratio divides by the burst's median: on a shared machine one B run caught by another tenant moved a
    pair's ratio by up to 50%. The burst is sized on the first pair, on B's fastest run so far, so that one
    slow first B cannot shrink it.
    """
    warm_up([a, b], warmup)
    ta: List[float] = []
    tb: List[float] = []
    ratios: List[float] = []
    burst: Optional[int] = None
    for _ in rounds(repeats, time_budget_s):
        x, ys = timed(a), [timed(b)]
        if burst is None:
            while len(ys) < min(max_burst, int(x / (4 * min(ys)))):
                ys.append(timed(b))
            burst = len(ys)
        else:
            ys += [timed(b) for _ in range(burst - 1)]
        ta.append(x)
        tb += ys
        ratios.append(x / statistics.median(ys))
    return ta, tb, ratios


def ort_forward(onnx: bytes, x: object, *, threads: int, provider: str = "CPUExecutionProvider") -> Timed:
    """A forward of an ONNX model (its bytes) with ONNX Runtime on input ``x`` (a numpy array), full graph
    optimisation, ``threads`` intra-op threads: the local ``onnxruntime`` backend and the device server."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(onnx, opts, providers=[provider])
    feed = {session.get_inputs()[0].name: x}
    return Timed(run=lambda: session.run(None, feed))
