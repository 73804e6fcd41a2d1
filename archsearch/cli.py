"""``archsearch`` command line: parse, call the layers, print. Bad input exits 2 with one line."""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

from rich.console import Console
from rich.table import Table

from . import _interrupts, _scoped
from ._outputs import prepare_output_dir, record_outputs, write_atomic
from .errors import ArchsearchError, ConfigError, mask_secrets
from .spec import parse_resolution

__all__ = ["main"]

# Off a terminal (CI logs, pipes) rich would wrap tables at 80 columns.
_out = Console(width=None if sys.stdout.isatty() else 160)
_err = Console(stderr=True)

#: Subcommands by name: (add arguments, run). Filled by ``_command`` where each is defined.
COMMANDS: Dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def _command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (configure, run, help)
        return run

    return register


def _warn(message: str) -> None:
    _err.print(f"warning: {mask_secrets(message)}", markup=False, highlight=False, soft_wrap=True)


def _build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="reference name (see `archsearch references`) or spec YAML path")
    p.add_argument("--resolution", "-r", default="1024", help="input side in pixels, or HxW (default 1024)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verify", action="store_true", help="check the grid with a meta-device forward pass")


@_command("build", "build a spec and report params, output grid, tokens and stride", _build_args)
def _build(args: argparse.Namespace) -> int:
    from .references import load_spec

    from .build import describe

    info = describe(load_spec(args.spec), parse_resolution(args.resolution), verify=args.verify)
    if args.json:
        print(json.dumps(info))
        return 0
    table = Table(title=f"{info['name'] or args.spec}  [{info['arch']}]", show_header=False)
    for key, value in [
        ("params (M)", f"{info['params'] / 1e6:.3f}"),
        ("params deploy (M)", f"{info['params_deploy'] / 1e6:.3f}"),
        ("resolution", "x".join(map(str, info["resolution"]))),
        ("output stride", str(info["stride"])),
        ("output grid", f"{info['grid'][0]}x{info['grid'][1]}"),
        ("visual tokens", str(info["tokens"])),
        ("channels", str(info["channels"])),
        ("spec hash", info["spec_hash"]),
    ]:
        table.add_row(key, value)
    _out.print(table)
    return 0


def _references_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resolution", "-r", default="1024", help="resolution for the token column (default 1024)")
    p.add_argument("--json", action="store_true", help="print a JSON list")


@_command("references", "list the reference designs (timm-exact specs)", _references_args)
def _references(args: argparse.Namespace) -> int:
    from .references import REFERENCES

    res = parse_resolution(args.resolution)
    rows = [
        {
            "name": r.name,
            "timm": r.timm_name,
            "arch": r.spec.code,
            "stride": r.spec.output_stride,
            "tokens": r.spec.visual_tokens(res),
            "note": r.note,
        }
        for r in REFERENCES.values()
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    table = Table(title=f"references (tokens at {res[0]}x{res[1]})")
    cols = ("name", "timm", "arch", "stride", "tokens")
    for col in cols:
        table.add_column(col, no_wrap=True)
    for row in rows:
        table.add_row(*(str(row[c]) for c in cols))
    _out.print(table)
    return 0


def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", metavar="SPACE.yaml", help="search space file")
    p.add_argument("-n", type=int, default=10, help="number of valid specs to write (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same specs")
    p.add_argument("--out", required=True, help="directory for the spec YAML files and samples.csv")
    _overwrite_arg(p)
    _accept_overrides(p, "the space")


def _quiet_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display and no notes (warnings still print)")


def _overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty output directory, replacing the files an earlier run of this command wrote")


def _accept_overrides(p: argparse.ArgumentParser, what: str) -> None:
    """Trailing ``KEY=VALUE`` arguments (OmegaConf dotlist) anywhere after the command."""
    p.usage = p.format_usage().replace("usage: ", "").strip() + " [KEY=VALUE ...]"
    p.epilog = f"KEY=VALUE: OmegaConf dotlist overrides of {what}, e.g. resolution=[64] stages.0.width=[32]"
    p.set_defaults(overrides=[], _accepts_overrides=True)


@_command("sample", "write N random specs of a space as YAML (deterministic for a seed)", _sample_args)
def _sample(args: argparse.Namespace) -> int:
    from .space import draw, load_space

    space = load_space(args.space, args.overrides)
    out = prepare_output_dir(args.out, "sample", overwrite=args.overwrite)
    candidates, rejected = draw(space, args.n, seed=args.seed)
    rows = []
    for i, c in enumerate(candidates):
        path = out / f"spec_{i:03d}_{c.spec.spec_hash}.yaml"
        header = f"# sampled from {space.name} (seed {args.seed}, #{i}); evaluate at resolution {c.resolution}\n"
        write_atomic(path, header + c.spec.to_yaml())
        rows.append(
            {
                "index": i,
                "file": path.name,
                "spec_hash": c.spec.spec_hash,
                "arch": c.spec.code,
                "resolution": c.resolution,
                "stride": c.spec.output_stride,
                "tokens": c.spec.visual_tokens(c.resolution),
            }
        )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["index"])
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "samples.csv", buf.getvalue())
    record_outputs(out, "sample", [r["file"] for r in rows] + ["samples.csv"])
    table = Table(title=f"{len(rows)} specs from {space.name} -> {out} ({len(rejected)} invalid draws rejected)")
    for col in ("index", "arch", "resolution", "tokens", "spec_hash"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("index", "arch", "resolution", "tokens", "spec_hash")))
    _out.print(table)
    return 0


