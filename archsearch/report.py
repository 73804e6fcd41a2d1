"""Reports: Markdown with tables and PNG plots, for an ablation directory or an Optuna study.

Ablations: tokens, MACs, latency (median with IQR bars) and TTFT (encoder + prefill) against resolution
per variant, and where the variants' order flips (the crossover). Studies: Pareto front with the
references marked, hypervolume history, and Optuna's parameter importance per objective.
"""
from __future__ import annotations

import csv
import json
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from .errors import ConfigError
from ._outputs import md_text, record_outputs, save_figure, write_atomic
from .pareto import export_pareto

__all__ = ["crossovers", "report_ablation", "report_study"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: Columns of results.csv that hold numbers (whatever else a row holds is text).
_NUMERIC = ("resolution", "tokens", "params", "macs", "stride", "latency_ms", "latency_iqr_ms", "latency_p10_ms",
            "predicted_latency_ms", "ttft_ms", "predicted_ttft_ms", "encoder_ms", "prefill_ms", "naswot", "synflow",
            "grad_norm", "snip", "train_top1", "train_loss_sum", "train_resolution", "train_steps", "train_seconds",
            "proxy_resolution")


def _number(text: str) -> float | int:
    v = float(text)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{text!r} is not a finite number")
    return int(v) if v.is_integer() and "." not in text and "e" not in text.lower() else v


def _read_rows(directory: Path) -> List[dict]:
    """results.csv, checked: every row has a variant and a positive resolution, every number parses; an
    error names the file, the row (as a spreadsheet counts it, header = 1) and the field."""
    path = directory / "results.csv"
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise ConfigError("TARGET", f"{path}: no such file (run `archsearch ablate` first)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError("TARGET", f"{path}: not a readable CSV file ({type(e).__name__})") from None
    if not rows:
        raise ConfigError("TARGET", f"{path}: no rows")
    for n, r in enumerate(rows, start=2):
        if None in r or any(v is None for v in r.values()):
            raise ConfigError("TARGET", f"{path}, row {n}: the number of fields does not match the header")
        for key in ("variant", "resolution"):
            if not (r.get(key) or "").strip():
                raise ConfigError("TARGET", f"{path}, row {n}, field {key}: missing")
        for k, v in list(r.items()):
            if v == "":
                continue
            if k in _NUMERIC:
                try:
                    r[k] = _number(v)
                except ValueError:
                    raise ConfigError("TARGET", f"{path}, row {n}, field {k}: {v[:40]!r} is not a number") from None
        if not isinstance(r["resolution"], int) or r["resolution"] < 1:
            raise ConfigError("TARGET", f"{path}, row {n}, field resolution: {r['resolution']!r} is not a positive integer")
    return rows


def _read_meta(directory: Path) -> dict:
    """ablation.json, checked: a mapping with a name and a list of variants that have names."""
    path = directory / "ablation.json"
    if not path.exists():
        raise ConfigError("TARGET", f"{directory} has no ablation.json (run `archsearch ablate` first)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("TARGET", f"{path}: cannot read it ({type(e).__name__})") from None
    except json.JSONDecodeError as e:
        raise ConfigError("TARGET", f"{path}: not JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise ConfigError("TARGET", f"{path}: expected an object with a 'name'")
    variants = meta.get("variants")
    if not isinstance(variants, list) or not all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in variants):
        raise ConfigError("TARGET", f"{path}, field variants: expected a list of objects with a 'name'")
    for key, kind in (("measure", dict), ("metrics", list), ("resolutions", list)):
        if key in meta and not isinstance(meta[key], kind):
            raise ConfigError("TARGET", f"{path}, field {key}: expected a{'n object' if kind is dict else ' list'}")
    for section in ("latency", "proxy", "train"):
        if section in meta.get("measure", {}) and not isinstance(meta["measure"][section], dict):
            raise ConfigError("TARGET", f"{path}, field measure.{section}: expected an object")
    return meta


def crossovers(rows: List[dict], metric: str) -> List[str]:
    """Sentences naming each pair of variants whose order in ``metric`` flips between resolutions."""
    by: Dict[str, Dict[int, float]] = {}
    for r in rows:
        if metric in r and r[metric] != "":
            by.setdefault(r["variant"], {})[int(r["resolution"])] = float(r[metric])
    out = []
    for a, b in combinations(by, 2):
        res = sorted(set(by[a]) & set(by[b]))
        signs = [(r, by[a][r] < by[b][r]) for r in res]
        for (r0, s0), (r1, s1) in zip(signs, signs[1:]):
            if s0 != s1:
                first, second = (a, b) if s1 else (b, a)
                out.append(f"{metric}: {first} becomes lower than {second} between {r0} and {r1} px")
    return out


def _line_plot(rows: List[dict], metric: str, ylabel: str, path: Path, *, err: Optional[str] = None, log: bool = False) -> bool:
    series: Dict[str, list] = {}
    for r in rows:
        if metric in r and r[metric] != "":
            series.setdefault(r["variant"], []).append((int(r["resolution"]), float(r[metric]),
                                                        float(r.get(err) or 0) if err else 0))
    if not series:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in series.items():
        pts.sort()
        xs, ys, es = zip(*pts)
        ax.errorbar(xs, ys, yerr=[e / 2 for e in es] if err else None, marker="o", capsize=3, label=name)
    ax.set_xlabel("input resolution (px)")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def _ttft_plot(rows: List[dict], path: Path) -> bool:
    # The breakdown needs both parts as numbers (a hand-edited table may have only the total).
    rows = [r for r in rows if all(isinstance(r.get(k), (int, float)) for k in ("ttft_ms", "encoder_ms", "prefill_ms"))]
    if not rows:
        return False
    plt = _plt()
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    resolutions = sorted({int(r["resolution"]) for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        pts = {int(r["resolution"]): r for r in rows if r["variant"] == v}
        xs = [j + i * width for j, res in enumerate(resolutions) if res in pts]
        enc = [float(pts[res]["encoder_ms"]) / 1000 for res in resolutions if res in pts]
        pre = [float(pts[res]["prefill_ms"]) / 1000 for res in resolutions if res in pts]
        ax.bar(xs, enc, width, color=f"C{i}", label=f"{v}: encoder")
        ax.bar(xs, pre, width, bottom=enc, color=f"C{i}", alpha=0.45, hatch="//", label=f"{v}: LLM prefill")
    ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(resolutions))], [str(r) for r in resolutions])
    ax.set_xlabel("input resolution (px)")
    ax.set_ylabel("time to first token (s)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def _fmt(v) -> str:
    return f"{v:,.2f}" if isinstance(v, float) else md_text(v)


#: Accuracy signals an ablation can carry: (column, what it is, higher is better?).
_ACCURACY = (("naswot", "naswot at initialisation", True), ("synflow", "synflow at initialisation", True),
             ("train_top1", "validation top-1 after training", True),
             ("train_loss_sum", "sum of training losses (lower trains faster)", False))


def _accuracy_section(rows: List[dict], measure: dict) -> List[str]:
    """The accuracy signals: one row per variant where they do not depend on the measured resolution (a
    fixed input side, as on Fashion-MNIST), else one row per (variant, resolution) with the side trained (a
    side rule, as on ``glyphs``: the accuracy axis then sees resolution and downsampling)."""
    cols = [(c, what, up) for c, what, up in _ACCURACY if any(c in r for r in rows)]
    if not cols:
        return []
    p, t = measure.get("proxy", {}), measure.get("train", {})

    def side(cfg: dict) -> str:
        scale = cfg.get("resolution_scale")
        if scale is None and cfg.get("data") == "glyphs":
            scale = 0.125  # the data set's rule when the file left it out (archsearch.options.DATA_SIDE_SCALE)
        return f"{scale} x the resolution" if scale else f"{cfg.get('resolution')} px"

    setting = []
    if any(c in ("naswot", "synflow") for c, _, _ in cols):
        setting.append(f"zero-cost proxies on a copy with widths x{p.get('width_mult')}, depth cap {p.get('max_depth')}, "
                       f"one batch of {p.get('batch_size')} `{md_text(p.get('data'))}` images at {side(p)} (seed "
                       f"{p.get('seed')})")
    if any(c.startswith("train_") for c, _, _ in cols):
        setting.append(f"training of a copy with widths x{t.get('width_mult')}, depth cap {t.get('max_depth')} on "
                       f"`{md_text(t.get('data'))}` at {side(t)} for {t.get('steps')} steps (batch {t.get('batch_size')}, "
                       f"seed {t.get('seed')})")
    by_variant: Dict[str, set] = {}
    for r in rows:
        by_variant.setdefault(r["variant"], set()).add(tuple(r.get(c, "") for c, _, _ in cols))
    per_resolution = any(len(v) > 1 for v in by_variant.values())
    head = ["variant", "resolution", "input side"] if per_resolution else ["variant"]
    md = ["", "## Accuracy signals", "",
          ("Per variant and resolution (the input side follows the resolution)" if per_resolution else
           "Per variant (they do not depend on the measured resolution)") + ": " + "; ".join(setting) + ". Read "
          "differences smaller than the seed-to-seed spread of the fidelity study on the same data as ties.", "",
          "| " + " | ".join(head) + " | " + " | ".join(f"{c} ({'higher' if up else 'lower'} is better)" for c, _, up in cols)
          + " |", "|" + " --- |" * len(head) + " ---: |" * len(cols)]
    seen = set()
    for r in rows:
        key = (r["variant"], r["resolution"]) if per_resolution else r["variant"]
        if key in seen:
            continue
        seen.add(key)
        lead = [md_text(r["variant"])] + ([str(r["resolution"]), _fmt(r.get("train_resolution", r.get("proxy_resolution", "")))]
                                          if per_resolution else [])
        md.append("| " + " | ".join(lead) + " | " + " | ".join(_fmt(r.get(c, "")) for c, _, _ in cols) + " |")
    return md


def report_ablation(directory: Path, out: Path) -> Path:
    directory, out = Path(directory), Path(out)
    meta = _read_meta(directory)
    rows = _read_rows(directory)
    for r in rows:
        if isinstance(r.get("macs"), (int, float)):
            r["gmacs"] = r["macs"] / 1e9
        if isinstance(r.get("params"), (int, float)):
            r["mparams"] = r["params"] / 1e6
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    for metric, label, err, log, name in [
        ("tokens", "visual tokens", None, True, "tokens.png"),
        ("gmacs", "GMACs", None, True, "macs.png"),
        ("latency_ms", "encoder latency, ms (median, IQR bars)", "latency_iqr_ms", True, "latency.png"),
        ("ttft_ms", "TTFT, ms", None, True, "ttft.png"),
    ]:
        if _line_plot(rows, metric, label, out / name, err=err, log=log):
            plots.append(name)
    if _ttft_plot(rows, out / "ttft_breakdown.png"):
        plots.append("ttft_breakdown.png")
    cols = [c for c in ("variant", "resolution", "mparams", "tokens", "gmacs", "latency_ms", "latency_iqr_ms", "encoder_ms",
                        "prefill_ms", "ttft_ms") if any(c in r for r in rows)]
    md = [f"# Ablation {md_text(meta['name'])}\n", md_text(meta.get("description", "")), "",
          f"Regenerate: `{meta.get('command') or 'archsearch ablate ...'}` then `archsearch report {directory} --out {out}`",
          f"(measured {meta.get('date', '')}, {meta.get('seconds', '?')} s).", "", "## Variants", "",
          "| variant | arch | description |", "| --- | --- | --- |"]
    md += [f"| {md_text(v['name'])} | {md_text(v.get('arch', ''))} | {md_text(v.get('description', ''))} |"
           for v in meta["variants"]]
    m = meta.get("measure", {})
    lat = m.get("latency", m)
    md += ["", "## Results", "",
           f"Latency: median of {lat.get('repeats')} runs after {lat.get('warmup')} warm-up, "
           f"{rows[0].get('latency_backend', '')}, "
           f"{rows[0].get('latency_threads', '')} threads, reparameterized, denormals flushed, batch 1 (IQR: interquartile "
           f"range)."
           if "latency_ms" in rows[0] else "",
           f"TTFT: encoder latency + {rows[0].get('llm', '')} prefill of the visual tokens + {rows[0].get('prompt_tokens', '')} "
           "prompt tokens, from the per-device fit of measured prefill times." if "ttft_ms" in rows[0] else "", "",
           "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in rows:
        md.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    md += _accuracy_section(rows, m)
    extrapolated = [f"{r['variant']} at {r['resolution']} px" for r in rows if str(r.get("prefill_extrapolated")) == "True"]
    if extrapolated:
        md += ["", "Prefill extrapolated beyond the largest fitted token count (2048) for: " + ", ".join(extrapolated) + "."]
    flips = [s for metric in ("latency_ms", "ttft_ms") for s in crossovers(rows, metric)]
    md += ["", "## Crossovers", ""] + ([f"- {s}" for s in flips] or ["- none within the measured resolutions"])
    md += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    path = out / "report.md"
    write_atomic(path, "\n".join(md) + "\n")
    record_outputs(out, "report", ["report.md", *plots])
    return path


def _objective_target(i: int, sign: float) -> Callable[[FrozenTrial], float]:
    """Objective ``i`` as a value to explain, flipped for maximised objectives."""
    return lambda t: sign * t.values[i]


def report_study(study: optuna.Study, out: Path) -> Path:
    out = Path(out)
    rows = export_pareto(study, out)
    names = study.user_attrs.get("objectives") or [f"objective_{i}" for i in range(len(study.directions))]
    done = study.get_trials(states=(TrialState.COMPLETE,))
    plt = _plt()
    plots = ["pareto.png"] if (out / "pareto.png").exists() else []
    if len(study.directions) > 1 and done:
        from optuna.visualization.matplotlib import plot_hypervolume_history

        signs = [1 if d == optuna.study.StudyDirection.MINIMIZE else -1 for d in study.directions]
        worst = [max(s * t.values[i] for t in done) for i, s in enumerate(signs)]
        best = [min(s * t.values[i] for t in done) for i, s in enumerate(signs)]
        ref = [s * (w + 0.1 * (abs(w - b) or 1.0)) for s, w, b in zip(signs, worst, best)]
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax = plot_hypervolume_history(study, ref)
        hv_fig: Any = ax.figure
        hv_fig.set_size_inches(6, 4)
        hv_fig.tight_layout()
        save_figure(hv_fig, out / "hypervolume.png")
        plt.close(hv_fig)
        plots.append("hypervolume.png")
    importance_md = []
    if len(done) >= 4:
        fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4), squeeze=False)
        for i, name in enumerate(names):
            # Optuna's default evaluator (PED-ANOVA) explains low target values: flip maximised objectives.
            sign = 1.0 if study.directions[i] == optuna.study.StudyDirection.MINIMIZE else -1.0
            try:
                imp = optuna.importance.get_param_importances(study, target=_objective_target(i, sign))
            except (RuntimeError, ValueError) as e:
                importance_md.append(f"- {name}: not computable ({e})")
                continue
            top = list(imp.items())[:8]
            axes[0][i].barh([k for k, _ in top][::-1], [v for _, v in top][::-1])
            axes[0][i].set_title(f"importance for {name}", fontsize=9)
            importance_md.append(f"- {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in top[:5]))
        fig.tight_layout()
        save_figure(fig, out / "importance.png")
        plt.close(fig)
        plots.append("importance.png")
    states = {s.name.lower(): len(study.get_trials(states=(s,))) for s in TrialState if study.get_trials(states=(s,))}
    md = [f"# Study {md_text(study.study_name)}\n",
          "Trials: " + ", ".join(f"{v} {k}" for k, v in states.items()) + ".",
          "Objectives: " + ", ".join(f"{n} ({d.name.lower()})" for n, d in zip(names, study.directions)) + ".", "",
          f"{len(rows)} Pareto-optimal designs, {sum(r.fastvithd_like for r in rows)} of them FastViTHD-like; "
          "the table is in [pareto.md](pareto.md), the specs beside it.", "",
          "## Parameter importance (Optuna's default evaluator)", ""] + (importance_md or ["- too few trials"])
    md += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    path = out / "report.md"
    write_atomic(path, "\n".join(md) + "\n")
    record_outputs(out, "report", ["report.md", *[p for p in plots if p != "pareto.png"]])
    return path
