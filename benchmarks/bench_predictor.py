"""Latency predictor vs measured latency on specs sampled from the shipped spaces.

The table is filled block by block; scale and exponent are fitted on whole models drawn with a different
seed from the evaluated ones, so no evaluated spec's end-to-end latency enters the predictor.

    python benchmarks/bench_predictor.py [-n 30] [--fit 12] [--resolution 256] [--threads 1] [--statistic relative]
        [--ttft qwen2-0.5b] [--default-heap]
    python benchmarks/bench_predictor.py --from-json benchmarks/results/predictor_1024_relative_t1.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import stamp, write  # noqa: E402

from archsearch.measure._heap import heap_mode  # noqa: E402
from archsearch.measure.latency import LatencyConfig, measure_latency  # noqa: E402
from archsearch.measure.predictor import STATISTICS, LatencyPredictor  # noqa: E402
from archsearch.space import draw, load_space  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=30, help="specs evaluated (split evenly over the spaces)")
    ap.add_argument("--fit", type=int, default=12, help="whole models for the scale fit (another seed)")
    ap.add_argument("--resolution", default="256", help="resolution override for the spaces (cost control)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--passes", type=int, default=1,
                    help="measure every evaluated model this many times, in passes over all specs (the row is the median)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (see bench_repeatability.py)")
    ap.add_argument("--statistic", default="relative", choices=list(STATISTICS),
                    help="summed per-component statistic, compared with the same statistic measured end to end; "
                         "relative: ratios to a probe timed interleaved, and each evaluated model is timed "
                         "interleaved with the probe too (the prediction is put on the probe's speed of that run)")
    ap.add_argument("--ttft", metavar="LLM", default=None,
                    help="also validate predicted_ttft_ms (predicted encoder + fitted prefill) against measured TTFT "
                         "(the same encoder timing + the decoder's prefill timed at the spec's exact token count), "
                         "for the specs whose tokens lie within the prefill fit")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--default-heap", action="store_true",
                    help="time with glibc's default heap (forwards pay page faults), as before the heap was kept")
    ap.add_argument("--from-json", metavar="PATH", help="re-write the report of a finished run from its JSON (no measuring)")
    ap.add_argument("--refit", action="store_true",
                    help="with --from-json: re-fit scale and exponent on the run's measured fit models with this "
                         "checkout's fit, and re-price its rows from their summed ratios (the measurements stay)")
    return ap


def main() -> None:
    args = _parser().parse_args()
    if args.from_json:
        path = Path(args.from_json)
        data = json.loads(path.read_text(encoding="utf-8"))
        data["reported"] = stamp()
        if args.refit:
            _refit(data)
        _report(data, path.stem)
        return
    spaces = sorted((ROOT / "search_spaces").glob("*.yaml"))
    overrides = [f"resolution=[{args.resolution}]"]
    cfg = LatencyConfig(warmup=3, repeats=args.repeats, threads=args.threads, retain_heap=not args.default_heap)
    predictor = LatencyPredictor(cfg, statistic=args.statistic)
    per_space = -(-args.n // len(spaces))
    fit_per_space = -(-args.fit // len(spaces))
    evaluated, fit_on = [], []
    for path in spaces:
        space = load_space(path, overrides)
        evaluated += draw(space, per_space, seed=0)[0]
        fit_on += draw(space, fit_per_space, seed=1000)[0]
    evaluated = evaluated[: args.n]
    start = time.perf_counter()
    entries_before = len(predictor.entries)
    predictor.fit_scale([(c.spec, c.resolution) for c in fit_on[: args.fit]], progress=lambda s: print("fit", s, flush=True))
    rows = [{"arch": c.spec.code, "spec_hash": c.spec.spec_hash, "resolution": c.resolution, "passes": []}
            for c in evaluated]
    _measure_passes(args, predictor, cfg, evaluated, rows)
    for row in rows:  # the median over passes (of two: their mean)
        for key in row["passes"][0]:
            row[key] = statistics.median(p[key] for p in row["passes"])
    ttft = _validate_ttft(args, cfg, evaluated, rows) if args.ttft else None
    data = {"stamp": stamp(), "resolution": args.resolution, "statistic": args.statistic, "spaces": [p.stem for p in spaces],
            "fit_specs": args.fit, "entries": len(predictor.entries), "entries_before": entries_before,
            "seconds": round(time.perf_counter() - start),
            "threads": cfg.threads, "repeats": cfg.repeats, "warmup": cfg.warmup, "heap": heap_mode(cfg.retain_heap),
            "rows": rows, "scale": predictor.scale, "fit": predictor.fit, **({"ttft": ttft} if ttft else {})}
    heap = "_default_heap" if args.default_heap else ""
    _report(data, f"predictor_{args.resolution}_{args.statistic}_t{args.threads}{heap}")


def _measure_passes(args: argparse.Namespace, predictor: LatencyPredictor, cfg: LatencyConfig, evaluated: list,
                    rows: list) -> None:
    """Time every evaluated model ``args.passes`` times, in passes over all specs, into its row's ``passes``."""
    for n in range(args.passes):
        for c, row in zip(evaluated, rows):
            summed = predictor.raw_sum_ms(c.spec, c.resolution, measure_missing=True)  # entries it lacks first
            if args.statistic == "relative":
                measured, measured_rel = predictor.measure_relative(c.spec, c.resolution)
                row["passes"].append({"measured_ms": measured, "measured_rel": measured_rel,
                                      "probe_ms": measured / measured_rel})  # the probe's ms right after the model
                row.update(sum_rel=summed,
                           predicted_rel=predictor.predict_relative(c.spec, c.resolution),
                           calibration_probe_ms=predictor.probe_ms)
                print(f"pass {n} {c.spec.code:28s} predicted {row['predicted_rel']:8.2f} measured {measured_rel:8.2f} probe "
                      f"units "
                      f"({row['predicted_rel'] / measured_rel - 1:+.1%}); {measured:.1f} ms", flush=True)
            else:
                lat = measure_latency(c.spec, c.resolution, cfg)
                measured = lat.stats.p10_ms if args.statistic == "p10" else lat.stats.median_ms
                row["passes"].append({"measured_ms": measured, "measured_iqr_ms": lat.stats.iqr_ms})
                row.update(sum_ms=summed, predicted_ms=predictor.predict(c.spec, c.resolution))
                print(f"pass {n} {c.spec.code:28s} predicted {row['predicted_ms']:8.1f} measured {measured:8.1f} ms", flush=True)