def _resolutions(text: str) -> list[tuple[int, int]]:
    return [parse_resolution(r) for r in text.split(",") if r.strip()] or [parse_resolution(text)]


def _default(cls, name: str):
    """The one default of an option, read from its dataclass (so help texts cannot drift)."""
    import dataclasses

    f = cls.__dataclass_fields__[name]
    return f.default if f.default is not dataclasses.MISSING else "all cores" if name == "threads" else f.default_factory()


def _latency_args(p: argparse.ArgumentParser) -> None:
    from .options import LATENCY_BACKEND_NAMES, LatencyConfig

    g = p.add_argument_group("latency (defaults: archsearch.options.LatencyConfig)")
    g.add_argument("--backend", default=None,
                   help=f"{' | '.join(LATENCY_BACKEND_NAMES)} (default {_default(LatencyConfig, 'backend')})")
    g.add_argument("--threads", type=int, default=None, help=f"intra-op threads (default {_default(LatencyConfig, 'threads')})")
    g.add_argument("--warmup", type=int, default=None, help=f"default {_default(LatencyConfig, 'warmup')}")
    g.add_argument("--repeats", type=int, default=None, help=f"default {_default(LatencyConfig, 'repeats')}")
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the model before timing")
    g.add_argument("--default-heap", action="store_true",
                   help="time with the allocator's default behaviour (freed memory returned to the kernel, so "
                        "forwards pay page faults) instead of a retained heap")


def _latency_config(args: argparse.Namespace, base=None):
    """``base`` (default: LatencyConfig()) with the latency options given on the command line."""
    import dataclasses

    from .options import LatencyConfig

    given = {k: getattr(args, k) for k in ("backend", "threads", "warmup", "repeats") if getattr(args, k) is not None}
    given.update({k: True for k in ("channels_last", "compile") if getattr(args, k)})
    if args.default_heap:
        given["retain_heap"] = False
    return dataclasses.replace(base or LatencyConfig(), **given)


def _metric_names() -> List[str]:
    from .metrics import METRICS

    return list(METRICS)


def measure_options(args: argparse.Namespace):
    """MeasureOptions from its defaults, then KEY=VALUE overrides, then the named command-line options."""
    import dataclasses

    from ._config import from_data
    from .options import MeasureOptions
    from .space import apply_overrides

    # The experiment files' spelling is accepted too: measure.train.data=glyphs is train.data=glyphs.
    overrides = [o[len("measure."):] if o.startswith("measure.") else o for o in getattr(args, "overrides", []) or []]
    data = apply_overrides({}, overrides, source="KEY=VALUE")
    options = from_data(MeasureOptions, data or {})
    given = {k: getattr(args, k) for k in ("counter", "llm", "prompt_tokens") if getattr(args, k, None) is not None}
    options = dataclasses.replace(options, latency=_latency_config(args, options.latency), **given)
    if getattr(args, "data_root", None):
        options = dataclasses.replace(options, train=dataclasses.replace(options.train, data_root=args.data_root),
                                      proxy=dataclasses.replace(options.proxy, data_root=args.data_root))
    return options


