"""The rung schedule of a multi-fidelity multi-objective search: its promotion rule (asynchronous successive
halving whose ranking is non-dominated sorting, as in Syne Tune's MOASHA) and a trial's training rung by rung
(:func:`train_in_rungs`, with its checkpoints under the study's cache folder).

A trial that finished rung ``r`` continues to rung ``r + 1`` only if it is among the top ``max(1, n // eta)``
of the ``n`` trials finished at rung ``r`` so far (itself included), ranked by non-dominated sorting over the
study's objectives with the rung's accuracy, ties inside a front broken by crowding distance (larger
first: the front's extremes and sparse regions go on), then by trial number (earlier first). The decision
is made at once: a worker never waits for a rung to fill (the "stopping" variant of ASHA), so the first
trial at a rung always continues and later ones must beat the rung's standing.

The rule is pure functions of a rung table, so that every worker decides alike from the same stored values.
"""
from __future__ import annotations

import math
from typing import Dict, Hashable, List, Mapping, Sequence

from .pareto import dominates_minimised
from ._record import ATTR_FINISHES, ATTR_METRICS, ATTR_RUNG_STEPS, ATTR_RUNGS, ATTR_SPEC_HASH, ATTR_STOPPED_AT

__all__ = ["crowding_distance", "nondominated_fronts", "promotes", "rank", "remove_orphan_checkpoints", "rung_dir", "summary",
           "queue_finisher", "to_finish", "tolerances", "train_in_rungs"]


def _points(table: Mapping[Hashable, Sequence[float]], directions: Sequence[str]) -> Dict[Hashable, tuple]:
    """Every trial's values as a point to minimise; a NaN counts as the worst value."""
    pts = {}
    for k, v in table.items():
        if len(v) != len(directions):
            raise ValueError(f"trial {k}: {len(v)} values for {len(directions)} objectives")
        pts[k] = tuple(math.inf if math.isnan(x) else (x if d == "minimize" else -x) for x, d in zip(map(float, v), directions))
    return pts


def _fronts(pts: Mapping[Hashable, tuple], tolerance: Sequence[float] = ()) -> List[List[Hashable]]:
    left = dict(pts)
    fronts: List[List[Hashable]] = []
    while left:
        front = [k for k, p in left.items() if not any(dominates_minimised(q, p, tolerance) for j, q in left.items() if j != k)]
        fronts.append(front)
        for k in front:
            del left[k]
    return fronts


def nondominated_fronts(table: Mapping[Hashable, Sequence[float]], directions: Sequence[str]) -> List[List[Hashable]]:
    """Fronts of ``table`` (id -> objective values), best first; a NaN value counts as the worst."""
    return _fronts(_points(table, directions))


def crowding_distance(front: Sequence[Hashable], table: Mapping[Hashable, Sequence[float]]) -> Dict[Hashable, float]:
    """NSGA-II's crowding distance of each member of ``front`` (inf for a front of at most two, and at the
    extremes of each objective along which the front is spread)."""
    if len(front) <= 2:
        return {k: math.inf for k in front}
    dist = {k: 0.0 for k in front}
    for m in range(len(table[front[0]])):
        order = sorted(front, key=lambda k: table[k][m])
        lo, hi = table[order[0]][m], table[order[-1]][m]
        if not hi > lo or math.isinf(hi - lo):  # all equal (or unbounded) along m: no one is an extreme
            continue
        dist[order[0]] = dist[order[-1]] = math.inf
        for prev, k, nxt in zip(order, order[1:], order[2:]):
            dist[k] += (table[nxt][m] - table[prev][m]) / (hi - lo)
    return dist


