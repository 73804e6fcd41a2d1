"""Commands that measure: measure, calibrate, proxy."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, List

from rich.table import Table

from ..errors import ConfigError

from ._app import _accept_overrides, _command, _default, _given, _option_flags, _out, _progress, _resolutions


#: The latency flags of measure/calibrate: fields of archsearch.options.LatencyConfig.
_LATENCY_FLAGS = {"backend": "", "threads": "intra-op threads", "warmup": "untimed runs first", "repeats": "timed runs",
                  "channels_last": "time in channels-last memory format", "compile": "torch.compile the model before timing"}


def _latency_args(p: argparse.ArgumentParser) -> None:
    from ..options import LATENCY_BACKEND_NAMES, LatencyConfig

    g = p.add_argument_group("latency (defaults: archsearch.options.LatencyConfig)")
    _option_flags(g, LatencyConfig, {**_LATENCY_FLAGS, "backend": " | ".join(LATENCY_BACKEND_NAMES)})
    g.add_argument("--default-heap", action="store_true",
                   help="time with the allocator's default behaviour (freed memory returned to the kernel, so "
                        "forwards pay page faults) instead of a retained heap")


def _latency_config(args: argparse.Namespace, base=None):
    """``base`` (default: LatencyConfig()) with the latency options given on the command line."""
    import dataclasses

    from ..options import LatencyConfig

    given = _given(args, _LATENCY_FLAGS)
    if args.default_heap:
        given["retain_heap"] = False
    return dataclasses.replace(base or LatencyConfig(), **given)


def _metric_names() -> List[str]:
    from ..metrics import METRICS

    return list(METRICS)


def measure_options(args: argparse.Namespace):
    """MeasureOptions from its defaults, then KEY=VALUE overrides, then the named command-line options."""
    import dataclasses

    from .._config import from_data
    from ..options import MeasureOptions
    from .._config import apply_overrides

    # The experiment files' spelling is accepted too: measure.train.data=glyphs is train.data=glyphs.
    overrides = [o[len("measure."):] if o.startswith("measure.") else o for o in getattr(args, "overrides", []) or []]
    data = apply_overrides({}, overrides, source="KEY=VALUE")
    options = from_data(MeasureOptions, data or {})
    given = _given(args, _MEASURE_FLAGS)
    options = dataclasses.replace(options, latency=_latency_config(args, options.latency), **given)
    if getattr(args, "data_root", None):
        options = dataclasses.replace(options, train=dataclasses.replace(options.train, data_root=args.data_root),
                                      proxy=dataclasses.replace(options.proxy, data_root=args.data_root))
    return options


#: measure's flags of archsearch.options.MeasureOptions.
_MEASURE_FLAGS = {"counter": "MAC counter", "llm": "LLM preset (qwen2-0.5b, qwen2-1.5b, qwen2-7b) or shape YAML",
                  "prompt_tokens": "text tokens prefilled with the visual tokens"}


def _measure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="+", metavar="SPEC", help="reference names or spec YAML paths")
    p.add_argument("--resolution", "-r", default="1024", help="comma-separated sides or HxW (default 1024)")
    p.add_argument("--metrics", "-m", default="params,macs,tokens",
                   help="comma-separated metrics of the registry: " + ", ".join(_metric_names()))
    from ..options import COUNTER_NAMES, MeasureOptions

    _option_flags(p, MeasureOptions, {**_MEASURE_FLAGS, "counter": f"MAC counter: {' | '.join(COUNTER_NAMES)}"})
    p.add_argument("--data-root", default=None, help="Fashion-MNIST IDX directory for the accuracy metrics")
    p.add_argument("--vs", metavar="SPEC", help="also time each spec interleaved with this one: latency ratio")
    p.add_argument("--no-cache", action="store_true", help="measure again instead of reading the cache")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows")
    _latency_args(p)
    _accept_overrides(p, "the measurement options (archsearch.options.MeasureOptions)")
    p.epilog = ("KEY=VALUE: overrides of the measurement options, as in an experiment file's measure: section, "
                "e.g. train.steps=100 train.data=fashion-mnist-canvas proxy.seed=1 latency.repeats=5")


@_command("measure", "measure params, MACs, tokens, latency, predicted latency and TTFT", _measure_args)
def _measure(args: argparse.Namespace) -> int:
    from ..measure import MeasureCache
    from ..metrics import Measurer, parse_metrics
    from ..references import load_spec

    metrics = parse_metrics(args.metrics)
    specs = [load_spec(s) for s in args.specs]
    vs = load_spec(args.vs) if args.vs else None
    resolutions = _resolutions(args.resolution)
    measurer = Measurer(measure_options(args), MeasureCache(enabled=not args.no_cache))
    with _progress() as progress:
        task = progress.add_task("measuring", total=len(specs) * len(resolutions))

        started = [0]

        def row(label: str) -> None:  # called as each row starts: the rows before it are done
            progress.update(task, description=label, completed=started[0])
            started[0] += 1

        rows = measurer.measure_grid(specs, resolutions, metrics, vs=vs, on_row=row)
        progress.update(task, completed=len(specs) * len(resolutions))
    if args.json:
        print(json.dumps(rows))
        return 0
    _print_measure_table(rows, metrics, vs is not None)
    return 0


def _ms_iqr(lat: dict) -> str:
    return f"{lat['median_ms']:.1f} ({lat['iqr_ms']:.1f})"


def _print_measure_table(rows: list[dict], metrics: list[str], ratio: bool) -> None:
    columns = [("spec", lambda r: r["spec"]), ("res", lambda r: str(r["resolution"]))]
    if "params" in metrics:
        columns.append(("params (M)", lambda r: f"{r['params'] / 1e6:.2f}"))
    if "macs" in metrics:
        columns.append(("GMACs", lambda r: f"{r['gmacs']:.2f}"))
    if "tokens" in metrics:
        columns += [("stride", lambda r: str(r["stride"])), ("tokens", lambda r: str(r["tokens"]))]
    if "latency" in metrics or "ttft" in metrics:
        key = "latency" if "latency" in metrics else None
        columns.append(("latency ms (IQR)", lambda r: _ms_iqr(r["latency"] if key else r["ttft"]["encoder"])))
    if "predicted_latency" in metrics:
        columns.append(("predicted ms", lambda r: f"{r['predicted_latency_ms']:.1f}"))
    if "ttft" in metrics:
        columns += [
            ("prefill ms", lambda r: f"{r['ttft']['prefill_ms']:.0f}"),
            ("TTFT ms", lambda r: f"{r['ttft_ms']:.0f}"),
        ]
    from ..metrics import METRICS

    shown = {"params", "macs", "tokens", "latency", "ttft", "predicted_latency"}
    for name in metrics:
        if name not in shown:
            for key in METRICS[name].objectives:
                columns.append((key, _number_column(key)))
    if ratio:
        columns.append(("latency / vs (IQR)",
                        lambda r: f"{r['latency_ratio_vs']['median']:.3f} ({r['latency_ratio_vs']['iqr']:.3f})"))
    table = Table()
    for name, _ in columns:
        table.add_column(name, no_wrap=True)
    for row in rows:
        table.add_row(*(fn(row) for _, fn in columns))
    _out.print(table)
    lat = next((r.get("latency") or r.get("ttft", {}).get("encoder") for r in rows if "latency" in r or "ttft" in r), None)
    if lat:
        where = (f"on {lat['device_fingerprint']} ({lat['device'].get('name')}) at {lat['url']}, {lat['provider']}"
                 if lat["backend"] == "remote" else f"denormals flushed, heap {lat['heap']}")
        _out.print(
            f"latency: {lat['backend']}, {lat['threads']} threads, median of {lat['repeats']} after {lat['warmup']} warm-up, "
            f"reparameterized, batch {lat['batch']}, {where}"
        )
    if "ttft" in metrics and rows:
        t = rows[0]["ttft"]
        _out.print(f"TTFT: encoder + {t['llm']} prefill of visual + {t['prompt_tokens']} prompt tokens (fitted per device)")


def _number_column(key: str) -> Callable[[dict], str]:
    return lambda r: f"{r[key]:.4g}"


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    from ..options import LATENCY_BACKEND_NAMES

    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device to calibrate (default cpu)")
    p.add_argument("--backend", choices=LATENCY_BACKEND_NAMES, default=None,
                   help="latency backend to time with (default: torch-cpu, or cuda with --device cuda); remote: the "
                        "device server at --url, token from $ARCHSEARCH_DEVICE_TOKEN")
    p.add_argument("--url", default=None, help="the device server, http://HOST:PORT (--backend remote)")
    p.add_argument("--space", action="append", default=None, help="space(s) to sample from (default: search_spaces/*.yaml)")
    p.add_argument("-n", type=int, default=15, help="specs sampled per space for the table (default 15)")
    from ..options import MeasureOptions

    p.add_argument("--fit", type=int, default=_default(MeasureOptions, "predictor_fit"),
                   help="whole models measured to fit scale and exponent (default %(default)s, as a study's predictor_fit)")
    p.add_argument("--statistic", default="relative", choices=["relative", "median", "p10"],
                   help="relative (default): ratios to a probe timed interleaved, drift cancels; or absolute ms")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--resolution", "-r", default=None, help="override the spaces' resolutions, e.g. 256,512")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")


@_command("calibrate", "measure this device's block-latency table for the latency predictor", _calibrate_args)
def _calibrate(args: argparse.Namespace) -> int:
    from ..measure.predictor import calibrate
    from ..options import LatencyConfig

    spaces = args.space or [str(p) for p in sorted(Path("search_spaces").glob("*.yaml"))]
    if not spaces:
        raise ConfigError("--space", "no space given and no search_spaces/*.yaml here")
    backend = args.backend or ("cuda" if args.device == "cuda" else "torch-cpu")
    cfg = LatencyConfig(backend=backend, **({"url": args.url} if args.url else {}),
                        **({"threads": args.threads} if args.threads else {}))
    with _progress() as progress:
        tasks = {}

        def advance(stage: str, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.advance(tasks[stage])

        report = calibrate(spaces, config=cfg, statistic=args.statistic, n=args.n, fit=args.fit, seed=args.seed,
                           resolution=args.resolution, progress=advance)
    if args.json:
        print(json.dumps(report))
    else:
        _out.print(
            f"calibrated {report['entries']} table entries ({report['new_entries']} new) in {report['seconds']} s; "
            f"{report['statistic']} table; measured = {report['scale']:.3g} x sum^{report['exponent']:.3f} from "
            f"{len(report['fit_ratios'])} whole models -> {report['table']}"
        )
    return 0


#: proxy's flags of archsearch.options.TrainProxyConfig (a zero-cost proxy takes the ones ProxyConfig has too).
_PROXY_FLAGS = {"width_mult": "scaled copy: width multiplier", "max_depth": "scaled copy: depth cap per stage",
                "resolution": "input side", "steps": "training steps (train)", "lr": "learning rate (train)",
                "data": "a data set name (archsearch.options.DATA_SET_NAMES), noise (zero-cost only) or an ImageFolder root",
                "seed": "seed of the initialisation and the data order",
                "geometry": "how the candidate becomes the judged network: copy | late_grid | reference (archsearch.geometry)",
                "candidate_resolution": "the candidate's own resolution, whose token grid late_grid and reference keep"}
_TRAIN_ONLY = ("steps", "lr")


def _proxy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="reference name or spec YAML path")
    from ..options import ZERO_COST_NAMES

    p.add_argument("--kind", default=ZERO_COST_NAMES[0], help=f"{' | '.join(ZERO_COST_NAMES)} | train (default %(default)s)")
    from ..options import TrainProxyConfig

    _option_flags(p, TrainProxyConfig, _PROXY_FLAGS)
    p.add_argument("-r", dest="resolution", type=int, default=None, help="the same as --resolution")
    p.add_argument("--data-root", default=None, help="directory with Fashion-MNIST's IDX files")
    p.add_argument("--json", action="store_true")


@_command("proxy", "score a spec with a zero-cost proxy or short training", _proxy_args)
def _proxy(args: argparse.Namespace) -> int:
    import dataclasses

    from ..options import ProxyConfig, TrainProxyConfig
    from ..references import load_spec

    from ..spec import ArchSpec

    spec = load_spec(args.spec)
    if not isinstance(spec, ArchSpec):
        raise ConfigError("SPEC", f"{spec.code} is a reference encoder: the proxies score a scaled copy of a "
                                  "FastViT-family spec")
    # Options left out keep the one default of each (archsearch.options).
    given = _given(args, [n for n in (*_PROXY_FLAGS, "data_root") if n not in _TRAIN_ONLY])

    def options(cls):  # a candidate's resolution without an input side: the side follows the data set's rule
        cfg = dataclasses.replace(cls(), **given)
        return cfg.for_candidate(cfg.candidate_resolution) if "resolution" not in given else cfg

    from ..metrics import proxy_row

    if args.kind == "train":
        given.update(_given(args, _TRAIN_ONLY))
    result = proxy_row(spec, args.kind, options(TrainProxyConfig if args.kind == "train" else ProxyConfig))
    if args.json:
        print(json.dumps(result))
    else:
        extra = f" (val loss {result['val_loss']:.3f}, loss sum {result['loss_sum']:.2f})" if args.kind == "train" else ""
        _out.print(f"{spec.name or spec.code} {args.kind}: {result['score']:.6g}{extra} in {result['seconds']:.1f} s; "
                   f"scaled copy: {result['config']}")
    return 0


#: proxy-fidelity's plan options: flag -> (where the option lives, its field, its type). Their defaults are
#: read from FidelityPlan and TrainProxyConfig, never written here.