def _measure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="+", metavar="SPEC", help="reference names or spec YAML paths")
    p.add_argument("--resolution", "-r", default="1024", help="comma-separated sides or HxW (default 1024)")
    p.add_argument("--metrics", "-m", default="params,macs,tokens",
                   help="comma-separated metrics of the registry: " + ", ".join(_metric_names()))
    from .options import COUNTER_NAMES, MeasureOptions

    p.add_argument("--counter", default=None,
                   help=f"MAC counter: {' | '.join(COUNTER_NAMES)} (default {_default(MeasureOptions, 'counter')})")
    p.add_argument("--llm", default=None, help="LLM preset (qwen2-0.5b, qwen2-1.5b, qwen2-7b) or shape YAML "
                                               f"(default {_default(MeasureOptions, 'llm')})")
    p.add_argument("--prompt-tokens", type=int, default=None, help="text tokens prefilled with the visual tokens "
                                                                   f"(default {_default(MeasureOptions, 'prompt_tokens')})")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST IDX directory for the accuracy metrics")
    p.add_argument("--vs", metavar="SPEC", help="also time each spec interleaved with this one: latency ratio")
    p.add_argument("--no-cache", action="store_true", help="measure again instead of reading the cache")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows")
    _latency_args(p)
    _accept_overrides(p, "the measurement options (archsearch.options.MeasureOptions)")
    p.epilog = ("KEY=VALUE: overrides of the measurement options, as in an experiment file's measure: section, "
                "e.g. train.steps=100 train.data=fashion-mnist-canvas proxy.seed=1 latency.repeats=5")


def _progress():
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=_err, transient=True,
    )


@_command("measure", "measure params, MACs, tokens, latency, predicted latency and TTFT", _measure_args)
def _measure(args: argparse.Namespace) -> int:
    from .measure import MeasureCache, compare_latency
    from .metrics import Measurer, parse_metrics
    from .references import load_spec

    metrics = parse_metrics(args.metrics)
    specs = [load_spec(s) for s in args.specs]
    vs = load_spec(args.vs) if args.vs else None
    resolutions = _resolutions(args.resolution)
    options = measure_options(args)
    measurer = Measurer(options, MeasureCache(enabled=not args.no_cache))
    if "ttft" in metrics:
        _ = measurer.llm  # resolve the LLM name now: a bad one is a one-line error before any timing
    rows = []
    with _progress() as progress:
        task = progress.add_task("measuring", total=len(specs) * len(resolutions))
        for spec in specs:
            for res in resolutions:
                progress.update(task, description=f"{spec.name or spec.code} @ {res[0]}x{res[1]}")
                row = measurer.measure(spec, res, metrics)
                if vs is not None:
                    cmp = compare_latency(spec, vs, res, options.latency)
                    row["latency_ratio_vs"] = {
                        "vs": vs.name or vs.spec_hash, "median": cmp.ratio.median_ms, "iqr": cmp.ratio.iqr_ms,
                        "a_median_ms": cmp.a.median_ms, "b_median_ms": cmp.b.median_ms, **cmp.conditions,
                    }
                rows.append(row)
                progress.advance(task)
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
    from .metrics import METRICS

    shown = {"params", "macs", "tokens", "latency", "ttft", "predicted_latency"}
    for name in metrics:
        if name not in shown:
            for key in METRICS[name].objectives:
                columns.append((key, lambda r, key=key: f"{r[key]:.4g}"))
    if ratio:
        columns.append(("latency / vs (IQR)", lambda r: f"{r['latency_ratio_vs']['median']:.3f} ({r['latency_ratio_vs']['iqr']:.3f})"))
    table = Table()
    for name, _ in columns:
        table.add_column(name, no_wrap=True)
    for row in rows:
        table.add_row(*(fn(row) for _, fn in columns))
    _out.print(table)
    lat = next((r.get("latency") or r.get("ttft", {}).get("encoder") for r in rows if "latency" in r or "ttft" in r), None)
    if lat:
        _out.print(
            f"latency: {lat['backend']}, {lat['threads']} threads, median of {lat['repeats']} after {lat['warmup']} warm-up, "
            f"reparameterized, denormals flushed, batch {lat['batch']}, heap {lat['heap']}"
        )
    if "ttft" in metrics and rows:
        t = rows[0]["ttft"]
        _out.print(f"TTFT: encoder + {t['llm']} prefill of visual + {t['prompt_tokens']} prompt tokens (fitted per device)")


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device to calibrate (default cpu)")
    p.add_argument("--space", action="append", default=None, help="space(s) to sample from (default: search_spaces/*.yaml)")
    p.add_argument("-n", type=int, default=15, help="specs sampled per space for the table (default 15)")
    p.add_argument("--fit", type=int, default=12, help="whole models measured to fit scale and exponent (default 12)")
    p.add_argument("--statistic", default="relative", choices=["relative", "median", "p10"],
                   help="relative (default): ratios to a probe timed interleaved, drift cancels; or absolute ms")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--resolution", "-r", default=None, help="override the spaces' resolutions, e.g. 256,512")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")