def rank(table: Mapping[Hashable, Sequence[float]], directions: Sequence[str], tolerance: Sequence[float] = ()) -> List[Hashable]:
    """Every id of ``table``, best first: front, then crowding distance (larger first), then id. ``tolerance``:
    per objective, the relative difference that counts as a tie (an accuracy within the seed noise), so
    that the exact objectives (MACs, predicted latency) decide between such trials."""
    pts = _points(table, directions)
    out: List[Hashable] = []
    for front in _fronts(pts, tolerance):
        crowd = crowding_distance(front, pts)
        out += sorted(front, key=lambda k: (-crowd[k], k))
    return out


def promotes(trial: Hashable, table: Mapping[Hashable, Sequence[float]], directions: Sequence[str], eta: int,
             tolerance: Sequence[float] = ()) -> bool:
    """Whether ``trial`` (one of ``table``'s ids: the trials finished at this rung) goes on to the next rung."""
    if eta < 2:
        raise ValueError(f"eta must be >= 2, got {eta}")
    if trial not in table:
        raise KeyError(trial)
    keep = max(1, len(table) // eta)
    return trial in rank(table, directions, tolerance)[:keep]


def summary(trials: Sequence, rungs: Sequence[int]) -> dict:
    """How a multi-fidelity study spent its training: trials stopped at each rung, trials that reached the
    last, and the training steps saved against training every one of them to the full budget.
    ``trials``: Optuna trials (their ``user_attrs`` ``rungs``/``stopped_at_rung``) that finished; ``rungs``:
    the steps at each rung (:attr:`FidelityConfig.steps`: a screen's rung has 0)."""
    stopped = {str(i): 0 for i in range(len(rungs) - 1)}  # str keys: the summary is stored as JSON
    full, trained = 0, 0
    for t in trials:
        done = t.user_attrs.get(ATTR_RUNGS)
        if not done:
            continue
        at = t.user_attrs.get(ATTR_STOPPED_AT)
        if at is None:
            if len(done) == len(rungs):
                full += 1
                trained += rungs[-1]
            continue
        stopped[str(at)] = stopped.get(str(at), 0) + 1
        trained += rungs[int(at)]
    n = full + sum(stopped.values())
    budget = n * rungs[-1]
    return {"rungs": list(rungs), "stopped_at": stopped, "full_budget": full, "trials": n,
            "steps_trained": trained, "steps_if_all_full": budget,
            "saved_fraction": round(1 - trained / budget, 3) if budget else 0.0}


# --- a trial's training, rung by rung --------------------------------------------------------------------------


def to_finish(trials: Sequence, directions: Sequence[str], tolerance: Sequence[float] = ()):
    """The stopped trial to train to the full budget next, or None: among the trials stopped at the
    deepest rung any trial was stopped at, the best ranked there (the provisional front first) whose spec
    has no full-budget, running or queued trial yet. ``trials``: the study's Optuna trials."""
    from optuna.trial import TrialState

    taken = {t.user_attrs.get(ATTR_SPEC_HASH) for t in trials
             if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)}
    # A trial the zero-cost screen stopped (rung of 0 steps) has no training to finish.
    stopped = [t for t in trials if t.state == TrialState.PRUNED and ATTR_STOPPED_AT in t.user_attrs
               and (t.user_attrs.get(ATTR_RUNG_STEPS) or [1])[-1] > 0]
    if not stopped:
        return None
    deepest = max(t.user_attrs[ATTR_STOPPED_AT] for t in stopped)
    key = str(deepest)
    table = {t.number: t.user_attrs[ATTR_RUNGS][key] for t in trials
             if key in t.user_attrs.get(ATTR_RUNGS, {}) and t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    by_number = {t.number: t for t in stopped if t.user_attrs[ATTR_STOPPED_AT] == deepest}
    for number in rank(table, directions, tolerance):
        t = by_number.get(number)
        if t is not None and t.user_attrs.get(ATTR_SPEC_HASH) not in taken:
            return t
    return None


def queue_finisher(study, fidelity, objectives, budget: int, counted: int, elapsed_share: float = 0.0) -> None:
    """In the last ``finish_share`` of the budget (``counted`` trials used of ``budget``, or ``elapsed_share`` of
    a study's ``timeout_s`` gone), queue a stopped trial of the provisional front to train to the full budget
    (:func:`to_finish`), one at a time, so that the final front is made of full-budget trials rather than of
    the few that won every rung early on."""
    from optuna.trial import TrialState

    share = fidelity.finish_share
    slots = round(share * budget)
    late = share > 0 and elapsed_share >= 1 - share
    if not late and (not slots or counted < budget - slots):
        return
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return
    t = to_finish(trials, [str(o.direction) for o in objectives], tolerances(fidelity, [o.name for o in objectives]))
    if t is not None:
        study.enqueue_trial(t.params, user_attrs={ATTR_FINISHES: t.number})


def tolerances(fidelity, names: Sequence[str]) -> List[float]:
    """Per objective, the relative difference that ties at a rung: the fidelity metric's, else 0."""
    return [fidelity.tie_tolerance if n == fidelity.metric else 0.0 for n in names]


def train_in_rungs(trial, *, measurer, fidelity, objectives, spec, resolution: int, values: dict, checkpoint_dir,
                   finishing: bool = False) -> dict:
    """Train ``spec`` once, deciding at each rung boundary whether the trial stays in the top 1/eta of its
    rung (:func:`promotes`, with the fidelity metric's ``tie_tolerance``), and return ``values`` with the
    fidelity metric at the last rung; a trial stopped at a rung ends PRUNED with its rung values. ``values``
    holds the cheap objectives, measured before. A ``finishing`` trial (one of the provisional front's,
    re-run to the full budget) records its rungs but is never stopped.

    With ``fidelity.screen``, rung 0 comes before any training: the zero-cost proxy's score stands in the
    fidelity metric's place (ranked as the proxy's direction, no tie tolerance: the score is exact), and a
    trial it stops has built no training run and loaded no training data.
    At the lower training rungs the signal costs no full validation pass: ``train_loss_sum`` is the sum so far,
    ``train_top1`` the top-1 on ``fidelity.val_subset`` validation images; the last rung validates in full.
    The run's checkpoint lives in ``checkpoint_dir`` (the study's, never ``$TMPDIR``), is written at each
    lower boundary so that a crashed trial's retry resumes there, and goes when the trial ends."""
    names = [o.name for o in objectives]
    steps = fidelity.steps
    offset = len(steps) - len(fidelity.rungs)  # 1 with a screen: training boundary i is rung i + 1
    field = "val_top1" if fidelity.metric == "train_top1" else "loss_sum"
    rungs: Dict[str, list] = {}

    def decide(i: int, signal: float, screen: bool = False) -> bool:
        values[fidelity.screen if screen else fidelity.metric] = float(signal)
        rungs[str(i)] = [float(signal) if n == fidelity.metric else values[n] for n in names]
        # Stored before deciding, so that the other workers rank against it at once.
        trial.set_user_attr(ATTR_RUNGS, dict(rungs))
        trial.set_user_attr(ATTR_RUNG_STEPS, steps[: i + 1])
        if finishing:
            return True
        directions = [SCREEN_DIRECTION if screen and n == fidelity.metric else o.direction for n, o in zip(names, objectives)]
        return promotes(trial.number, _rung_table(trial, i, rungs[str(i)]), directions, fidelity.eta,
                        () if screen else tolerances(fidelity, names))

    if fidelity.screen and not decide(0, measurer.proxy_score(spec, fidelity.screen, resolution)["score"], screen=True):
        _stop(trial, values, fidelity, 0)
    checkpoint = _checkpoint_for(checkpoint_dir, f"{spec.spec_hash}-{resolution}-{'-'.join(map(str, fidelity.rungs))}")
    hook = _hook(fidelity, lambda i, signals: decide(i + offset, signals[field]), checkpoint)
    try:
        result = measurer.train_with_rungs(spec, resolution, hook)
    finally:
        for leftover in (checkpoint, *checkpoint.parent.glob(f"{checkpoint.name}.*.tmp")):
            leftover.unlink(missing_ok=True)
    if result["stopped_at"] is not None:
        _stop(trial, values, fidelity, result["stopped_at"] + offset)
    decide(len(steps) - 1, _final(fidelity, result))
    return values


#: The direction of every zero-cost proxy's score (higher ranks better), in a screen's rung table.
SCREEN_DIRECTION = "maximize"


def _rung_table(trial, i: int, mine: list) -> Dict[Hashable, list]:
    """Every trial's values at rung ``i``, ``trial``'s own as ``mine``. A failed trial (a killed worker's) does
    not stand in the table: its retry, with the same values, would otherwise lose the tie to it and nothing
    would reach the last rung."""
    from optuna.trial import TrialState

    table = {t.number: t.user_attrs[ATTR_RUNGS][str(i)] for t in trial.study.get_trials(deepcopy=False)
             if str(i) in t.user_attrs.get(ATTR_RUNGS, {}) and t.state != TrialState.FAIL}
    table[trial.number] = mine
    return table


def _stop(trial, values: dict, fidelity, at: int):
    """End ``trial`` PRUNED at rung ``at``, its values kept."""
    import optuna

    trial.set_user_attr(ATTR_STOPPED_AT, at)
    trial.set_user_attr(ATTR_METRICS, values)
    where = (f"the {fidelity.screen} screen (no training)" if fidelity.steps[at] == 0
             else f"rung {at} ({fidelity.steps[at]} steps)")
    raise optuna.TrialPruned(f"stopped at {where}: not in the top 1/{fidelity.eta} there")


def _hook(fidelity, decide, checkpoint=None):
    from .proxy.train import RungHook

    return RungHook(fidelity.rungs, decide, fidelity.val_subset if fidelity.metric == "train_top1" else 0, checkpoint)


def _final(fidelity, result: dict) -> float:
    return float(result["val_top1"] if fidelity.metric == "train_top1" else result["loss_sum"])


def train_reference(measurer, fidelity, spec, resolution: int) -> float:
    """A reference's fidelity metric at the full budget, from the same (cached) run a trial of it gets."""
    return _final(fidelity, measurer.train_with_rungs(spec, resolution, _hook(fidelity, lambda _i, _s: True)))


def _checkpoint_for(directory, run: str):
    """This process's checkpoint file for ``run``; one that a dead process left for the same run (a crashed
    trial, whose retry this is) is taken over, so that training resumes from its last rung."""
    import os

    from ._storage import process_gone

    mine = directory / f"{run}-{os.getpid()}.ckpt"
    for other in directory.glob(f"{run}-*.ckpt"):
        pid = other.stem.rsplit("-", 1)[1]
        if other != mine and pid.isdigit() and process_gone(int(pid)):
            try:
                other.replace(mine)
                break
            except FileNotFoundError:  # another worker took it over first
                continue
    return mine


def rung_dir(url: str, study_name: str):
    """A study's rung checkpoints: under the cache directory, one folder per (storage, study)."""
    import hashlib

    from .errors import mask_secrets
    from .measure.cache import default_cache_dir

    key = hashlib.sha256(f"{mask_secrets(url)}\n{study_name}".encode()).hexdigest()[:16]
    path = default_cache_dir() / "rungs" / key
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_orphan_checkpoints(directory) -> None:
    """Checkpoints of trials whose process is gone (kill -9): called when the study's budget is complete,
    since until then a retry of the crashed trial resumes from its checkpoint."""
    import os

    from ._storage import process_gone

    for ckpt in directory.glob("*-*.ckpt*"):
        pid = ckpt.name.split(".ckpt", 1)[0].rsplit("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and process_gone(int(pid)):
            ckpt.unlink(missing_ok=True)