def _refit(data: dict) -> None:
    """Re-price a finished ``relative`` run with this checkout's fit and curve (no re-measuring)."""
    from archsearch.measure.predictor import _curve, _fit_power, _sum_range

    old = (data["fit"]["scale"], data["fit"]["exponent"])
    scale, exponent = _fit_power(data["fit"]["specs"])
    sum_range = _sum_range(data["fit"])
    data["fit"].update(scale=scale, exponent=exponent, sum_range=list(sum_range))
    for r in data["rows"]:
        r["predicted_rel"] = _curve(r["sum_rel"], scale, exponent, sum_range)
    data["note"] = ((data.get("note") or "") + f" Re-priced with --refit: the fit of the run's own fit models, now "
                    f"{scale:.3g} x sum^{exponent:.3f} (measured {old[0]:.3g} x sum^{old[1]:.3f} at "
                    f"the time), not extrapolated beyond their sums; every measurement is the run's.").strip()


def _share(errs, bound: float) -> float:
    return sum(abs(e) <= bound for e in errs) / len(errs)


def _summary(errs) -> str:
    a = [abs(e) for e in errs]
    return (f"within +-10%: **{_share(a, 0.10):.0%}**, within +-15%: {_share(a, 0.15):.0%}, "
            f"median |error| {statistics.median(a):.1%}, max |error| {max(a):.1%}")


