"""The plan of a fidelity study: what it measures (:class:`FidelityPlan`), its specs, and its units (one
training, or one spec's zero-cost scores) with the records they leave in ``runs.jsonl``."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

from ..errors import ConfigError
from ..options import DataRule, ProxyConfig, ScalingRule, TrainProxyConfig
from ..spec import ArchSpec

RUNS_FILE, SPECS_FILE = "runs.jsonl", "specs.json"


@dataclass(frozen=True)
class FidelityPlan:
    """Everything that decides a study's numbers; stored in ``specs.json`` beside the results."""

    space: str = "search_spaces/fastvithd.yaml"
    n: int = 30
    n_holdout: int = 10
    draw_seed: int = 0
    #: The trained copy (scaling rule, data, optimiser: the library's defaults); its ``steps`` and
    #: ``val_every`` are not used (the budgets below decide them).
    train: TrainProxyConfig = field(default_factory=TrainProxyConfig)
    long_steps: int = 800
    short_steps: Tuple[int, ...] = (50, 100, 200, 400)
    reference_seeds: Tuple[int, int] = (0, 1)
    signal_seed: int = 2
    n_scaling: int = 8
    #: (resolution, depth cap) of the scaling subset; the plan's own scaling is always one of them.
    scalings: Tuple[Tuple[int, Optional[int]], ...] = ((64, 2), (64, 4), (128, 4))
    #: MACs of the full spec are counted at this side (the signal a search at that resolution has); None:
    #: at each spec's own sampled resolution (a study over resolution, whose specs differ in it).
    macs_resolution: Optional[int] = 256

    def __post_init__(self) -> None:
        if self.n < 4 or self.n_holdout < 0:
            raise ConfigError("n", f"need n >= 4 and n_holdout >= 0, got {self.n}, {self.n_holdout}")
        if not self.short_steps or min(self.short_steps) < 1 or max(self.short_steps) >= self.long_steps:
            raise ConfigError("short_steps", f"need 1 <= short budgets < long_steps ({self.long_steps}), got {self.short_steps}")
        if len(set(self.reference_seeds)) != 2 or self.signal_seed in self.reference_seeds:
            raise ConfigError("seeds", "need two different reference seeds and a third signal seed")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FidelityPlan":
        d = dict(d)
        d["train"] = TrainProxyConfig(**d["train"])
        d["short_steps"] = tuple(d["short_steps"])
        d["reference_seeds"] = tuple(d["reference_seeds"])
        d["scalings"] = tuple(tuple(s) for s in d["scalings"])
        return cls(**d)

    def training(self, steps: int, seed: int, resolution: Optional[int] = None, max_depth: Optional[int] = -1,
                 candidate: Optional[int] = None) -> TrainProxyConfig:
        """The training of one unit: ``resolution`` its input side, ``candidate`` the spec's own resolution
        (which a geometry that keeps the deployed grid needs)."""
        cap = self.train.max_depth if max_depth == -1 else max_depth
        val_every = max(1, steps // 4) if steps == self.long_steps else steps
        return dataclasses.replace(self.train, steps=steps, seed=seed, val_every=val_every, max_depth=cap,
                                   resolution=resolution or self.train.resolution, candidate_resolution=candidate)

    def zero_cost(self, seed: int, side: Optional[int] = None, candidate: Optional[int] = None) -> ProxyConfig:
        """The zero-cost proxies' options: the trained copy's scaling rule, geometry and data, one batch of 64."""
        shared = {f.name: getattr(self.train, f.name) for f in (*dataclasses.fields(ScalingRule), *dataclasses.fields(DataRule))}
        return ProxyConfig(**{**shared, "candidate_resolution": candidate}, resolution=side or self.train.resolution,
                           batch_size=64, seed=seed)

    def side(self, resolution: Optional[int]) -> int:
        """The input side the plan trains a spec sampled at ``resolution`` with (its data set's side rule)."""
        return self.train.for_candidate(resolution).resolution


# --- units -------------------------------------------------------------------------------------------

def _stored(out: Path) -> dict:
    """``specs.json``, or one line naming the file when it is damaged (never a JSON traceback)."""
    path = Path(out) / SPECS_FILE
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(stored, dict) or not isinstance(stored.get("specs"), list) or not isinstance(stored.get("plan"), dict):
            raise ValueError("not a study's plan and specs")
        FidelityPlan.from_dict(stored["plan"])
        return stored
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ConfigError("--out", f"{path} is damaged ({str(e).splitlines()[0][:120]}); restore it (git checkout) "
                                   "or start the study in another --out") from None


def write_specs(plan: FidelityPlan, out: Path) -> List[ArchSpec]:
    """Draw the study's specs once and store them with the plan (an existing file is reused: resume)."""
    path = Path(out) / SPECS_FILE
    if path.exists():
        stored = _stored(out)
        if _identity(stored["plan"]) != _identity(json.loads(json.dumps(plan.to_dict()))):
            raise ConfigError("--out", f"{path} holds another plan; use another --out directory or the same options")
        return [ArchSpec.from_dict(s) for s in stored["specs"]]
    from ..space import draw, load_space

    candidates, _ = draw(load_space(plan.space), plan.n + plan.n_holdout, seed=plan.draw_seed)
    specs = [c.spec for c in candidates]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"plan": plan.to_dict(), "specs": [s.to_dict() for s in specs],
                                "resolutions": [c.resolution for c in candidates]}, indent=1), encoding="utf-8")
    return specs


#: Training options a plan does not use to decide its numbers: the budgets and validation points come from
#: the plan, the device and the data's location from the machine that runs a unit.
_NOT_IDENTITY = ("steps", "val_every", "data_root", "accelerator", "devices", "progress_bar", "data_workers")


