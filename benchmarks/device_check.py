"""GPU check of the measurement paths that CI cannot run: the cuda latency backend on FastViTHD and
FastViT-SA12 at 1024 px (alone and interleaved), the Qwen2 prefill fit on the GPU and the TTFT it gives,
and training-proxy steps on the GPU. Writes one JSON file with every figure and its conditions.

Run through ``benchmarks/device_check.sh`` on a machine with a CUDA device (never in CI).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path


def _part(results: dict, name: str, fn) -> None:
    start = time.perf_counter()
    try:
        results[name] = fn()
        results[name]["seconds"] = round(time.perf_counter() - start, 2)
    except Exception as e:  # noqa: BLE001 - one failed part must not lose the others' figures
        results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    print(f"{name}: {json.dumps(results[name])[:600]}", flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--llm", default="qwen2-0.5b")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST IDX files (default: Debian's location)")
    p.add_argument("--backend", default="cuda", help="cuda (the check); torch-cpu runs the same script here as a smoke test")
    p.add_argument("--steps", type=int, default=60, help="training steps timed per spec")
    return p


def _latency(specs: dict, res: int, cfg) -> dict:
    """Each encoder at 256, 512 and ``res`` px, and FastViTHD over SA12 timed interleaved at ``res``."""
    from archsearch.measure import compare_latency, measure_latency

    out = {}
    for name, spec in specs.items():
        for r in sorted({256, 512, res}):
            lat = measure_latency(spec, r, cfg)
            out[f"{name}@{r}"] = {"median_ms": lat.stats.median_ms, "iqr_ms": lat.stats.iqr_ms, "p10_ms": lat.stats.p10_ms,
                                  "tokens": spec.visual_tokens(r), "conditions": lat.conditions}
    cmp = compare_latency(specs["fastvithd"], specs["fastvit_sa12"], res, cfg)
    out["interleaved_ratio_fastvithd_over_sa12"] = {"median": cmp.ratio.median_ms, "iqr": cmp.ratio.iqr_ms,
                                                    "a_median_ms": cmp.a.median_ms, "b_median_ms": cmp.b.median_ms}
    return out


def _prefill(args: argparse.Namespace, specs: dict, res: int, latency: dict) -> dict:
    """The LLM's prefill fit on this device, and each encoder's TTFT at ``res`` px (its latency above + prefill)."""
    from archsearch.measure import LatencyConfig, MeasureCache, fit_prefill, get_llm

    llm = get_llm(args.llm)
    fit = fit_prefill(llm, config=LatencyConfig(backend=args.backend, warmup=3, repeats=10, threads=1),
                      cache=MeasureCache(enabled=False))
    out = {"llm": llm.name, "coeffs": list(fit.coeffs), "points": fit.points,
           "max_rel_fit_error": fit.conditions["max_rel_fit_error"], "device": fit.conditions["device"]}
    for name, spec in specs.items():
        enc = latency.get(f"{name}@{res}", {}).get("median_ms")
        tokens = spec.visual_tokens(res) + 32
        if enc is not None:
            out[f"ttft_{name}@{res}"] = {"encoder_ms": enc, "prefill_ms": fit.predict_ms(tokens), "tokens": tokens,
                                        "ttft_ms": enc + fit.predict_ms(tokens)}
    return out


def _training(args: argparse.Namespace, specs: dict, dev: str) -> dict:
    """Seconds per training step of each encoder's quarter-width copy at 128 px (two trainings, their difference)."""
    import dataclasses

    from archsearch.proxy.train import TrainProxyConfig, train_proxy

    out = {}
    base = TrainProxyConfig(data="fashion-mnist", data_root=args.data_root, resolution=128, max_depth=4, batch_size=64,
                            train_size=10000, val_size=2000, accelerator=dev)
    for name, spec in specs.items():
        few = max(1, args.steps // 6)
        short = train_proxy(spec, dataclasses.replace(base, steps=few, val_every=few))
        more = train_proxy(spec, dataclasses.replace(base, steps=args.steps, val_every=args.steps))
        out[name] = {"s_per_step": (more.seconds - short.seconds) / (args.steps - few), "steps": args.steps,
                     "val_top1": more.val_top1, "loss_sum": more.loss_sum, "seconds": more.seconds, "config": more.config}
    return out


def main(argv=None) -> int:
    args = _parser().parse_args(argv)

    import torch

    from archsearch.measure import LatencyConfig
    from archsearch.measure.device import device_info
    from archsearch.references import load_spec

    if args.backend == "cuda" and not torch.cuda.is_available():
        print("device_check: no CUDA device here", file=sys.stderr)
        return 2
    res, dev = args.resolution, "cuda" if args.backend == "cuda" else "cpu"
    cfg = LatencyConfig(backend=args.backend, warmup=10, repeats=args.repeats, threads=1)
    results: dict = {"device": device_info(dev), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "command": " ".join(["bash benchmarks/device_check.sh"]), "resolution": res}
    specs = {name: load_spec(name) for name in ("fastvithd", "fastvit_sa12")}
    _part(results, "latency", lambda: _latency(specs, res, cfg))
    _part(results, "prefill", lambda: _prefill(args, specs, res, results.get("latency", {})))
    _part(results, "training", lambda: _training(args, specs, dev))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / "device_check.json"
    path.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    print(f"wrote {path}")
    return 0 if not any("error" in v for v in results.values() if isinstance(v, dict)) else 1

if __name__ == "__main__":
    sys.exit(main())