def _report(data: dict, name: str) -> None:
    """Summaries and tables from the measured rows (also for ``--from-json``: no re-measuring).

    ``relative`` runs are judged as a study uses the predictor: one probe speed for the whole run (the
    median of the probe timings interleaved with the evaluated models; a study freezes one rebase), the
    headline. Also given: the probe speed timed right after each model (per-model rebase) and the one
    recorded at calibration.
    """
    rows = data["rows"]
    relative = data["statistic"] == "relative"
    if relative:
        probe_run = statistics.median(p["probe_ms"] for r in rows for p in r.get("passes") or [r])
        for r in rows:
            r["predicted_ms"] = r["predicted_rel"] * probe_run
            r["rel_error"] = (r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"]
            r["per_model_rel_error"] = r["predicted_rel"] / r["measured_rel"] - 1
            r["absolute_rel_error"] = r["predicted_rel"] * r["calibration_probe_ms"] / r["measured_ms"] - 1
    else:
        for r in rows:
            r["rel_error"] = (r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"]
    errs = [r["rel_error"] for r in rows]
    fit = data["fit"]
    md = [
        f"### Latency predictor vs measured ({data['statistic']}): {len(rows)} specs from {', '.join(data['spaces'])} "
        f"at {data['resolution']} px\n",
        f"{_summary(errs)[0].upper()}{_summary(errs)[1:]}. Fit measured = {fit.get('scale', 1):.3g} x "
        f"sum^{fit.get('exponent', 1):.3f} on {data['fit_specs']} other specs; "
        f"{'a fresh table' if not data.get('entries_before') else 'a table begun earlier'} of {data['entries']} block entries; "
        f"{data['seconds']} s in all. Conditions: torch-cpu, {data['threads']} threads, median of "
        f"{data['repeats']} after {data['warmup']} warm-up, heap {data['heap']}, the machine otherwise idle.\n",
    ]
    if relative:
        probes = [p["probe_ms"] for r in rows for p in r.get("passes") or [r]]
        md.append(
            f"Predictions are in probe units, put in ms with one probe speed for the run, as a study does: the median "
            f"({probe_run:.1f} ms; {min(probes):.1f}-{max(probes):.1f} ms over the run) of the probe timed interleaved "
            f"with each evaluated model. With the probe speed timed right after each model instead (per-model rebase): "
            f"{_summary([r['per_model_rel_error'] for r in rows])}. With the probe speed of calibration: "
            f"{_summary([r['absolute_rel_error'] for r in rows])}.\n")
    md += _repeatability(rows, relative)
    md += [
        "| arch | res | predicted ms | measured ms | error |" + (" probe ms (per-model) |" if relative else ""),
        "| --- | ---: | ---: | ---: | ---: |" + (" ---: |" if relative else ""),
    ]
    for r in rows:
        md.append(f"| {r['arch']} | {r['resolution']} | {r['predicted_ms']:.1f} | {r['measured_ms']:.1f} | "
                  f"{r['rel_error']:+.1%} |" + (f" {r['probe_ms']:.1f} |" if relative else ""))
    summary = {"within_10": _share(errs, 0.10), "within_15": _share(errs, 0.15),
               "median_abs_error": statistics.median(abs(e) for e in errs), "n": len(rows)}
    if data.get("ttft"):
        summary["ttft"], ttft_md = _ttft_section(data["ttft"], rows)
        md += ttft_md
    if data.get("note"):
        md.append(f"\nNote: {data['note']}")
    if "reported" in data:
        md.append(f"\n(Report re-written from the run's JSON on {data['reported']['date']}: "
                  f"`{data['reported']['command']}`.)")
    data["summary"] = summary
    write(name, data, "\n".join(md) + "\n")


def _repeatability(rows: list, relative: bool) -> list:
    """With two or more passes: how well pass 2 agrees with pass 1 (no predictor can agree better)."""
    passes = min(len(r.get("passes") or [r]) for r in rows)
    if passes < 2:
        return []

    def spread(key: str) -> str:
        return _summary([r["passes"][1][key] / r["passes"][0][key] - 1 for r in rows])

    return [f"Each model was measured in {passes} passes over all specs (minutes apart; each row is their median), "
            f"so a slow minute of the machine does not decide a row. The measurement's own repeatability, pass 2 "
            f"against pass 1: " + (f"ratios to the probe {spread('measured_rel')}; ms " if relative else "")
            + f"{spread('measured_ms')}. No predictor can agree with the measurement better than the measurement "
            f"agrees with itself.\n"]

def _ttft_section(t: dict, rows: list) -> tuple:
    """(summary, report lines) of predicted against measured TTFT, from the encoder rows and the prefill timings."""
    by_hash = {r["spec_hash"]: r for r in rows}
    for o in t["rows"]:
        enc = by_hash[o["spec_hash"]]
        o["predicted_ttft_ms"] = enc["predicted_ms"] + o["prefill_fit_ms"]
        o["measured_ttft_ms"] = enc["measured_ms"] + o["prefill_measured_ms"]
        o["rel_error"] = (o["predicted_ttft_ms"] - o["measured_ttft_ms"]) / o["measured_ttft_ms"]
    terrs = [o["rel_error"] for o in t["rows"]]
    ttft = {"within_10": _share(terrs, 0.10), "median_abs_error": statistics.median(abs(e) for e in terrs),
            "n": len(terrs)}
    md = [
        f"\n### Predicted TTFT ({t['llm']}, {t['prompt_tokens']} prompt tokens) vs measured: {len(terrs)} of "
        f"{len(rows)} specs\n",
        f"{_summary(terrs)[0].upper()}{_summary(terrs)[1:]}. Predicted (`predicted_ttft_ms`): the encoder prediction above "
        f"+ the prefill fit (quadratic in tokens, fitted at {t['fit_tokens']} tokens). Measured: the encoder timed "
        f"above + the decoder's prefill timed at the spec's exact token count (median of 3). Specs with more tokens "
        f"than the fit's largest are left out ({len(rows) - len(terrs)}).\n",
        "| arch | tokens | predicted TTFT ms | measured TTFT ms | prefill fit / measured ms | error |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    md += [f"| {o['arch']} | {o['tokens']} | {o['predicted_ttft_ms']:.1f} | {o['measured_ttft_ms']:.1f} | "
           f"{o['prefill_fit_ms']:.0f} / {o['prefill_measured_ms']:.0f} | {o['rel_error']:+.1%} |" for o in t["rows"]]
    return ttft, md


def _validate_ttft(args, cfg: LatencyConfig, evaluated, rows) -> dict:
    """The prefill of every row within the prefill fit, fitted and timed (``_report`` adds the encoder)."""
    from archsearch.measure.ttft import _Prefill, fit_prefill, get_llm

    shape = get_llm(args.ttft)
    prefill_cfg = dataclasses.replace(cfg, warmup=1, repeats=3, time_budget_s=None)
    fitted = fit_prefill(shape, config=prefill_cfg, progress=print)
    decoder = _Prefill(shape)
    timed: dict = {}
    out = []
    for c, r in zip(evaluated, rows):
        tokens = c.spec.visual_tokens(c.resolution) + args.prompt_tokens
        if tokens > fitted.max_fitted_tokens:
            continue
        if tokens not in timed:
            timed[tokens] = decoder.time(tokens, prefill_cfg).median_ms
            print(f"prefill {tokens} tokens: fit {fitted.predict_ms(tokens):.0f} ms, timed {timed[tokens]:.0f} ms", flush=True)
        out.append({"arch": r["arch"], "spec_hash": r["spec_hash"], "tokens": tokens,
                    "prefill_fit_ms": fitted.predict_ms(tokens), "prefill_measured_ms": timed[tokens]})
    return {"llm": shape.name, "prompt_tokens": args.prompt_tokens,
            "fit_tokens": sorted(p["tokens"] for p in fitted.points), "rows": out}


if __name__ == "__main__":
    main()
