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


@pytest.mark.parametrize("override, key", [
    ("fidelity={rungs: [30], screen: nope}", "screen"),  # not a zero-cost proxy
    ("fidelity={rungs: [30]}", "rungs"),  # one training rung and no screen: nothing to decide
    ("fidelity={rungs: [30, 10], screen: naswot}", "rungs"),
])
def test_a_bad_fidelity_block_names_its_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_trials("trials/quickstart_rungs.yaml", [override])
    assert key in str(e.value)


def test_a_screen_is_rung_0_with_no_training():
    f = load_trials("trials/quickstart_rungs.yaml", ["fidelity={rungs: [90], screen: naswot, eta: 2}"]).fidelity
    assert f is not None and f.steps == [0, 90] and f.rungs == [90]
    plain = load_trials("trials/quickstart_rungs.yaml", ["fidelity={rungs: [30, 90]}"]).fidelity
    assert plain is not None and plain.steps == plain.rungs == [30, 90]
    shipped = load_trials("trials/quickstart_rungs.yaml").fidelity  # the quickstart screens with naswot
    assert shipped is not None and shipped.screen == "naswot" and shipped.steps == [0, 90]
