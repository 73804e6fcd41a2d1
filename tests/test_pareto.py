"""archsearch.pareto: the front of a study, one row per design, dominance over the references."""
import optuna
from optuna.trial import TrialState, create_trial

from archsearch._record import ATTR_RESOLUTION, ATTR_SPEC, ATTR_SPEC_HASH
from archsearch.pareto import dominates, is_fastvithd_like, pareto_rows
from archsearch.references import get_reference


def _add(study, spec, res, values, state=TrialState.COMPLETE):
    study.add_trial(create_trial(state=state, values=values if state == TrialState.COMPLETE else None,
                                 user_attrs={ATTR_SPEC: spec.to_dict(), ATTR_SPEC_HASH: spec.spec_hash, ATTR_RESOLUTION: res}))


def test_dominates_honours_directions():
    assert dominates([1, 1], [2, 1], ["minimize", "minimize"])
    assert not dominates([1, 1], [1, 1], ["minimize", "minimize"]), "equal is not better"
    assert dominates([1, 3], [2, 2], ["minimize", "maximize"])
    assert not dominates([1, 1], [2, 2], ["minimize", "maximize"])


def test_front_keeps_one_row_per_design_and_names_the_beaten_references():
    hd, t8, sa12 = (get_reference(n).spec for n in ("fastvithd", "fastvit_t8", "fastvit_sa12"))
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.set_user_attr("references", [{"name": "ref", "values": [5.0, 5.0]}])
    _add(study, hd, 256, [1.0, 4.0])
    _add(study, hd, 256, [1.0, 4.0])  # the same design sampled again: one row
    _add(study, t8, 256, [4.0, 1.0])
    _add(study, sa12, 256, [5.0, 5.0])  # dominated
    _add(study, sa12, 512, [0.5, 0.5], state=TrialState.PRUNED)  # no values: never on the front
    rows = pareto_rows(study)
    assert [(r.number, r.spec.code, r.resolution) for r in rows] == [(0, hd.code, 256), (2, t8.code, 256)]
    assert all(r.dominates == ["ref"] for r in rows)
    assert [r.fastvithd_like for r in rows] == [is_fastvithd_like(hd), is_fastvithd_like(t8)] == [True, False]
