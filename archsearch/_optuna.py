"""Optuna's private API, behind one door.

archsearch needs two things Optuna's public API does not offer; each is reached here and nowhere else, and
``tests/test_optuna_adapter.py`` fails, naming the attribute, if an installed Optuna changes it.
"""
from __future__ import annotations

from typing import Any

__all__ = ["get_trial", "storage_of", "trial_id"]


def trial_id(trial: Any) -> int:
    """The storage's id of a running trial. Why: a trial's public ``number`` does not address it in the storage, and the
    loop must read its own finished trial back (and fail an interrupted one) by that id."""
    return trial._trial_id


def storage_of(study: Any) -> Any:
    """The study's storage. Why: the Study API has no lookup of a trial by id and no way to fail another process's
    RUNNING trial (a dead worker's, an interrupted one), which the liveness rules of :mod:`archsearch._storage` need."""
    return study._storage


def get_trial(study: Any, trial_id: int) -> Any:
    """The FrozenTrial with storage id ``trial_id`` (a study's ``trials`` list holds every trial: too slow per trial)."""
    return storage_of(study).get_trial(trial_id)
