"""archsearch.trials: an experiment file, loaded strictly, and what a run of it would do."""
import pytest

from archsearch.errors import ConfigError
from archsearch.trials import load_trials


def test_describe_names_the_study_space_objectives_and_references_without_running(tmp_path):
    cfg = load_trials("trials/quickstart.yaml", ["n_trials=3"])
    line = cfg.describe()
    assert f"study {cfg.study!r}" in line and "3 trials" in line and "nothing run" in line
    assert all(o.name in line for o in cfg.objectives)
    assert "9 trials" in cfg.describe(9)


def test_a_bad_key_is_named_with_its_path():
    with pytest.raises(ConfigError) as e:
        load_trials("trials/quickstart.yaml", ["objectives=[{name: nope}]"])
    assert "objectives" in str(e.value) and "nope" in str(e.value)
