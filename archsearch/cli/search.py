"""Commands of a study: search, worker, pareto."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from rich.table import Table

from .. import _scoped
from .._outputs import prepare_output_dir
from ..errors import mask_secrets
from ..options import DEFAULT_STORAGE

from ._app import _accept_overrides, _command, _err, _out, _overwrite_arg, _quiet_arg, _warn

def _search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("trials", metavar="TRIALS.yaml", help="experiment file (trials/*.yaml)")
    p.add_argument("--n-trials", type=int, default=None, help="total trials of the study (default: the file's n_trials)")
    p.add_argument("--storage", default=None,
                   help=f"Optuna storage URL (default: the file's, else {DEFAULT_STORAGE})")
    p.add_argument("--pareto-out", default=None, help="also export the Pareto front to this directory at the end")
    _overwrite_arg(p)
    p.add_argument("--dry-run", action="store_true",
                   help="check the experiment file, its space and references, print the plan, run nothing")
    _quiet_arg(p)
    _accept_overrides(p, "the experiment file")


def _run_search(args: argparse.Namespace, *, worker: bool) -> int:

    from ..search import run_search
    from ..trials import load_trials

    cfg = load_trials(args.trials, args.overrides)
    if args.dry_run:
        _out.print(f"{args.trials}: {cfg.describe(args.n_trials)}", markup=False, highlight=False, soft_wrap=True)
        return 0
    if args.pareto_out:  # checked before any trial runs, not after they are stored
        prepare_output_dir(args.pareto_out, "pareto", overwrite=args.overwrite, option="--pareto-out")
    from .._display import SearchDisplay

    display = SearchDisplay(_out, _err, study=cfg.study, budget=args.n_trials or cfg.n_trials, quiet=args.quiet)
    # A Ctrl-C or SIGTERM that lands inside a database commit makes SQLAlchemy log the interrupted commit with
    # its traceback; the command says "interrupted" in one line instead (main's one mapping to exit codes).
    with display, _scoped.log_levels({"sqlalchemy.pool": logging.CRITICAL, "sqlalchemy.engine": logging.CRITICAL}):
        result = run_search(cfg, n_trials=args.n_trials, pareto_out=Path(args.pareto_out) if args.pareto_out else None,
                            on_trial=display.trial, on_start=display.start, storage=args.storage,
                            seed_offset=os.getpid() if worker else 0, warn=_warn)
    return _say_result(args, cfg, result, worker=worker)


def _say_result(args: argparse.Namespace, cfg, result, *, worker: bool) -> int:
    """The run's summary, where its front went, and the front as a table; exit 1 when no trial gave a result."""
    _out.print(
        f"study {cfg.study!r} in {result.url}: ran {result.ran} trials here; "
        + ", ".join(f"{v} {k.lower()}" for k, v in result.states.items() if v)
        + f"; stopped by {result.stopped}; {len(result.pareto)} on the Pareto front"
        + ("" if result.tracking else " (MLflow tracking off)")
    )
    _say_where(args, result, cfg)
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


def _say_where(args: argparse.Namespace, result, cfg) -> None:
    """Where the front's table and plot went: the export directory and the study's MLflow parent run."""
    places = []
    if args.pareto_out:
        places.append(f"{args.pareto_out}/ (pareto.md, pareto.csv, pareto.png, the specs)")
    if result.parent_run_id:
        places.append(f"MLflow run {result.parent_run_id} in {mask_secrets(cfg.tracking.uri)} "
                      f"(experiment {cfg.tracking.experiment!r}; artifacts pareto/ once the budget is complete)")
    if not places:
        places.append(f"nowhere yet: `archsearch pareto {cfg.study} --storage {result.url} --out DIR` "
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
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage URL (default %(default)s)")
    p.add_argument("--out", required=True, help="directory for the Pareto specs, pareto.csv, pareto.md, pareto.png")
    p.add_argument("--export", metavar="FORMATS", default=None,
                   help="also export every member as a model folder OUT/trialNNNN (timm,onnx: see `archsearch export`)")
    p.add_argument("--tracking-uri", default=None,
                   help="with --export: log each member's folder as an artifact of its trial's MLflow run")
    _overwrite_arg(p)


@_command("pareto", "export a study's Pareto-optimal specs and tables", _pareto_args)
def _pareto(args: argparse.Namespace) -> int:
    from ..pareto import export_pareto, load_study

    formats = None
    if args.export is not None:
        from ..export._folder import parse_formats

        formats = parse_formats(args.export)  # refused before anything is written
    from ..pareto import require_complete

    study = load_study(args.study, args.storage)
    require_complete(study)
    rows = export_pareto(study, prepare_output_dir(args.out, "pareto", overwrite=args.overwrite))
    _out.print(f"{len(rows)} Pareto-optimal specs -> {args.out} (pareto.csv, pareto.md, pareto.png)")
    if formats:
        from ..export import export_front

        def member(k: int, n: int, number: int, result) -> None:
            _out.print(f"[{k}/{n}] trial {number} {result.arch} @ {result.resolution[0]} px -> {result.out} "
                       f"({', '.join(result.formats)}; timm architecture {result.timm_architecture})")

        export_front(args.study, args.storage, args.out, formats=formats, overwrite=args.overwrite,
                     tracking_uri=args.tracking_uri, on_member=member)
    return 0


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE", help="reference name, spec YAML, or STUDY:TRIAL (with --storage)")
    p.add_argument("--out", required=True, help="folder for timm/, onnx/, README.md (the model card), spec.yaml")
    p.add_argument("--format", default="timm,onnx", help="comma-separated: timm, onnx (default %(default)s)")
    p.add_argument("-r", "--resolution", default=None,
                   help="input resolution (default: the trial's; for a reference or spec file, 1024)")
    p.add_argument("--storage", default=None, help="Optuna storage URL of the study, for SOURCE=STUDY:TRIAL")
    p.add_argument("--weights", default=None,
                   help="a state_dict (.pt/.pth or .safetensors) to export instead of the initial weights")
    p.add_argument("--json", action="store_true")
    _overwrite_arg(p)


@_command("export", "write a spec or a study's trial as a timm model folder, an ONNX deploy model and a model card",
          _export_args)
def _export(args: argparse.Namespace) -> int:
    import json

    from ..export._folder import export_encoder, parse_formats, resolve_source

    formats = parse_formats(args.format)
    spec, resolution, origin = resolve_source(args.source, storage=args.storage)
    res = args.resolution or resolution or 1024
    result = export_encoder(spec, res, Path(args.out), formats=formats, overwrite=args.overwrite, origin=origin,
                            weights=Path(args.weights) if args.weights else None)
    if args.json:
        print(json.dumps({"out": str(result.out), "formats": list(result.formats), "arch": result.arch,
                          "timm_architecture": result.timm_architecture, "needs_archsearch": result.needs_archsearch,
                          "params": result.params, "onnx_max_abs_diff": result.onnx_max_abs_diff}))
    else:
        needs = " (needs `import archsearch`)" if result.needs_archsearch else ""
        _out.print(f"{result.arch} @ {result.resolution[0]}x{result.resolution[1]} px -> {result.out}: "
                   f"{', '.join(result.formats)}; timm architecture {result.timm_architecture}{needs}; model card README.md")
    return 0


