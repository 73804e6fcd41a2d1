"""The multi-fidelity promotion rule on hand-made rung tables."""
from __future__ import annotations

import math

import pytest

from archsearch._rungs import crowding_distance, nondominated_fronts, promotes, rank

MIN_MAX = ["minimize", "maximize"]  # e.g. latency, accuracy


def test_fronts_and_rank():
    table = {0: (10.0, 0.8), 1: (5.0, 0.7), 2: (12.0, 0.6), 3: (5.0, 0.9), 4: (20.0, 0.95)}
    fronts = [sorted(f) for f in nondominated_fronts(table, MIN_MAX)]
    assert fronts == [[3, 4], [0, 1], [2]]
    assert rank(table, MIN_MAX)[:2] in ([3, 4], [4, 3]) and rank(table, MIN_MAX)[-1] == 2


def test_top_third_promotes_asynchronously():
    table = {0: (10.0, 0.8)}
    assert promotes(0, table, MIN_MAX, eta=3), "the first trial at a rung always continues"
    table[1] = (12.0, 0.7)  # dominated by 0
    assert not promotes(1, table, MIN_MAX, eta=3)
    table[2] = (8.0, 0.85)  # dominates 0: best of three
    assert promotes(2, table, MIN_MAX, eta=3)
    for i, v in enumerate([(30.0, 0.5), (31.0, 0.4), (32.0, 0.3)], start=3):
        table[i] = v
    # Six finished: the top two go on; a new non-dominated trial of a sparse region is one of them.
    table[6] = (2.0, 0.5)
    assert len(table) == 7 and promotes(6, table, MIN_MAX, eta=3) and promotes(2, table, MIN_MAX, eta=3)
    assert not promotes(0, table, MIN_MAX, eta=3)


def test_ties_are_broken_by_crowding_then_trial_number():
    # Four mutually non-dominated trials: the extremes (infinite crowding) go first, then the earlier.
    table = {0: (1.0, 0.1), 1: (2.0, 0.5), 2: (3.0, 0.55), 3: (4.0, 0.9)}
    crowd = crowding_distance([0, 1, 2, 3], table)
    assert crowd[0] == crowd[3] == math.inf and crowd[1] > 0 and crowd[2] > 0
    assert rank(table, MIN_MAX)[:2] == [0, 3]
    # Identical values: the earlier trial wins.
    same = {5: (1.0, 0.5), 3: (1.0, 0.5), 4: (1.0, 0.5)}
    assert rank(same, MIN_MAX)[0] == 3 and promotes(3, same, MIN_MAX, eta=3) and not promotes(5, same, MIN_MAX, eta=3)


def test_a_single_objective_is_plain_successive_halving():
    table = {i: (acc,) for i, acc in enumerate([0.5, 0.9, 0.7, 0.6, 0.8, 0.4, 0.3, 0.2, 0.1])}
    winners = [i for i in table if promotes(i, table, ["maximize"], eta=3)]
    assert winners == [1, 2, 4]  # accuracies 0.9, 0.7, 0.8: the top third of nine
    assert [i for i in table if promotes(i, table, ["maximize"], eta=2)] == [1, 2, 3, 4]


def test_nan_counts_as_worst_and_bad_input_is_refused():
    table = {0: (float("nan"), 0.5), 1: (5.0, 0.5)}
    assert rank(table, MIN_MAX) == [1, 0]
    with pytest.raises(ValueError):
        promotes(0, table, MIN_MAX, eta=1)
    with pytest.raises(KeyError):
        promotes(9, table, MIN_MAX, eta=3)
    with pytest.raises(ValueError):
        nondominated_fronts({0: (1.0,)}, MIN_MAX)


def test_accuracy_within_the_tolerance_ties_and_the_exact_objective_decides():
    # (macs, top-1): 0.80 vs 0.79 is within a 5% tie; the smaller MACs then dominates.
    table = {0: (100.0, 0.80), 1: (50.0, 0.79), 2: (60.0, 0.50)}
    assert nondominated_fronts(table, MIN_MAX) == [[0, 1], [2]]
    assert rank(table, MIN_MAX, tolerance=(0.0, 0.05))[0] == 1
    assert not promotes(0, table, MIN_MAX, eta=3, tolerance=(0.0, 0.05)) and promotes(0, table, MIN_MAX, eta=3)
    # Beyond the tolerance the accuracy still counts: 0.80 vs 0.50 is no tie.
    assert rank(table, MIN_MAX, tolerance=(0.0, 0.05))[-1] == 2


def test_to_finish_picks_the_best_stopped_trial_at_the_deepest_rung_once():
    from types import SimpleNamespace

    from optuna.trial import TrialState

    from archsearch._rungs import to_finish

    def t(number, state, rungs, stopped=None, spec=None):
        attrs = {"rungs": {str(i): v for i, v in enumerate(rungs)}, "spec_hash": spec or f"s{number}"}
        if stopped is not None:
            attrs["stopped_at_rung"] = stopped
        return SimpleNamespace(number=number, state=state, user_attrs=attrs, params={"n": number})

    trials = [t(0, TrialState.COMPLETE, [(10, 0.5), (10, 0.7), (10, 0.8)]),
              t(1, TrialState.PRUNED, [(5, 0.4)], stopped=0),
              t(2, TrialState.PRUNED, [(8, 0.5), (8, 0.6)], stopped=1),
              t(3, TrialState.PRUNED, [(12, 0.3), (12, 0.5)], stopped=1)]
    assert to_finish(trials, MIN_MAX).number == 2  # rung 1 is the deepest any was stopped at; 2 beats 3 there
    trials.append(t(4, TrialState.WAITING, [], spec="s2"))  # queued already: the next one
    assert to_finish(trials, MIN_MAX).number == 3
    assert to_finish([trials[0]], MIN_MAX) is None


def test_a_timed_study_finishes_its_front_in_the_last_share_of_its_time():
    from types import SimpleNamespace

    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    from archsearch._rungs import queue_finisher
    from archsearch.trials import FidelityConfig

    study = optuna.create_study(directions=["minimize", "maximize"])
    for n, (macs, acc) in enumerate([(5.0, 0.4), (8.0, 0.6)]):
        study.add_trial(create_trial(state=TrialState.PRUNED, params={"w": n}, distributions={"w": CategoricalDistribution([0,
                                                                                                                            1])},
                                     user_attrs={"rungs": {"0": [macs, acc]}, "stopped_at_rung": 0, "spec_hash": f"s{n}"}))
    fidelity = FidelityConfig(metric="train_top1", rungs=[2, 4], finish_share=0.25)
    objectives = [SimpleNamespace(name="macs", direction="minimize"), SimpleNamespace(name="train_top1", direction="maximize")]
    # A search bounded by time (n_trials huge): nothing is queued early in its time, one trial late in it.
    queue_finisher(study, fidelity, objectives, budget=100000, counted=2, elapsed_share=0.5)
    assert not study.get_trials(states=(TrialState.WAITING,))
    queue_finisher(study, fidelity, objectives, budget=100000, counted=2, elapsed_share=0.8)
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    # The best stopped trial of the front (both are non-dominated; the earlier wins the tie): its params, fixed.
    assert waiting.user_attrs["finishes"] in (0, 1)
    assert waiting.system_attrs["fixed_params"] == {"w": waiting.user_attrs["finishes"]}
