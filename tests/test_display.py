"""The command line's progress: a live display on a terminal (checked through rich's console capture) and
plain [k/N] lines elsewhere."""
from __future__ import annotations

import io

from rich.console import Console

from archsearch._display import SearchDisplay, UnitDisplay, trial_line
from archsearch.progress import TrialEvent, UnitEvent


def _event(**kw) -> TrialEvent:
    base = dict(number=4, state="COMPLETE", values={"macs": 1.5e9, "naswot": 812.25}, finished=3, budget=6, trial_s=2.5,
                elapsed_s=65.0, states={"COMPLETE": 2, "PRUNED": 1, "RUNNING": 1}, front=2, arch="R2-R4-A2/s32",
                resolution=256, running_rungs={5: 1})
    return TrialEvent(**{**base, **kw})


def test_the_terminal_display_shows_the_budget_the_states_and_the_rungs():
    err = Console(file=io.StringIO(), force_terminal=True, width=160, record=True)
    out = Console(file=io.StringIO(), force_terminal=True, width=160)
    display = SearchDisplay(out, err, study="s", budget=6)
    assert not display.plain, "a terminal gets the live display, not lines"
    display.trial(_event())
    err.print(display.renderable())
    text = err.export_text()
    assert "budget 6 trials" in text and "3/6" in text
    assert "2 complete" in text and "1 pruned" in text and "1 running" in text
    assert "Pareto front: 2" in text and "trial 5 past rung 1" in text
    assert "R2-R4-A2/s32" in text and "macs=1.5e+09" in text
    assert out.file.getvalue() == "", "no plain lines on a terminal"


def test_off_a_terminal_each_trial_is_one_plain_line():
    out_file, err_file = io.StringIO(), io.StringIO()
    out, err = Console(file=out_file, width=200), Console(file=err_file, width=200)
    display = SearchDisplay(out, err, study="s", budget=6)
    with display:
        display.trial(_event())
        display.trial(_event(number=5, state="PRUNED", values={}, finished=4, note="output_stride 128 needs 5 stages"))
    lines = out_file.getvalue().splitlines()
    assert lines == [trial_line(_event()), trial_line(_event(number=5, state="PRUNED", values={}, finished=4,
                                                             note="output_stride 128 needs 5 stages"))]
    assert lines[0].startswith("[3/6] trial 4 COMPLETE R2-R4-A2/s32 @ 256 px macs=1.5e+09 naswot=812.2")
    assert lines[1].startswith("[4/6] trial 5 PRUNED") and "needs 5 stages" in lines[1]
    assert "\x1b" not in out_file.getvalue() + err_file.getvalue(), "no control characters"


def test_quiet_shows_nothing():
    out_file, err_file = io.StringIO(), io.StringIO()
    display = SearchDisplay(Console(file=out_file), Console(file=err_file), study="s", budget=6, quiet=True)
    with display:
        display.trial(_event())
    units = UnitDisplay(Console(file=out_file), Console(file=err_file), title="t", total=2, quiet=True)
    with units:
        units.unit(UnitEvent(1, 2, "a @ 64 px", 1.0))
    assert out_file.getvalue() == err_file.getvalue() == ""


def test_units_off_a_terminal():
    out_file = io.StringIO()
    units = UnitDisplay(Console(file=out_file, width=200), Console(file=io.StringIO()), title="t", total=2)
    with units:
        units.unit(UnitEvent(1, 2, "fastvithd @ 64 px", 3.0))
        units.unit(UnitEvent(2, 2, "train:001", 70.0, error="ValueError: x"))
    assert out_file.getvalue().splitlines() == ["[1/2] fastvithd @ 64 px done (3.0 s elapsed)",
                                                "[2/2] train:001 failed: ValueError: x (1 min 10 s elapsed)"]


def test_piped_output_gets_plain_lines_even_with_a_terminal_on_stderr():
    out_file = io.StringIO()
    display = SearchDisplay(Console(file=out_file, width=200), Console(file=io.StringIO(), force_terminal=True),
                            study="s", budget=6)
    assert display.plain and not display.on
    with display:
        display.trial(_event())
    assert out_file.getvalue().startswith("[3/6] trial 4 COMPLETE")