@_command("calibrate", "measure this device's block-latency table for the latency predictor", _calibrate_args)
def _calibrate(args: argparse.Namespace) -> int:
    from .measure.predictor import calibrate
    from .options import LatencyConfig

    spaces = args.space or [str(p) for p in sorted(Path("search_spaces").glob("*.yaml"))]
    if not spaces:
        raise ConfigError("--space", "no space given and no search_spaces/*.yaml here")
    cfg = LatencyConfig(backend="cuda" if args.device == "cuda" else "torch-cpu",
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


def _search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("trials", metavar="TRIALS.yaml", help="experiment file (trials/*.yaml)")
    p.add_argument("--n-trials", type=int, default=None, help="total trials of the study (default: the file's n_trials)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: the file's, sqlite:///archsearch.db)")
    p.add_argument("--pareto-out", default=None, help="also export the Pareto front to this directory at the end")
    _overwrite_arg(p)
    p.add_argument("--dry-run", action="store_true",
                   help="check the experiment file, its space and references, print the plan, run nothing")
    _quiet_arg(p)
    _accept_overrides(p, "the experiment file")


def _run_search(args: argparse.Namespace, *, worker: bool) -> int:
    import os

    from optuna.trial import TrialState

    from .search import SearchRunner
    from .trials import load_trials

    cfg = load_trials(args.trials, args.overrides)
    if args.dry_run:
        from .references import load_spec
        from .space import load_space

        space = load_space(cfg.resolve(cfg.space), cfg.space_overrides)
        refs = [load_spec(cfg.resolve(e.spec)).code for e in cfg.enqueue]
        _out.print(f"{args.trials}: study {cfg.study!r}, space {space.name!r} (resolutions {list(space.config.resolution)}), "
                   f"objectives {', '.join(f'{o.name} ({o.direction})' for o in cfg.objectives)}, "
                   f"{args.n_trials or cfg.n_trials} trials with {cfg.sampler.name}; references: {', '.join(refs) or 'none'}; "
                   "nothing run", markup=False, highlight=False, soft_wrap=True)
        return 0
    if args.pareto_out:  # checked before any trial runs, not after they are stored
        prepare_output_dir(args.pareto_out, "pareto", overwrite=args.overwrite, option="--pareto-out")
    runner = SearchRunner(cfg, storage=args.storage, seed_offset=os.getpid() if worker else 0, warn=_warn)
    budget = args.n_trials or cfg.n_trials
    before = runner.counted_trials()
    from ._display import SearchDisplay

    display = SearchDisplay(_out, _err, study=cfg.study, budget=budget, finished=before, quiet=args.quiet)
    try:
        # A Ctrl-C or SIGTERM that lands inside a database commit makes SQLAlchemy log the interrupted
        # commit with its traceback; the command says "interrupted" in one line instead.
        with display, _scoped.log_levels({"sqlalchemy.pool": logging.CRITICAL, "sqlalchemy.engine": logging.CRITICAL}):
            result = runner.run(n_trials=budget, on_trial=display.trial)
    except KeyboardInterrupt as e:
        done = len(runner.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))
        why = "terminated (SIGTERM)" if isinstance(e, _interrupts.Terminated) else "interrupted"
        _err.print(f"archsearch: {why}; {done} finished trials of {cfg.study!r} are kept in "
                   f"{mask_secrets(runner.url)}; run the same command to continue", markup=False, highlight=False)
        return 143 if isinstance(e, _interrupts.Terminated) else 130
    result = runner.finish(result, pareto_out=Path(args.pareto_out) if args.pareto_out else None)
    _out.print(
        f"study {cfg.study!r} in {mask_secrets(runner.url)}: ran {result.ran} trials here; "
        + ", ".join(f"{v} {k.lower()}" for k, v in result.states.items() if v)
        + f"; stopped by {result.stopped}; {len(result.pareto)} on the Pareto front"
        + ("" if runner.tracker.enabled else " (MLflow tracking off)")
    )
    _say_where(args, runner, cfg)
    if result.rungs:
        r = result.rungs
        _out.print(f"rungs {r['rungs']} steps: " + ", ".join(f"{n} stopped at rung {i}" for i, n in r["stopped_at"].items())
                   + f", {r['full_budget']} trained to the full budget; {r['steps_trained']} of {r['steps_if_all_full']} "
                   f"training steps ({100 * r['saved_fraction']:.0f}% saved)", markup=False, highlight=False)
    if result.failed_only:
        here = ", ".join(f"{n} {k.lower()}" for k, n in sorted(result.states_here.items()))
        why = f"; last error: {mask_secrets(result.last_error)}" if result.last_error else ""
        _err.print(f"archsearch {'worker' if worker else 'search'}: error: no trial completed in this run ({here}){why}",
                   markup=False, highlight=False, soft_wrap=True)
        return 1
    names = [o.name for o in cfg.objectives]
    table = Table(title="Pareto front")
    for col in ("trial", "arch", "res", *names, "FastViTHD-like", "dominates"):
        table.add_column(col, no_wrap=True)
    for r in result.pareto:
        table.add_row(str(r.number), r.spec.code, str(r.resolution), *(f"{v:.4g}" for v in r.values),
                      "yes" if r.fastvithd_like else "", ",".join(r.dominates))
    _out.print(table)
    return 0


