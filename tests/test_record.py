"""archsearch._record: the trial attribute keys and the typed record read back from a trial."""
import optuna
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from archsearch._record import ATTR_ARCH, ATTR_ERROR, ATTR_INVALID, ATTR_METRICS, ATTR_RESOLUTION, ATTR_RUNG_STEPS, \
    ATTR_RUNGS, ATTR_SPEC, ATTR_SPEC_HASH, ATTR_STOPPED_AT, ATTR_WORKER, TrialRecord
from archsearch.references import get_reference


def _trial(state, values=None, **attrs):
    return create_trial(state=state, values=values, params={"depth": 2}, distributions={"depth": IntDistribution(1, 4)},
                        user_attrs=attrs)


def test_a_complete_trial_reads_back_typed_and_parses_its_spec_once():
    spec = get_reference("fastvithd").spec
    t = _trial(TrialState.COMPLETE, [1.0, 2.0], **{ATTR_SPEC: spec.to_dict(), ATTR_SPEC_HASH: spec.spec_hash,
                                                   ATTR_ARCH: spec.code, ATTR_RESOLUTION: 256, ATTR_METRICS: {"macs": 2.0},
                                                   ATTR_WORKER: "host:1"})
    r = TrialRecord.of(t)
    assert (r.state, r.values, r.resolution, r.metrics, r.worker, r.params) == ("COMPLETE", [1.0, 2.0], 256, {"macs": 2.0},
                                                                                 "host:1", {"depth": 2})
    assert r.spec == spec and r.spec is r.spec, "parsed once, the same object on every read"
    assert r.has_result and not r.stopped_at_rung


def test_pruned_trials_are_results_only_when_a_rung_stopped_them():
    invalid = TrialRecord.of(_trial(TrialState.PRUNED, **{ATTR_INVALID: "attention before repmixer"}))
    assert invalid.spec is None and invalid.invalid_reason == "attention before repmixer" and not invalid.has_result
    stopped = TrialRecord.of(_trial(TrialState.PRUNED, **{ATTR_RUNGS: {"0": [0.5, 1.0]}, ATTR_RUNG_STEPS: [10],
                                                          ATTR_STOPPED_AT: 0}))
    assert stopped.stopped_at_rung and stopped.has_result and stopped.rungs == {"0": [0.5, 1.0]}
    failed = TrialRecord.of(_trial(TrialState.FAIL, **{ATTR_ERROR: "MeasurementError: boom"}))
    assert failed.error == "MeasurementError: boom" and not failed.has_result and failed.values is None


def test_keys_are_what_a_stored_study_holds():
    # The keys are the storage's format: a rename would orphan every study already stored.
    assert (ATTR_SPEC, ATTR_SPEC_HASH, ATTR_RESOLUTION, ATTR_RUNGS, ATTR_STOPPED_AT) == (
        "spec", "spec_hash", "resolution", "rungs", "stopped_at_rung")
    study = optuna.create_study(directions=["minimize"])
    study.add_trial(_trial(TrialState.COMPLETE, [1.0], **{ATTR_RESOLUTION: 64}))
    assert TrialRecord.of(study.trials[0]).resolution == 64
