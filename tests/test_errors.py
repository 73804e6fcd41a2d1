"""Bad input gives one line naming the offending key, through the API and through the CLI."""
from __future__ import annotations

import subprocess
import sys

import pytest

from archsearch.errors import ConfigError
from archsearch.space import load_space
from archsearch.spec import ArchSpec

from .conftest import run_cli
from .conftest import TINY

# (description, text replacing a line of TINY or a whole document, expected key in the message)
BAD_SPACES = [
    ("unknown top-level key", TINY + "resolutions: [64]\n", "resolutions: unknown key"),
    ("misspelt stage key", TINY.replace("width_mult: [1, 2]", "widht_mult: [1, 2]"), "stages[1].widht_mult: unknown key"),
    ("wrong element type", TINY.replace("num_stages: [2, 3]", "num_stages: [two]"), "num_stages[0]:"),
    ("scalar instead of list", TINY.replace("num_stages: [2, 3]", "num_stages: 3"), "num_stages: expected a list"),
    ("empty choice list", TINY.replace("resolution: [64]", "resolution: []"), "resolution: choice list is empty"),
    ("stride needs too many stages", TINY.replace("[8, 16, 32]", "[8, 256]"), "output_stride: choice 256 needs 6"),
    ("stride not 4*2^k", TINY.replace("[8, 16, 32]", "[8, 12]"), "output_stride: choice 12 is not 4 times"),
    ("unknown token mixer", TINY.replace("[repmixer, attention]}", "[repmixer, conv]}"), "stages[1].token_mixer: choice 'conv'"),
    ("object instantiation key", TINY.replace("fixed: {head_dim: 8}", "fixed: {head_dim: 8, _target_: os.system}"),
     "fixed._target_: unknown key"),
    ("bad fixed value", TINY.replace("fixed: {head_dim: 8}", "fixed: {head_dim: 8, norm: groupnorm}"), "fixed.norm: 'groupnorm'"),
    ("interpolation", TINY.replace("name: tiny", "name: ${oc.env:HOME}"), "name: interpolation"),
    ("more stages than entries", TINY.replace("num_stages: [2, 3]", "num_stages: [2, 4]"), "num_stages: choice 4 needs 4"),
    ("first stage relative width", TINY.replace("{depth: [1], width: [8, 16]}", "{depth: [1], width_mult: [2]}"),
     "stages[0].width_mult: the first stage"),
    ("both width kinds", TINY.replace("width_mult: [1, 2],", "width_mult: [1, 2], width: [8],"),
     "stages[1].width: give exactly one"),
    ("impossible attention width", TINY.replace("width: [4, 32], token_mixer: [attention]",
                                                "width: [4, 12], token_mixer: [attention]"),
     "stages[2].width: no reachable width is divisible by head_dim 8"),
    ("missing required key", "\n".join(l for l in TINY.splitlines() if not l.startswith("num_stages")),
     "num_stages: required key"),
    ("negative depth", TINY.replace("{depth: [1], width: [8, 16]}", "{depth: [-1], width: [8, 16]}"),
     "stages[0].depth: choice -1"),
    ("malformed YAML", TINY.replace("resolution: [64]", "resolution: [64"), "malformed YAML at line"),
    ("document is a list", "- 1\n- 2\n", "expected a mapping"),
    ("bad rules value", TINY + "rules: {min_grid: 0}\n", "rules.min_grid: must be >= 1"),
]

BAD_SPECS = [
    ("unknown spec key", "stages: [{depth: 1, width: 8}]\nstem: big\n", "stem: unknown key"),
    ("zero depth", "stages: [{depth: 0, width: 8}]\n", "stages[0].depth: must be in 1..256"),
    ("width not a multiple", "stages: [{depth: 1, width: 32}, {depth: 1, width: 48}]\n", "stages[1].width: 48 is not a multiple"),
    ("missing stages", "norm: batchnorm\n", "stages: required key"),
    ("python object tag", "stages: !!python/object/apply:os.system [ls]\n", "malformed YAML"),
    ("string depth", "stages: [{depth: deep, width: 8}]\n", "stages[0].depth:"),
    ("unknown pos enc", "stages: [{depth: 1, width: 8, pos_enc: rope}]\n", "stages[0].pos_enc: 'rope'"),
]


@pytest.mark.parametrize("what, text, expected", BAD_SPACES, ids=[c[0] for c in BAD_SPACES])
def test_bad_space_one_line_error(tmp_path, what, text, expected):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("what, text, expected", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_one_line_error(tmp_path, what, text, expected):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        ArchSpec.load(path)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "archsearch.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.slow
def test_cli_bad_inputs_exit_2_with_one_line(tmp_path):
    bad_space = tmp_path / "space.yaml"
    bad_space.write_text(BAD_SPACES[1][1])
    bad_spec = tmp_path / "spec.yaml"
    bad_spec.write_text(BAD_SPECS[2][1])
    cases = [
        (["build", "fastvit_xxl"], "neither a reference"),
        (["build", str(tmp_path / "missing.yaml")], "no such file"),
        (["build", str(bad_spec)], "stages[1].width"),
        (["build", "fastvithd", "--resolution", "big"], "resolution: 'big'"),
        (["sample", str(bad_space), "-n", "2", "--out", str(tmp_path / "o")], "stages[1].widht_mult"),
        (["sample", str(tmp_path), "-n", "2", "--out", str(tmp_path / "o")], "is a directory"),
    ]
    for i, (args, expected) in enumerate(cases):
        # The first through the executable itself; the rest in this process (the same main, no start-up).
        proc = _cli(*args) if i == 0 else run_cli(args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and expected in lines[0], (args, proc.stderr)


def test_passwords_never_reach_messages(capsys):
    from archsearch.cli import main
    from archsearch.errors import mask_secrets

    assert mask_secrets("postgresql://u:S3cret@127.0.0.1:1/x and http://a:b@h") == "postgresql://u:***@127.0.0.1:1/x and http://a:***@h"
    assert mask_secrets("sqlite:///a.db") == "sqlite:///a.db"
    from .conftest import ROOT

    code = main(["search", str(ROOT / "trials" / "quickstart.yaml"), "--storage", "postgresql://u:S3cret@127.0.0.1:1/x",
                 "tracking.enabled=false"])
    err = capsys.readouterr().err
    assert code == 2 and "S3cret" not in err and "u:***@127.0.0.1" in err