def _say_where(args: argparse.Namespace, runner, cfg) -> None:
    """Where the front's table and plot went: the export directory and the study's MLflow parent run."""
    places = []
    if args.pareto_out:
        places.append(f"{args.pareto_out}/ (pareto.md, pareto.csv, pareto.png, the specs)")
    if runner.tracker.enabled and runner.parent_run_id:
        places.append(f"MLflow run {runner.parent_run_id} in {mask_secrets(cfg.tracking.uri)} "
                      f"(experiment {cfg.tracking.experiment!r}; artifacts pareto/ once the budget is complete)")
    if not places:
        places.append(f"nowhere yet: `archsearch pareto {cfg.study} --storage {mask_secrets(runner.url)} --out DIR` "
                      "writes the table and plot")
    _out.print("Pareto front: " + "; ".join(places), markup=False, highlight=False, soft_wrap=True)


@_command("search", "run (or resume) the Optuna study of an experiment file", _search_args)
def _search(args: argparse.Namespace) -> int:
    return _run_search(args, worker=False)


@_command("worker", "join an experiment's study as one more worker (shared storage, e.g. PostgreSQL)", _search_args)
def _worker(args: argparse.Namespace) -> int:
    return _run_search(args, worker=True)


def _pareto_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", metavar="STUDY", help="study name")
    p.add_argument("--storage", default="sqlite:///archsearch.db", help="Optuna storage URL")
    p.add_argument("--out", required=True, help="directory for the Pareto specs, pareto.csv, pareto.md, pareto.png")
    _overwrite_arg(p)


@_command("pareto", "export a study's Pareto-optimal specs and tables", _pareto_args)
def _pareto(args: argparse.Namespace) -> int:
    from .pareto import export_pareto, load_study

    study = load_study(args.study, args.storage)
    rows = export_pareto(study, prepare_output_dir(args.out, "pareto", overwrite=args.overwrite))
    _out.print(f"{len(rows)} Pareto-optimal specs -> {args.out} (pareto.csv, pareto.md, pareto.png)")
    return 0


def _ablate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("ablation", metavar="ABLATION.yaml", help="ablation file (trials/ablate_*.yaml)")
    p.add_argument("--out", required=True, help="directory for results.csv, results.json, ablation.json")
    p.add_argument("--quick", action="store_true", help="apply the file's `quick` overrides (a smoke test)")
    p.add_argument("--report", action="store_true", help="also write the Markdown report and plots into --out")
    _quiet_arg(p)
    _accept_overrides(p, "the ablation file")


