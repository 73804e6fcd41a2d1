"""Commands about specs and spaces: build, references, sample."""
from __future__ import annotations

import argparse
import csv
import io
import json

from rich.table import Table

from .._outputs import prepare_output_dir, record_outputs, write_atomic
from ..spec import parse_resolution

from ._app import (_accept_overrides, _command, _out, _overwrite_arg)

def _build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="reference name (see `archsearch references`) or spec YAML path")
    p.add_argument("--resolution", "-r", default="1024", help="input side in pixels, or HxW (default 1024)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verify", action="store_true", help="check the grid with a meta-device forward pass")


@_command("build", "build a spec and report params, output grid, tokens and stride", _build_args)
def _build(args: argparse.Namespace) -> int:
    from ..references import load_spec

    from ..build import describe

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
    from ..references import REFERENCES

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


@_command("sample", "write N random specs of a space as YAML (deterministic for a seed)", _sample_args)
def _sample(args: argparse.Namespace) -> int:
    from ..space import draw, load_space

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
    record_outputs(out, "sample", [str(r["file"]) for r in rows] + ["samples.csv"])
    table = Table(title=f"{len(rows)} specs from {space.name} -> {out} ({len(rejected)} invalid draws rejected)")
    for col in ("index", "arch", "resolution", "tokens", "spec_hash"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("index", "arch", "resolution", "tokens", "spec_hash")))
    _out.print(table)
    return 0


