"""A front is a claim until it is verified: train every member of a study's Pareto front, and its references, at a
reference setting, and store what training found beside what the search believed.

``verify_front(study, out, setting, seeds)`` trains each (member or reference, seed) once, appending each finished
unit to ``out/units.jsonl`` (a rerun resumes), then writes ``verified.json`` (its keys are fixed for other tools),
``verified.md`` and ``verified.png``. A member is ``at_chance`` when its mean top-1 is within 0.05 of chance, and
``dominated`` when, with its trained top-1 in place of the search's accuracy signal, another verified point (member
or reference) is at least as good in every objective and better in one.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigError
from ..options import ZERO_COST_NAMES, TrainProxyConfig
from ..spec import ArchSpec
from .stats import CHANCE_TOP1

__all__ = ["ACCURACY_SIGNALS", "REFERENCE_SETTING", "VERIFIED_FILE", "Point", "parse_reference", "setting_from",
           "verify_front"]

VERIFIED_FILE, UNITS_FILE = "verified.json", "units.jsonl"
#: Objectives that stand for accuracy in a search (the one that verification replaces by trained top-1).
ACCURACY_SIGNALS = (*ZERO_COST_NAMES, "train_top1", "train_loss_sum")
#: Within this of chance, a mean top-1 says the encoder does not read the task.
AT_CHANCE_MARGIN = 0.05
#: The setting a front is verified at unless told otherwise: the glyphs fidelity study's reference training.
REFERENCE_SETTING = TrainProxyConfig(data="glyphs", steps=300, batch_size=32, train_size=10000, val_size=1000, val_every=300)


def setting_from(overrides: Sequence[str]) -> TrainProxyConfig:
    """:data:`REFERENCE_SETTING` with ``KEY=VALUE`` overrides of its fields (strict: an unknown key is named)."""
    from .._config import apply_overrides, from_data

    return from_data(TrainProxyConfig, apply_overrides(dataclasses.asdict(REFERENCE_SETTING), overrides, source="setting"))


def parse_reference(text: str) -> Tuple[str, int]:
    name, sep, res = text.rpartition("@")
    if not sep or not name or not res.isdigit():
        raise ConfigError("--reference", f"{text!r} is not NAME@RESOLUTION, e.g. fastvithd@1024")
    return name, int(res)


@dataclass(frozen=True)
class Point:
    """One encoder to verify: a front member (``trial``) or a reference (``name``), at its resolution."""

    label: str
    spec: ArchSpec
    resolution: int
    values: Tuple[float, ...]
    trial: Optional[int] = None


def _accuracy_index(names: Sequence[str]) -> int:
    found = [i for i, n in enumerate(names) if n.split("@")[0] in ACCURACY_SIGNALS]
    if len(found) != 1:
        raise ConfigError("STUDY", f"its objectives {list(names)} need exactly one accuracy signal "
                                   f"({', '.join(ACCURACY_SIGNALS)}) for training to replace")
    return found[0]


def points(study, references: Sequence[Tuple[str, int]] = ()) -> Tuple[List[Point], List[Point], List[str]]:
    """(front members, references, objective names): the study's references, or those named as (name, resolution)."""
    from .._study import ATTR_OBJECTIVES
    from ..pareto import pareto_rows
    from ..references import load_spec

    names = study.user_attrs.get(ATTR_OBJECTIVES) or [f"objective_{i}" for i in range(len(study.directions))]
    members = [Point(f"trial {r.number}", r.spec, r.resolution, tuple(r.values), r.number) for r in pareto_rows(study)]
    stored = {(r["name"], int(r["resolution"])): r for r in study.user_attrs.get("references", [])}
    wanted = list(references) or list(stored)
    refs = []
    for name, res in wanted:
        spec = load_spec(name)
        if not isinstance(spec, ArchSpec):
            raise ConfigError("--reference", f"{name} is not a FastViT-family spec: it cannot be trained here")
        values = tuple(stored[(name, res)]["values"]) if (name, res) in stored else ()
        refs.append(Point(f"{name}@{res}", spec, res, values))
    return members, refs, list(names)