@_command("ablate", "measure a base spec and its variants over a grid of resolutions", _ablate_args)
def _ablate(args: argparse.Namespace) -> int:
    from .ablation import build_variants, load_ablation, run_ablation

    cfg = load_ablation(args.ablation, args.overrides, quick=args.quick)
    total = len(build_variants(cfg)) * len(cfg.resolutions)
    command = " ".join(["archsearch ablate", args.ablation, "--out", args.out, *(["--quick"] if args.quick else []),
                        *args.overrides])
    from ._display import UnitDisplay

    with UnitDisplay(_out, _err, title=cfg.name, total=total, quiet=args.quiet) as display:
        rows = run_ablation(cfg, Path(args.out), command=command, on_row=display.unit, warn=_warn)
    cols = [c for c in ("variant", "resolution", "tokens", "macs", "latency_ms", "latency_iqr_ms", "ttft_ms") if c in rows[0]]
    table = Table(title=f"ablation {cfg.name} -> {args.out}/results.csv")
    for c in cols:
        table.add_column(c, no_wrap=True)
    for r in rows:
        table.add_row(*(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    _out.print(table)
    if args.report:
        from .report import report_ablation

        _out.print(f"report: {report_ablation(Path(args.out), Path(args.out))}")
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="STUDY_OR_ABLATION", help="a study name, or a directory written by `archsearch ablate`")
    p.add_argument("--storage", default="sqlite:///archsearch.db", help="Optuna storage URL (for a study)")
    p.add_argument("--out", required=True, help="directory for report.md and its PNG plots (an ablation's own "
                   "directory is allowed: its report is replaced)")
    _overwrite_arg(p)


@_command("report", "write a Markdown report with plots for a study or an ablation", _report_args)
def _report(args: argparse.Namespace) -> int:
    from .report import report_ablation, report_study

    if Path(args.target).is_dir():
        if not (Path(args.target) / "ablation.json").exists():
            raise ConfigError("TARGET", f"{args.target} has no ablation.json (run `archsearch ablate` first)")
        home = Path(args.out).resolve() == Path(args.target).resolve()
        out = prepare_output_dir(args.out, "report", overwrite=args.overwrite or home)
        path = report_ablation(Path(args.target), out)
    else:
        from .pareto import load_study

        study = load_study(args.target, args.storage)
        path = report_study(study, prepare_output_dir(args.out, "report", overwrite=args.overwrite))
    _out.print(f"report: {path}")
    return 0


def _proxy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="reference name or spec YAML path")
    p.add_argument("--kind", default="synflow", help="synflow | naswot | grad_norm | snip | train (default synflow)")
    from .options import TrainProxyConfig as T

    p.add_argument("--width-mult", type=float, default=None, help=f"scaled copy: width multiplier (default {_default(T, 'width_mult')})")
    p.add_argument("--max-depth", type=int, default=None, help=f"scaled copy: depth cap per stage (default {_default(T, 'max_depth')})")
    p.add_argument("--resolution", "-r", type=int, default=None, help=f"input side (default {_default(T, 'resolution')})")
    p.add_argument("--steps", type=int, default=None, help=f"training steps (train; default {_default(T, 'steps')})")
    p.add_argument("--lr", type=float, default=None, help=f"learning rate (train; default {_default(T, 'lr')})")
    p.add_argument("--data", default=None, help=f"fashion-mnist | fashion-mnist-canvas | digits | noise (zero-cost only) | "
                                                f"ImageFolder root (default {_default(T, 'data')})")
    p.add_argument("--data-root", default=None, help="directory with Fashion-MNIST's IDX files")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true")


@_command("proxy", "score a spec with a zero-cost proxy or short training", _proxy_args)
def _proxy(args: argparse.Namespace) -> int:
    import dataclasses

    from .options import ProxyConfig, TrainProxyConfig
    from .proxy import PROXIES, score_proxy
    from .references import load_spec

    spec = load_spec(args.spec)
    # Options left out keep the one default of each (archsearch.options).
    given = {k: v for k, v in (("width_mult", args.width_mult), ("max_depth", args.max_depth), ("resolution", args.resolution),
                               ("data", args.data), ("data_root", args.data_root), ("seed", args.seed)) if v is not None}
    if args.kind == "train":
        from .proxy.train import train_proxy

        given.update({k: v for k, v in (("steps", args.steps), ("lr", args.lr)) if v is not None})
        r = train_proxy(spec, dataclasses.replace(TrainProxyConfig(), **given))
        result = {"kind": "train", "score": r.val_top1, "val_top1": r.val_top1, "val_loss": r.val_loss,
                  "train_loss": r.train_loss, "loss_sum": r.loss_sum, "history": r.history, "seconds": r.seconds,
                  "config": r.config, "trained_spec_hash": r.trained_spec_hash}
    elif args.kind in PROXIES:
        s = score_proxy(spec, args.kind, dataclasses.replace(ProxyConfig(), **given))
        result = {"kind": args.kind, "score": s.score, "seconds": s.seconds, "config": s.config,
                  "scored_spec_hash": s.scored_spec_hash}
    else:
        raise ConfigError("--kind", f"{args.kind!r} is not one of: {', '.join([*PROXIES, 'train'])}")
    nan = [k for k, v in result.items() if isinstance(v, float) and v != v]
    if nan:
        from .errors import MeasurementError

        raise MeasurementError(f"{args.kind}: {', '.join(nan)} came out NaN (a training that diverged?)")
    if args.json:
        print(json.dumps(result))
    else:
        extra = f" (val loss {result['val_loss']:.3f}, loss sum {result['loss_sum']:.2f})" if args.kind == "train" else ""
        _out.print(f"{spec.name or spec.code} {args.kind}: {result['score']:.6g}{extra} in {result['seconds']:.1f} s; "
                   f"scaled copy: {result['config']}")
    return 0