def _identity(plan: dict) -> dict:
    """What makes two plans the same study (another machine's copy of the same files is the same study);
    a plan stored before an option existed has that option's default."""
    plan = json.loads(json.dumps(FidelityPlan.from_dict(plan).to_dict()))
    return {**plan, "train": {k: v for k, v in plan["train"].items() if k not in _NOT_IDENTITY}}


def load_specs(out: Path) -> Tuple[FidelityPlan, List[ArchSpec]]:
    stored = _stored(out)
    return FidelityPlan.from_dict(stored["plan"]), [ArchSpec.from_dict(s) for s in stored["specs"]]


def load_resolutions(out: Path) -> List[Optional[int]]:
    """Each spec's sampled resolution (None for a study stored before resolutions were kept)."""
    stored = _stored(out)
    return stored.get("resolutions") or [None] * len(stored["specs"])


def _unit(kind: str, index: int, spec: ArchSpec, **fields) -> dict:
    parts = [kind, f"{index:03d}", spec.spec_hash, *(f"{k}={fields[k]}" for k in sorted(fields))]
    return {"id": ":".join(parts), "kind": kind, "index": index, **fields}


def _sides(plan: FidelityPlan, resolutions: Optional[Sequence[Optional[int]]], n: int) -> List[int]:
    """The input side of each spec: its data set's side rule applied to its sampled resolution."""
    return [plan.side(r) for r in (resolutions or [None] * n)]


def plan_units(plan: FidelityPlan, specs: Sequence[ArchSpec], kinds: Iterable[str] = ("train", "zero_cost", "cpu_cost"),
               resolutions: Optional[Sequence[Optional[int]]] = None) -> List[dict]:
    """Every unit of the study, most informative first: the main specs (references, then signals), the
    hold-out specs' references, their training signals, then the scaling subset. ``resolutions``: each
    spec's sampled resolution, which its input side follows when the data set has a side rule."""
    kinds = set(kinds)
    res, cap = plan.train.resolution, plan.train.max_depth
    sides = _sides(plan, resolutions, len(specs))
    grid_kept = plan.train.geometry != "copy"
    main: List[dict] = []
    held_refs: List[dict] = []
    held_signals: List[dict] = []
    for i, spec in enumerate(specs):
        refs, signals = (main, main) if i < plan.n else (held_refs, held_signals)
        side = sides[i]
        at_res = {"candidate": resolutions[i]} if grid_kept and resolutions and resolutions[i] else {}
        if "train" in kinds:
            refs += [_unit("train", i, spec, steps=plan.long_steps, seed=s, resolution=side, max_depth=cap, **at_res)
                     for s in plan.reference_seeds]
            signals += [_unit("train", i, spec, steps=b, seed=plan.signal_seed, resolution=side, max_depth=cap, **at_res)
                        for b in plan.short_steps]
        if "zero_cost" in kinds:
            at = {} if resolutions is None or resolutions[i] is None else {"side": side, "candidate": resolutions[i]}
            refs.append(_unit("zero_cost", i, spec, seed=plan.signal_seed, **at))
        if "cpu_cost" in kinds:
            refs.append(_unit("cpu_cost", i, spec, resolution=side, max_depth=cap, **at_res))
    units: List[dict] = main + held_refs + held_signals
    if "train" in kinds:
        for i, spec in enumerate(specs[: plan.n_scaling]):
            for r, c in plan.scalings:
                if (r, c) != (res, cap):
                    units += [_unit("train", i, spec, steps=plan.long_steps, seed=s, resolution=r, max_depth=c)
                              for s in plan.reference_seeds]
    return units


def done_ids(out: Path) -> set:
    """Ids of the finished units (a line cut short by a kill is skipped: that unit runs again)."""
    if not (Path(out) / RUNS_FILE).exists():
        return set()
    return {r["id"] for r in _collect(out) if "id" in r}

def _collect(out: Path) -> List[dict]:
    """Every finished unit's record in ``runs.jsonl``: lines that are not one (cut short by a kill, hand-edited,
    not UTF-8, a NaN or a word where a number belongs) are skipped, so that their units run again."""
    return _read_runs(out)[0]


#: What a unit's result holds as numbers (where present): a NaN or a word there is no result.
_NUMBERS = ("val_top1", "val_loss", "loss_sum", "train_loss", "seconds", "cpu_s_per_step", "cpu_fixed_s", "params", "macs")


def _why_not_a_unit(r: object) -> Optional[str]:
    import math

    if not isinstance(r, dict) or not isinstance(r.get("id"), str) or not isinstance(r.get("result"), dict):
        return "not a unit's record"
    if not isinstance(r.get("index"), int) or r.get("kind") not in ("train", "zero_cost", "cpu_cost"):
        return "no unit kind or index"
    for key, v in r["result"].items():
        zero_cost = key in ("synflow", "naswot", "grad_norm", "snip")  # -inf is a score (naswot of a degenerate net)
        if key in _NUMBERS or zero_cost:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or (not zero_cost and math.isinf(v)):
                return f"{key} is {str(v)[:20]!r}, not a {'number' if zero_cost else 'finite number'}"
    return None


def _read_runs(out: Path) -> Tuple[List[dict], List[str]]:
    """(the unit records, one note per skipped line)."""
    rows: List[dict] = []
    skipped: List[str] = []
    path = Path(out) / RUNS_FILE
    if not path.exists():
        return rows, skipped
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            r = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            skipped.append(f"line {n}: not JSON (cut short, or not UTF-8)")
            continue
        why = _why_not_a_unit(r)
        if why:
            skipped.append(f"line {n}: {why}")
            continue
        rows.append(r)
    return rows, skipped