def _done(path: Path) -> Dict[str, dict]:
    out: Dict[str, dict] = {}
    if path.exists():
        for raw in path.read_bytes().splitlines():
            try:
                r = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                continue  # a line cut short by a kill: that unit trains again
            if isinstance(r, dict) and isinstance(r.get("key"), str) and isinstance(r.get("top1"), (int, float)):
                out[r["key"]] = r
    return out


def verify_front(study, out: Path, setting: TrainProxyConfig, seeds: Sequence[int] = (0, 1), *,
                 references: Sequence[Tuple[str, int]] = (), on_unit: Optional[Callable[[int, int, str, float], None]] = None,
                 tracking_uri: Optional[str] = None) -> dict:
    """Train every front member and reference with each seed (resuming from ``out/units.jsonl``); write the results."""
    from ..proxy.train import train_proxy

    if len(set(seeds)) < 2:
        raise ConfigError("--seeds", f"need at least 2 different seeds, got {list(seeds)}")
    members, refs, names = points(study, references)
    acc = _accuracy_index(names)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / UNITS_FILE
    done = _done(log)
    todo = [(p, s) for p in [*members, *refs] for s in seeds]
    for k, (p, seed) in enumerate(todo, 1):
        key = f"{p.label}:{p.spec.spec_hash}@{p.resolution}:seed{seed}"
        if key not in done:
            cfg = dataclasses.replace(setting.for_candidate(p.resolution), seed=seed)
            r = train_proxy(p.spec, cfg)
            rec = {"key": key, "label": p.label, "seed": seed, "top1": r.val_top1, "val_loss": r.val_loss,
                   "seconds": round(r.seconds, 1), "input_side": cfg.resolution, "config": dataclasses.asdict(cfg),
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
            done[key] = rec
        if on_unit is not None:
            on_unit(k, len(todo), f"{p.label} {p.spec.code} @ {p.resolution} px seed {seed}", done[key]["top1"])
    result = _result(study, members, refs, names, acc, done, seeds, setting)
    (out / VERIFIED_FILE).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / "verified.md").write_text(_markdown(result), encoding="utf-8")
    _plot(result, out / "verified.png")
    if tracking_uri:
        _track(study, out, result, tracking_uri)
    return result


def _top1(done: Dict[str, dict], p: Point, seeds: Sequence[int]) -> List[float]:
    return [done[f"{p.label}:{p.spec.spec_hash}@{p.resolution}:seed{s}"]["top1"] for s in seeds]


def _result(study, members, refs, names, acc, done, seeds, setting) -> dict:
    from ..pareto import dominates

    directions = [d.name.lower() for d in study.directions]
    directions[acc] = "maximize"  # trained top-1 replaces the signal
    verified = []
    for p in [*members, *refs]:
        top1 = _top1(done, p, seeds)
        values = list(p.values) if p.values else None
        if values is not None:
            values[acc] = statistics.fmean(top1)
        verified.append((p, top1, values))
    rows, ref_rows = [], []
    for p, top1, values in verified:
        mean = statistics.fmean(top1)
        if p.trial is None:
            ref_rows.append({"name": p.label.split("@")[0], "resolution": p.resolution, "arch": p.spec.code,
                             "stride": p.spec.output_stride, "tokens": p.spec.visual_tokens(p.resolution), "top1": top1,
                             "values": values})
            continue
        beaten = [q.label for q, _, v in verified if q is not p and v is not None and values is not None
                  and dominates(v, values, directions)]
        rows.append({"trial": p.trial, "spec_hash": p.spec.spec_hash, "arch": p.spec.code, "resolution": p.resolution,
                     "stride": p.spec.output_stride, "tokens": p.spec.visual_tokens(p.resolution),
                     "search_score": dict(zip(names, p.values)), "top1": top1,
                     "at_chance": mean <= CHANCE_TOP1 + AT_CHANCE_MARGIN, "dominated": bool(beaten), "dominated_by": beaten})
    return {"study": study.study_name, "chance": CHANCE_TOP1, "seeds": list(seeds), "objectives": names,
            "accuracy_objective": names[acc], "setting": dataclasses.asdict(setting), "members": rows, "references": ref_rows,
            "n_at_chance": sum(r["at_chance"] for r in rows), "n_dominated": sum(r["dominated"] for r in rows)}