#: proxy-fidelity's plan options: flag -> (where the option lives, its field, its type). Their defaults are
#: read from FidelityPlan and TrainProxyConfig, never written here.
_PLAN_FLAGS = {
    "-n": ("plan", "n", int), "--holdout": ("plan", "n_holdout", int), "--seed": ("plan", "draw_seed", int),
    "--data": ("train", "data", str), "--resolution": ("train", "resolution", int), "--max-depth": ("train", "max_depth", int),
    "--width-mult": ("train", "width_mult", float), "--batch-size": ("train", "batch_size", int),
    "--lr": ("train", "lr", float), "--train-size": ("train", "train_size", int), "--val-size": ("train", "val_size", int),
    "--long-steps": ("plan", "long_steps", int), "--short-steps": ("plan", "short_steps", str),
    "--scalings": ("plan", "scalings", str), "--n-scaling": ("plan", "n_scaling", int),
    "--macs-resolution": ("plan", "macs_resolution", int),
}


def _fidelity_args(p: argparse.ArgumentParser) -> None:
    from .proxy.fidelity import FidelityPlan
    from .options import TrainProxyConfig

    p.add_argument("space", metavar="SPACE.yaml")
    p.add_argument("--out", required=True, help="directory for specs.json, runs.jsonl, fidelity.json, report.md")
    for flag, (where, name, kind) in _PLAN_FLAGS.items():
        default = _default(FidelityPlan if where == "plan" else TrainProxyConfig, name)
        if name == "short_steps":
            default = ",".join(map(str, default))
        elif name == "scalings":
            default = ",".join(f"{r}x{c or 0}" for r, c in default)
        names = [flag, "-r"] if flag == "--resolution" else [flag]
        p.add_argument(*names, dest=f"plan_{name}", metavar=name.upper(), type=kind, default=None, help=f"default {default}")
    p.add_argument("--data-root", default=None, help="directory with Fashion-MNIST's IDX files")
    p.add_argument("--kinds", default="train,zero_cost,cpu_cost", help="which units to run here (default all)")
    p.add_argument("--accelerator", default="cpu", help="cpu | cuda: where the training units run")
    p.add_argument("--workers", type=int, default=1, help="processes running units at once")
    p.add_argument("--deadline-s", type=float, default=None, help="stop starting units after this many seconds")
    p.add_argument("--analyse-only", action="store_true", help="only turn runs.jsonl into the report")
    _quiet_arg(p)


def _int_list(text: str, key: str) -> tuple:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(key, f"expected comma-separated integers, got {text!r}") from None


def _scalings(text: str) -> tuple:
    out = []
    for item in text.split(","):
        try:
            res, cap = item.lower().split("x")
            out.append((int(res), int(cap) or None))
        except ValueError:
            raise ConfigError("--scalings", f"expected RESxCAP items such as 128x4, got {item!r}") from None
    return tuple(out)


def _fidelity_plan(args: argparse.Namespace):
    """The plan: FidelityPlan's defaults with the options given; and the full command that rebuilds it."""
    import dataclasses

    from .proxy.fidelity import FidelityPlan

    plan, train = {"space": args.space}, {}
    for flag, (where, name, _) in _PLAN_FLAGS.items():
        value = getattr(args, f"plan_{name}")
        if value is None:
            continue
        if name == "short_steps":
            value = _int_list(value, flag)
        elif name == "scalings":
            value = _scalings(value)
        elif name in ("max_depth", "macs_resolution"):  # 0: none (no cap; MACs at each spec's own resolution)
            value = value or None
        (plan if where == "plan" else train)[name] = value
    base = FidelityPlan()
    plan = FidelityPlan(**{**plan, "train": dataclasses.replace(base.train, **train)})
    own = (plan.train.resolution, plan.train.max_depth)
    if own not in plan.scalings:  # the plan's own scaling is always one of the subset's
        plan = dataclasses.replace(plan, scalings=plan.scalings + (own,))
    values = {"plan": plan, "train": plan.train}
    parts = ["archsearch proxy-fidelity", args.space, "--out", args.out]
    for flag, (where, name, _) in _PLAN_FLAGS.items():
        value = getattr(values[where], name)
        if name == "short_steps":
            value = ",".join(map(str, value))
        elif name == "scalings":
            value = ",".join(f"{r}x{c or 0}" for r, c in value)
        parts += [flag, str(0 if value is None else value)]
    return plan, " ".join(parts)


