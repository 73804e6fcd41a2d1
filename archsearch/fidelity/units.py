"""Running a fidelity study's units: in this process or ``workers`` processes, each finished unit appended to
``runs.jsonl`` as it ends, so that a study killed at any point resumes where it stopped."""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from .. import _interrupts
from ..options import ZERO_COST_NAMES
from ..spec import ArchSpec
from .plan import RUNS_FILE, FidelityPlan, done_ids, load_specs


def _run_one(plan_dict: dict, spec_dict: dict, unit: dict, accelerator: str) -> dict:
    """One unit in a worker process (returns a JSON-able record)."""
    import torch

    plan, spec = FidelityPlan.from_dict(plan_dict), ArchSpec.from_dict(spec_dict)
    torch.set_num_threads(max(1, int(os.environ.get("ARCHSEARCH_UNIT_THREADS", "1"))))
    start = time.perf_counter()
    if unit["kind"] == "train":
        from ..proxy.train import train_proxy

        train_cfg = dataclasses.replace(plan.training(unit["steps"], unit["seed"], unit["resolution"], unit["max_depth"],
                                                      unit.get("candidate")),
                                        accelerator=accelerator)
        r = train_proxy(spec, train_cfg)
        result = {"val_top1": r.val_top1, "val_loss": r.val_loss, "loss_sum": r.loss_sum, "train_loss": r.train_loss,
                  "history": r.history, "seconds": r.seconds, "trained_spec_hash": r.trained_spec_hash}
    elif unit["kind"] == "zero_cost":
        from ..measure.flops import count_complexity
        from ..proxy.zero_cost import score_proxy

        zc_cfg = plan.zero_cost(unit["seed"], unit.get("side"), unit.get("candidate"))
        result = {}
        for name in ZERO_COST_NAMES:
            s = score_proxy(spec, name, zc_cfg)
            result[name], result[f"{name}_seconds"] = s.score, s.seconds
        t0 = time.perf_counter()
        c = count_complexity(spec, plan.macs_resolution or unit.get("candidate") or plan.train.resolution)
        result.update(params=c.params, macs=c.macs, complexity_seconds=time.perf_counter() - t0)
    elif unit["kind"] == "cpu_cost":
        from ..proxy.train import train_proxy

        # CPU seconds per training step of this spec's scaled copy (the search's device), from two short
        # runs: the difference removes data preparation, start-up and validation.
        few, more = 2, 10
        cfg = plan.training(few, plan.signal_seed, unit["resolution"], unit["max_depth"], unit.get("candidate"))
        a = train_proxy(spec, dataclasses.replace(cfg, accelerator="cpu"))
        b = train_proxy(spec, dataclasses.replace(cfg, steps=more, val_every=more, accelerator="cpu"))
        per_step = max(0.0, (b.seconds - a.seconds) / (more - few))
        result = {"cpu_s_per_step": per_step, "cpu_fixed_s": max(0.0, a.seconds - few * per_step),
                  "threads": torch.get_num_threads()}
    else:  # pragma: no cover - plan_units makes only the kinds above
        raise ValueError(unit["kind"])
    return {**unit, "result": result, "wall_s": round(time.perf_counter() - start, 3), "device": _device(accelerator),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _device(accelerator: str) -> str:
    if accelerator == "cuda":
        import torch

        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{platform.processor() or platform.machine()}:{os.cpu_count()}cores"


def run_units(
    out: Path,
    units: Sequence[dict],
    *,
    accelerator: str = "cpu",
    workers: int = 1,
    data_root: Optional[str] = None,
    deadline_s: Optional[float] = None,
    progress: Optional[Callable[[dict], None]] = None,
) -> int:
    """Run the units not yet in ``runs.jsonl`` (``workers`` processes); append each as it finishes."""
    out = Path(out)
    plan, specs = load_specs(out)
    if data_root:
        plan = dataclasses.replace(plan, train=dataclasses.replace(plan.train, data_root=data_root))
    todo = [u for u in units if u["id"] not in done_ids(out)]
    path = out / RUNS_FILE
    if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with open(path, "a", encoding="utf-8") as f:  # a line cut short by a kill stays alone on its line
            f.write("\n")
    stop_at = None if deadline_s is None else time.monotonic() + deadline_s
    done = 0

    def record(rec: dict) -> None:
        nonlocal done
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        done += 1
        if progress:
            progress(rec)

    args = [(plan.to_dict(), specs[u["index"]].to_dict(), u, accelerator) for u in todo]
    if workers <= 1:
        for a in args:
            _interrupts.check()
            if stop_at is not None and time.monotonic() > stop_at:
                break
            record(_run_one(*a))
    else:
        _run_in_pool(args, workers, stop_at, record, progress)
    return done


#: Seconds between two looks at a pending interrupt or the deadline while units run in the pool.
_POLL_S = 0.5


def _exit_with_parent() -> None:
    """A pool worker's initializer: the worker leaves when the study's process is gone (``kill -9`` runs no
    handler of its own, and a worker would otherwise train its unit on for hours as an orphan)."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="archsearch-parent-watch").start()


def _stop_pool(pool) -> None:
    """Cancel the queued units and kill the processes running the others (a rerun resumes them). SIGKILL:
    Lightning catches SIGTERM in a training process and trains on."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.kill()


def _run_in_pool(args: List[tuple], workers: int, stop_at: Optional[float], record: Callable[[dict], None],
                 progress: Optional[Callable[[dict], None]]) -> None:
    """``_run_one(*a)`` for each of ``args`` in ``workers`` spawned processes, each result recorded as it
    finishes; at ``stop_at`` the units in flight are stopped too (not recorded: a rerun resumes them)."""
    import concurrent.futures as cf
    import multiprocessing

    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_exit_with_parent)
    pending = {pool.submit(_run_one, *a): a[2] for a in args}
    try:
        while pending:
            # Short waits with a safe point between: a deferred Ctrl-C or SIGTERM is taken within a second.
            finished, _ = cf.wait(pending, timeout=_POLL_S, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                unit = pending.pop(fut)
                try:
                    record(fut.result())
                except Exception as e:  # noqa: BLE001 - one failed unit is reported, the others go on
                    if progress:
                        progress({**unit, "error": f"{type(e).__name__}: {e}"})
            _interrupts.check()  # after recording what finished: a rerun need not redo it
            if stop_at is not None and time.monotonic() > stop_at:
                _stop_pool(pool)
                break
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the units in flight stop now, not when they finish
        _stop_pool(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
