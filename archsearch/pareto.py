"""The Pareto front of a study: specs as YAML, a table (CSV, Markdown), a plot, dominance over references.

"FastViTHD-like" follows the FastVLM paper's design: RepMixer stages, then self-attention stages (at
least one of each, none interleaved), and an output stride of 64.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

import optuna
from optuna.trial import TrialState

from ._record import TrialRecord
from ._storage import sqlite_file
from .errors import ConfigError
from .spec import ArchSpec

__all__ = ["ParetoRow", "dominates", "dominates_minimised", "export_pareto", "is_fastvithd_like", "load_study", "pareto_rows"]


def is_fastvithd_like(spec: ArchSpec) -> bool:
    mixers = [s.token_mixer for s in spec.stages]
    k = mixers.count("attention")
    return 0 < k < len(mixers) and mixers[-k:] == ["attention"] * k and spec.output_stride == 64


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str], tolerance: Sequence[float] = ()) -> bool:
    """a is no worse than b in every objective and better in one (see :func:`dominates_minimised`)."""
    sign = [1 if d == "minimize" else -1 for d in directions]
    return dominates_minimised([s * x for s, x in zip(sign, a)], [s * y for s, y in zip(sign, b)], tolerance)


def dominates_minimised(a: Sequence[float], b: Sequence[float], tolerance: Sequence[float] = ()) -> bool:
    """Of two points to minimise: ``a`` no worse than ``b`` everywhere and better somewhere. Along an objective
    with a relative ``tolerance`` t, values within t of each other (of the larger magnitude) count as equal."""
    tol = [t * max(abs(x), abs(y)) if math.isfinite(x) and math.isfinite(y) else 0.0
           for t, x, y in zip(list(tolerance) + [0.0] * (len(a) - len(tolerance)), a, b)]
    return all(x <= y + e for x, y, e in zip(a, b, tol)) and any(x < y - e for x, y, e in zip(a, b, tol))


@dataclass
class ParetoRow:
    number: int
    spec: ArchSpec
    resolution: int
    values: List[float]
    fastvithd_like: bool
    dominates: List[str]


def load_study(name: str, storage: str) -> optuna.Study:
    """An existing study; a missing study, storage or database file is one line (nothing is created)."""
    db = sqlite_file(storage)
    if db is not None and not db.exists():  # reading must not create one
        raise ConfigError("storage", f"{storage}: no database file {db} (check the path; nothing was created)")
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        try:
            known = optuna.get_all_study_names(storage)
        except Exception:  # noqa: BLE001
            known = []
        raise ConfigError("STUDY", f"no study {name!r} in {storage}; studies there: {', '.join(known) or 'none'}") from None
    except Exception as e:  # noqa: BLE001
        raise ConfigError("storage", f"cannot open {storage}: {str(e).splitlines()[0][:200]}") from None


def require_complete(study: optuna.Study) -> None:
    """Refuse a front or a report of a study with no complete trial (before any output directory is touched)."""
    from .errors import NothingToReport

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        states: dict = {}
        for t in study.get_trials(deepcopy=False):
            states[t.state.name] = states.get(t.state.name, 0) + 1
        have = ", ".join(f"{n} {k.lower()}" for k, n in sorted(states.items())) or "no trials"
        raise NothingToReport(f"study {study.study_name!r} has no complete trial ({have}): nothing to write; "
                              "run or resume its search first")


def pareto_rows(study: optuna.Study) -> List[ParetoRow]:
    directions = [d.name.lower() for d in study.directions]
    refs = study.user_attrs.get("references", [])
    # Optuna's best_trials honours constraints: infeasible trials are never on the front.
    best = sorted(study.best_trials, key=lambda t: t.values)
    rows, seen = [], set()
    for t in best:
        r = TrialRecord.of(t)
        if r.spec is None or r.state != "COMPLETE" or r.resolution is None:
            continue
        # The same (spec, resolution) sampled twice is one design; keep its first trial.
        key = (r.spec_hash, r.resolution)
        if key in seen:
            continue
        seen.add(key)
        beaten = [ref["name"] for ref in refs if dominates(t.values, ref["values"], directions)]
        rows.append(ParetoRow(t.number, r.spec, r.resolution, list(t.values), is_fastvithd_like(r.spec), beaten))
    return rows


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.4e}"


def export_pareto(study: optuna.Study, out: Path, *, plot: bool = True) -> List[ParetoRow]:
    """Write the front to ``out`` (specs, pareto.csv, pareto.md, pareto.png), replacing any earlier export
    there: no earlier study's ``pareto_trial*.yaml`` stays beside the new ones. Other files are kept."""
    from ._outputs import md_text, prepare_output_dir, record_outputs, write_atomic

    out = prepare_output_dir(out, "pareto", overwrite=True)
    names = study.user_attrs.get("objectives") or [f"objective_{i}" for i in range(len(study.directions))]
    rows = pareto_rows(study)
    written: List[str] = []
    header = ["trial", "arch", "resolution", "output_stride", "spec_hash", *names, "fastvithd_like", "dominates_references",
              "file"]
    table = []
    for r in rows:
        file = f"pareto_trial{r.number:04d}_{r.spec.spec_hash}.yaml"
        write_atomic(out / file, f"# trial {r.number} of {md_text(study.study_name)}; resolution {r.resolution}\n"
                     + r.spec.to_yaml())
        written.append(file)
        table.append([r.number, r.spec.code, r.resolution, r.spec.output_stride, r.spec.spec_hash, *r.values,
                      r.fastvithd_like, ";".join(r.dominates), file])
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(table)
    write_atomic(out / "pareto.csv", buf.getvalue())
    written.append("pareto.csv")
    refs = study.user_attrs.get("references", [])
    md = [f"# Pareto front of {md_text(study.study_name)}\n",
          f"{len(rows)} Pareto-optimal trials of {len(study.get_trials(states=(TrialState.COMPLETE,)))} complete; "
          f"objectives: " + ", ".join(f"{n} ({d.name.lower()})" for n, d in zip(names, study.directions)) + ".\n",
          "| " + " | ".join(header[:-1]) + " |", "|" + " --- |" * (len(header) - 1)]
    for row in table:
        md.append("| " + " | ".join(_fmt(v) if isinstance(v, float) else str(v) for v in row[:-1]) + " |")
    if refs:
        md += ["", "References (evaluated with the same measurements):", "",
               "| reference | resolution | " + " | ".join(names) + " | feasible | in space |",
               "|" + " --- |" * (len(names) + 4)]
        for r in refs:
            md.append(f"| {r['name']} | {r['resolution']} | " + " | ".join(_fmt(v) for v in r["values"])
                      + f" | {r['feasible']} | {r['in_space']} |")
    write_atomic(out / "pareto.md", "\n".join(md) + "\n")
    written.append("pareto.md")
    if plot and len(names) >= 2:
        _plot(study, names, rows, refs, out / "pareto.png")
        written.append("pareto.png")
    record_outputs(out, "pareto", written)
    return rows


def _plot(study: optuna.Study, names: List[str], rows: List[ParetoRow], refs: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.values]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter([t.values[0] for t in done], [t.values[1] for t in done], s=12, c="0.7", label="trials")
    front = sorted(rows, key=lambda r: r.values[0])
    ax.plot([r.values[0] for r in front], [r.values[1] for r in front], "o-", c="C0", ms=5, label="Pareto front")
    hd = [r for r in front if r.fastvithd_like]
    if hd:
        ax.scatter([r.values[0] for r in hd], [r.values[1] for r in hd], s=60, facecolors="none", edgecolors="C3",
                   label="FastViTHD-like")
    for r in refs:
        ax.scatter([r["values"][0]], [r["values"][1]], marker="*", s=120, c="C1")
        ax.annotate(r["name"], (r["values"][0], r["values"][1]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{names[0]} ({study.directions[0].name.lower()})")
    ax.set_ylabel(f"{names[1]} ({study.directions[1].name.lower()})")
    ax.set_title(" ".join(study.study_name.split())[:80])
    ax.legend(fontsize=7)
    fig.tight_layout()
    from ._outputs import save_figure

    save_figure(fig, path)
    plt.close(fig)