@_command("proxy-fidelity", "fidelity study: how well each accuracy signal ranks specs like long training", _fidelity_args)
def _proxy_fidelity(args: argparse.Namespace) -> int:
    from .proxy import fidelity

    plan, command = _fidelity_plan(args)
    from ._display import UnitDisplay

    with UnitDisplay(_out, _err, title="fidelity units", total=None, quiet=args.quiet) as display:

        def show(e) -> None:
            if e.error:
                _warn(f"unit {e.label} failed: {e.error}")
            display.unit(e)

        result = fidelity.run_study(plan, Path(args.out), command=command, kinds=[k.strip() for k in args.kinds.split(",") if k.strip()],
                                    accelerator=args.accelerator, workers=args.workers, data_root=args.data_root,
                                    deadline_s=args.deadline_s, analyse_only=args.analyse_only, progress=show)
    path = result["report"]
    ch = result["chosen"]
    _out.print(f"{result['n_specs']} specs, noise ceiling tau {result['noise_ceiling_tau']}; chosen {ch['name']} "
               f"(tau {ch['tau']}, hold-out {ch['tau_holdout']} on {ch['n_holdout']}) -> {path}")
    return 0


class _LogLine(logging.Handler):
    """The library's log records, one line each: warnings (something to act on) as ``warning: ...``, notes
    (routine events: a fit, a resumed study, a cache used) as they are, or not at all with ``--quiet``."""

    def __init__(self, quiet: bool) -> None:
        super().__init__(logging.WARNING if quiet else logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            _warn(record.getMessage())
        else:
            _err.print(mask_secrets(record.getMessage()), markup=False, highlight=False, soft_wrap=True)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archsearch",
        description="Search and ablate hybrid RepMixer/attention vision encoders (FastViT, FastViTHD).",
    )
    parser.add_argument("--debug", action="store_true", help="on an error, also print the full traceback and its cause")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (configure, run, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        configure(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        unknown = [a for a in extra if a.startswith("-") or "=" not in a]
        if unknown or not getattr(args, "_accepts_overrides", False):
            parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
        args.overrides = extra
    # The library's notes and warnings go to the "archsearch" logger; the command line prints them, one line each.
    handler = _LogLine(quiet=getattr(args, "quiet", False))
    logger = logging.getLogger("archsearch")
    logger.addHandler(handler)
    try:
        with (_interrupts.deferred() if args.command in _LONG_COMMANDS else contextlib.nullcontext(),
              _scoped.log_levels({"archsearch": logging.INFO})):
            return args._run(args)
    except ArchsearchError as e:
        _err.print(f"archsearch {args.command}: error: {mask_secrets(e)}", markup=False, highlight=False, soft_wrap=True)
        if args.debug:
            # Errors are raised "from None" for a one-line message; the cause is still on __context__.
            traceback.print_exception(e.__context__ or e, file=sys.stderr)
        return 2
    except _interrupts.Terminated:
        _err.print(f"archsearch {args.command}: terminated (SIGTERM); finished work is kept, rerun to resume",
                   markup=False, highlight=False)
        return 143
    except KeyboardInterrupt:
        _err.print(f"archsearch {args.command}: interrupted", markup=False, highlight=False)
        return 130
    finally:
        logger.removeHandler(handler)


#: Commands that run long enough to be interrupted mid-work: their interrupts wait for a safe point
#: (archsearch._interrupts), so that Ctrl-C or SIGTERM never lands inside Optuna's or SQLAlchemy's internals.
_LONG_COMMANDS = {"measure", "calibrate", "proxy", "proxy-fidelity", "search", "worker", "ablate"}


def entry() -> None:
    """The ``archsearch`` executable: :func:`main`, then exit without waiting on a library thread that
    nobody stopped (a heartbeat left beating by an interrupt would otherwise keep the process alive)."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    lingering = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    deadline = time.monotonic() + 5.0
    for t in lingering:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in lingering):
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