def _markdown(r: dict) -> str:
    others = [n for n in r["objectives"] if n != r["accuracy_objective"]]
    lines = [f"# Verified front of `{r['study']}`", "",
             f"Every front member and reference trained with seeds {r['seeds']} at the setting in `verified.json` "
             f"(`setting`); chance is {r['chance']}. `{r['accuracy_objective']}` is the search's signal; `top-1` is what "
             "training found. At chance: mean within 0.05 of chance. Dominated: with trained top-1 in place of the "
             "signal, another verified point is at least as good everywhere and better somewhere.", "",
             f"{r['n_at_chance']} of {len(r['members'])} members at chance, {r['n_dominated']} dominated.", "",
             f"| member | arch | resolution | stride | tokens | {r['accuracy_objective']} (search) | "
             + " | ".join(others) + " | top-1 per seed | at chance | dominated |",
             "| --- | --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in others) + " | --- | --- | --- |"]
    for m in r["members"]:
        s = m["search_score"]
        lines.append(f"| trial {m['trial']} | `{m['arch']}` | {m['resolution']} | {m['stride']} | {m['tokens']} | "
                     f"{s[r['accuracy_objective']]:.4g} | " + " | ".join(f"{s[n]:.4g}" for n in others)
                     + f" | {', '.join(f'{v:.3f}' for v in m['top1'])} | {m['at_chance']} | {m['dominated']} |")
    lines += ["", "| reference | arch | resolution | stride | tokens | top-1 per seed |",
              "| --- | --- | ---: | ---: | ---: | --- |"]
    for ref in r["references"]:
        lines.append(f"| {ref['name']} | `{ref['arch']}` | {ref['resolution']} | {ref['stride']} | {ref['tokens']} | "
                     f"{', '.join(f'{v:.3f}' for v in ref['top1'])} |")
    return "\n".join(lines) + "\n"


def _plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._outputs import save_figure

    others = [n for n in r["objectives"] if n != r["accuracy_objective"]] or [r["accuracy_objective"]]
    fig, axes = plt.subplots(1, len(others), figsize=(5 * len(others), 4), squeeze=False)
    for ax, name in zip(axes[0], others):
        i = r["objectives"].index(name)
        xs = [m["search_score"][name] for m in r["members"]]
        ax.scatter(xs, [statistics.fmean(m["top1"]) for m in r["members"]],
                   c=["C3" if m["at_chance"] else "C0" for m in r["members"]],
                   label="front members (red: at chance)")
        for ref in r["references"]:
            if ref["values"]:
                ax.scatter([ref["values"][i]], [statistics.fmean(ref["top1"])], marker="*", s=160, c="k")
                ax.annotate(ref["name"], (ref["values"][i], statistics.fmean(ref["top1"])), fontsize=8)
        ax.axhline(r["chance"], color="grey", ls=":", lw=1)
        ax.set_xlabel(name)
        ax.set_ylabel("trained top-1 (mean of seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _track(study, out: Path, r: dict, uri: str) -> None:
    """Log the verification under the study's MLflow parent run (its id is a study attribute)."""
    from .._observe import ATTR_PARENT_RUN
    from ..tracking import Tracker
    from ..trials import TrackingConfig

    run_id = study.user_attrs.get(ATTR_PARENT_RUN)
    if not run_id:
        return
    tracker = Tracker(TrackingConfig(uri=uri))

    def log() -> None:
        for m in r["members"]:
            tracker.client.log_metric(run_id, f"verify.trial{m['trial']}.top1", statistics.fmean(m["top1"]))
        tracker.client.log_artifacts(run_id, str(out), "verify")

    tracker._run("log the verification", log)
