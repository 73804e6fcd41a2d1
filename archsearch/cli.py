"""``archsearch`` command line: parse, call the layers, print. Bad input exits 2 with one line."""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

from rich.console import Console
from rich.table import Table

from .errors import ArchsearchError, ConfigError
from .spec import ArchSpec, parse_resolution

__all__ = ["main"]

_out = Console()
_err = Console(stderr=True)

#: Subcommands by name: (add arguments, run). Filled by ``_command`` where each is defined.
COMMANDS: Dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def _command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (configure, run, help)
        return run

    return register


def _describe_build(spec: ArchSpec, resolution: tuple[int, int], verify: bool = False) -> dict:
    """Params of both forms (meta-device builds: no memory, no init) and the predicted output grid.

    ``verify`` also runs a meta-device forward (shapes only, ~1 s for FastViTHD) and checks that the
    built model's grid is the spec's prediction; the test suite checks this on hundreds of specs.
    """
    import torch

    from .build import build_model, count_params

    model = build_model(spec, device="meta")
    grid = list(spec.grid(resolution))
    if verify:
        with torch.no_grad():
            out = model(torch.empty(1, spec.in_chans, *resolution, device="meta"))
        built = [int(out.shape[-2]), int(out.shape[-1])]
        if built != grid or int(out.shape[1]) != spec.out_channels:  # a bug, not bad input: keep the traceback
            raise AssertionError(f"built output {tuple(out.shape)} != predicted grid {grid} for {spec.code}")
    deploy = build_model(spec, device="meta", inference_mode=True)
    return {
        "name": spec.name or None,
        "spec_hash": spec.spec_hash,
        "arch": spec.code,
        "resolution": list(resolution),
        "params": count_params(model),
        "params_deploy": count_params(deploy),
        "channels": spec.out_channels,
        "grid": grid,
        "tokens": grid[0] * grid[1],
        "stride": spec.output_stride,
    }


def _build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="reference name (see `archsearch references`) or spec YAML path")
    p.add_argument("--resolution", "-r", default="1024", help="input side in pixels, or HxW (default 1024)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verify", action="store_true", help="check the grid with a meta-device forward pass")


@_command("build", "build a spec and report params, output grid, tokens and stride", _build_args)
def _build(args: argparse.Namespace) -> int:
    from .references import load_spec

    info = _describe_build(load_spec(args.spec), parse_resolution(args.resolution), verify=args.verify)
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
    _accept_overrides(p, "the space")


def _accept_overrides(p: argparse.ArgumentParser, what: str) -> None:
    """Trailing ``KEY=VALUE`` arguments (OmegaConf dotlist) anywhere after the command."""
    p.usage = p.format_usage().replace("usage: ", "").strip() + " [KEY=VALUE ...]"
    p.epilog = f"KEY=VALUE: OmegaConf dotlist overrides of {what}, e.g. resolution=[64] stages.0.width=[32]"
    p.set_defaults(overrides=[], _accepts_overrides=True)


@_command("sample", "write N random specs of a space as YAML (deterministic for a seed)", _sample_args)
def _sample(args: argparse.Namespace) -> int:
    from .space import draw, load_space

    space = load_space(args.space, args.overrides)
    candidates, rejected = draw(space, args.n, seed=args.seed)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("--out", f"cannot create {out}: {e.strerror}") from None
    rows = []
    for i, c in enumerate(candidates):
        path = out / f"spec_{i:03d}_{c.spec.spec_hash}.yaml"
        header = f"# sampled from {space.name} (seed {args.seed}, #{i}); evaluate at resolution {c.resolution}\n"
        path.write_text(header + c.spec.to_yaml(), encoding="utf-8")
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
    with open(out / "samples.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["index"])
        writer.writeheader()
        writer.writerows(rows)
    table = Table(title=f"{len(rows)} specs from {space.name} -> {out} ({len(rejected)} invalid draws rejected)")
    for col in ("index", "arch", "resolution", "tokens", "spec_hash"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("index", "arch", "resolution", "tokens", "spec_hash")))
    _out.print(table)
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archsearch",
        description="Search and ablate hybrid RepMixer/attention vision encoders (FastViT, FastViTHD).",
    )
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
    try:
        return args._run(args)
    except ArchsearchError as e:
        _err.print(f"archsearch {args.command}: error: {e}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        _err.print(f"archsearch {args.command}: interrupted", markup=False, highlight=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
