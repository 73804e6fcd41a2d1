"""``geometry.json`` and ``report.md`` of the geometry study, from its ``runs.jsonl`` alone (see proxy_geometry.py)."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Dict, List

from proxy_geometry import CHANCE, CPU_GEOMETRIES, REFERENCE, SPECS, VERDICTS, done

from archsearch.fidelity.stats import _bootstrap_tau, _kendall
from archsearch.geometry import GEOMETRIES

_FULL = {"description": "the encoder itself at its own resolution (GPU tier): widths x1, no depth cap, strides kept",
         "input_side_rule": "1 x resolution"}


def _geometries(runs: List[dict]) -> dict:
    """{name: {description, input side rule, seconds per step}} for every geometry with a finished unit."""
    out = {}
    for name in dict.fromkeys([*CPU_GEOMETRIES, *(r["geometry"] for r in runs)]):
        mine = [r for r in runs if r["geometry"] == name]
        if not mine and name not in GEOMETRIES:
            continue
        if name in GEOMETRIES:
            g = GEOMETRIES[name]
            desc = {"description": g.description, "strides": g.strides,
                    "input_side_rule": f"{g.side_factor / 8:g} x resolution (glyphs' CPU side rule 1/8 x {g.side_factor:g})"}
        else:
            desc = dict(_FULL)
        steps = [r["s_per_step"] for r in mine]
        out[name] = {**desc, "seconds_per_step": round(statistics.median(steps), 3) if steps else None,
                     "seconds_per_step_by_spec": {r["label"]: r["s_per_step"] for r in mine
                                                  if r["seed"] == min(x["seed"] for x in mine)},
                     "device": sorted({r["device"] for r in mine}), "units": len(mine)}
    return out


def _specs(runs: List[dict]) -> List[dict]:
    rows = []
    for label, variant, res in SPECS:
        mine = sorted((r for r in runs if r["label"] == label), key=lambda r: (r["geometry"], r["seed"]))
        if not mine:
            continue
        top1: Dict[str, List[float]] = {}
        grids: Dict[str, list] = {}
        for r in mine:
            top1.setdefault(r["geometry"], []).append(r["val_top1"])
            grids[r["geometry"]] = r["proxy_grid"]
        first = mine[0]
        rows.append({"label": label, "spec_hash": first["spec_hash"], "arch": first["arch"], "variant": variant,
                     "stride": first["stride"], "resolution": res, "tokens": first["tokens"],
                     "deployed_grid": first["deployed_grid"], "proxy_grid": grids, "top1": top1,
                     "seeds": {g: [r["seed"] for r in mine if r["geometry"] == g] for g in top1}})
    return rows


def _mean(v) -> float:
    return statistics.fmean(v)


def _rank_consistency(specs: List[dict], reference: str) -> dict:
    """Each geometry's Kendall tau against the reference (means over seeds, specs both have), bootstrap 95%."""
    out = {}
    for g in sorted({g for s in specs for g in s["top1"]} - {reference}):
        both = [s for s in specs if s["top1"].get(g) and s["top1"].get(reference)]
        if len(both) < 4:
            out[g] = {"tau": None, "tau_ci": None, "n_specs": len(both), "note": "fewer than 4 specs with both"}
            continue
        x, y = [_mean(s["top1"][g]) for s in both], [_mean(s["top1"][reference]) for s in both]
        out[g] = {"tau": round(_kendall(x, y), 3), "tau_ci": _bootstrap_tau(x, y), "n_specs": len(both)}
    return out


def _ceiling(specs: List[dict], reference: str) -> dict:
    """The reference's own seed-vs-seed tau: how far any cheaper geometry could get."""
    two = [s for s in specs if len(s["top1"].get(reference, [])) >= 2]
    if len(two) < 4:
        return {"tau": None, "n_specs": len(two)}
    x, y = [s["top1"][reference][0] for s in two], [s["top1"][reference][1] for s in two]
    return {"tau": round(_kendall(x, y), 3), "tau_ci": _bootstrap_tau(x, y), "n_specs": len(two)}


