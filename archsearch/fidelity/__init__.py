"""How well does each cheap accuracy signal rank architectures the way long training does?

A fidelity study draws ``n`` specs (plus ``n_holdout`` more, kept apart) from a space and, on real data:

* **reference**: validation top-1 after ``long_steps`` of training, with two seeds; its mean is the
  target, and Kendall tau between the two seeds is the **noise ceiling** (no signal can rank better than
  training itself agrees with itself);
* **signals**, all from a third seed (independent of both reference runs): the zero-cost proxies on one
  real batch, params and MACs of the full spec, ``train_top1`` after each short budget and
  ``train_loss_sum`` (the sum of training losses, Ru et al. 2021) over each short budget, and a rank
  ensemble fixed before looking at the data;
* **scaling subset**: the first ``n_scaling`` specs trained with two seeds at every (resolution, depth
  cap) of ``scalings``, to see which scaled copy can rank the space at all.

Work is split into units (one training, or one spec's zero-cost scores). Each finished unit is appended
to ``runs.jsonl`` in the output directory as it ends, so a study killed at any point resumes where it
stopped, and units can run on another machine (``--accelerator cuda --workers 8``) and be merged.
:func:`analyse` turns ``runs.jsonl`` into ``fidelity.json``, ``report.md`` and ``tau_vs_cost.png``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..errors import ConfigError
from ..progress import UnitEvent
from .plan import RUNS_FILE, SPECS_FILE, FidelityPlan, done_ids, load_resolutions, load_specs, plan_units, write_specs
from .report import plot_tau_vs_cost, write_report
from .stats import analyse
from .units import run_units

__all__ = ["RUNS_FILE", "SPECS_FILE", "FidelityPlan", "analyse", "done_ids", "load_resolutions", "load_specs",
           "plan_units", "plot_tau_vs_cost", "run_study", "run_units", "write_report", "write_specs"]


def _check_study_dir(out: Path) -> None:
    """``out`` holds this study (resume), or nothing yet; never a file, a system path, or a user's own files."""
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", f"{out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / SPECS_FILE).exists():
        present = sorted(p.name for p in out.iterdir())[:3]
        raise ConfigError("--out", f"{out} holds files that are no fidelity study's ({', '.join(present)}); "
                                   "choose an empty directory (a study's own directory resumes it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError("--out", f"cannot write in {out}: {e.strerror or type(e).__name__}") from None


def run_study(
    plan: FidelityPlan,
    out: Path,
    *,
    command: str = "",
    kinds: Sequence[str] = ("train", "zero_cost", "cpu_cost"),
    accelerator: str = "cpu",
    workers: int = 1,
    data_root: Optional[str] = None,
    deadline_s: Optional[float] = None,
    analyse_only: bool = False,
    progress: Optional[Callable[[UnitEvent], None]] = None,
) -> dict:
    """Run the study's missing units of ``kinds`` (resuming ``out``), then analyse and write the report.

    ``progress(event)`` is called after every finished (or failed: ``event.error``) unit.
    """
    out = Path(out)
    if not analyse_only:
        _check_study_dir(out)
        specs = write_specs(plan, out)
        resolutions = load_resolutions(out)
        units = plan_units(plan, specs, kinds=kinds, resolutions=None if resolutions[0] is None else resolutions)
        total = len(units) - len(done_ids(out) & {u["id"] for u in units})
        start, done = time.perf_counter(), [0]

        def report(rec: dict) -> None:
            done[0] += 1
            if progress:
                progress(UnitEvent(done[0], total, rec["id"], time.perf_counter() - start, rec.get("error", "")))

        run_units(out, units, accelerator=accelerator, workers=workers, data_root=data_root, deadline_s=deadline_s,
                  progress=report)
    if not (out / RUNS_FILE).exists():
        raise ConfigError("--out", f"{out / RUNS_FILE}: no finished units to analyse")
    result = analyse(out, command=command)
    result["report"] = str(write_report(result, out))
    return result
