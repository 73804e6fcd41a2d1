"""archsearch._optuna: the private attributes of Optuna archsearch relies on, checked against the installed Optuna."""
import optuna
from optuna.trial import TrialState

from archsearch import _optuna


def test_a_running_trial_and_its_frozen_copy_are_addressed_by_the_storage_id():
    study = optuna.create_study(storage="sqlite:///:memory:")
    trial = study.ask()
    tid = _optuna.trial_id(trial)
    assert isinstance(tid, int)
    frozen = _optuna.get_trial(study, tid)
    assert frozen.number == trial.number and frozen.state == TrialState.RUNNING
    assert _optuna.trial_id(frozen) == tid


def test_the_storage_can_fail_another_process_s_running_trial():
    study = optuna.create_study()
    trial = study.ask()
    storage = _optuna.storage_of(study)
    for method in ("get_trial", "set_trial_state_values", "set_trial_user_attr", "get_all_trials"):
        assert callable(getattr(storage, method)), f"optuna's storage lost {method}"
    assert storage.set_trial_state_values(_optuna.trial_id(trial), TrialState.FAIL)
    assert study.trials[0].state == TrialState.FAIL