def _verdicts(specs: List[dict]) -> List[dict]:
    by = {s["label"]: s for s in specs}
    out = []
    for question, a, b in VERDICTS:
        row: dict = {"question": question, "stride64": a, "stride32": b, "by_geometry": {}}
        for g in sorted({g for s in (by.get(a), by.get(b)) if s for g in s["top1"]}):
            va, vb = by.get(a, {}).get("top1", {}).get(g), by.get(b, {}).get("top1", {}).get(g)
            if not va or not vb:
                continue
            d = _mean(va) - _mean(vb)
            spread = max(max(va) - min(va), max(vb) - min(vb))
            verdict = "stride 64 ahead" if d > spread else "stride 32 ahead" if -d > spread else "within the seed spread"
            row["by_geometry"][g] = {"stride64": va, "stride32": vb, "difference": round(d, 3), "spread": round(spread, 3),
                                     "verdict": verdict}
        out.append(row)
    return out


def analyse(out: Path) -> dict:
    runs = sorted(done(out).values(), key=lambda r: r["key"])
    specs = _specs(runs)
    return {"reference": REFERENCE, "chance": CHANCE, "geometries": _geometries(runs),
            "specs": specs, "rank_consistency": _rank_consistency(specs, REFERENCE),
            "noise_ceiling": _ceiling(specs, REFERENCE), "stride_verdicts": _verdicts(specs),
            "units_done": len(runs), "units_planned": len(SPECS) * 2 * len(CPU_GEOMETRIES)}


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) and not math.isnan(v) else str(v)


def report(result: dict, command: str) -> str:
    lines = ["# Proxy geometry study", "",
             f"Regenerate and resume: `{command}` (`--report-only` rewrites this file and `geometry.json` from `runs.jsonl`).",
             f"Units finished: {result['units_done']} of {result['units_planned']} planned on this CPU tier.", "",
             "## Geometries", "", "| geometry | input side | strides | seconds per step (median) | units |",
             "| --- | --- | --- | ---: | ---: |"]
    for name, g in result["geometries"].items():
        lines.append(f"| {name} | {g['input_side_rule']} | {g.get('strides', 'kept')} | {_fmt(g['seconds_per_step'])} | "
                     f"{g['units']} |")
    lines += ["", f"Reference: `{result['reference']}`. Chance is {result['chance']}.", "",
              "## Rank consistency against the reference", "",
              "| geometry | Kendall tau | 95% bootstrap | specs |", "| --- | ---: | --- | ---: |"]
    for g, rc in result["rank_consistency"].items():
        lines.append(f"| {g} | {_fmt(rc['tau'])} | {rc['tau_ci'] or '-'} | {rc['n_specs']} |")
    c = result["noise_ceiling"]
    lines += ["", f"The reference's own seed-vs-seed tau (the ceiling): {_fmt(c['tau'])} over {c['n_specs']} specs.", "",
              "## Stride verdicts", "", "| question | geometry | stride 64 | stride 32 | difference | seed spread | verdict |",
              "| --- | --- | --- | --- | ---: | ---: | --- |"]
    for v in result["stride_verdicts"]:
        for g, row in v["by_geometry"].items():
            lines.append(f"| {v['question']} | {g} | {row['stride64']} | {row['stride32']} | {row['difference']:+.3f} | "
                         f"{row['spread']:.3f} | {row['verdict']} |")
    lines += ["", "## Specs", "",
              "| spec | stride | resolution | deployed grid | "
              + " | ".join(f"{g} (grid: top-1 per seed)" for g in result["geometries"]) + " |",
              "| --- | ---: | ---: | --- | " + " | ".join("---" for _ in result["geometries"]) + " |"]
    for s in result["specs"]:
        cells = [f"{s['proxy_grid'].get(g, '-')}: {s['top1'].get(g, '-')}" if g in s["top1"] else "-"
                 for g in result["geometries"]]
        lines.append(f"| {s['label']} | {s['stride']} | {s['resolution']} | {s['deployed_grid']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(out: Path, *, command: str) -> dict:
    result = analyse(out)
    result["command"] = command
    (out / "geometry.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / "report.md").write_text(report(result, command), encoding="utf-8")
    return result
