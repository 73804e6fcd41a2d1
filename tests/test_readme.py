"""The README's commands: every `archsearch ...` line in its code blocks names a real command whose options parse."""
from __future__ import annotations

import re
import shlex

from archsearch.cli import make_parser

from .conftest import ROOT


def _commands() -> list:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("archsearch "):
                lines.append(line)
    return lines


def test_the_readme_is_for_users_and_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


def test_every_readme_command_parses():
    parser = make_parser()
    commands = _commands()
    assert len(commands) >= 15
    for line in commands:
        argv = shlex.split(line)[1:]
        args, extra = parser.parse_known_args(argv)  # what main() does; KEY=VALUE overrides are the extras
        assert all("=" in e and not e.startswith("-") for e in extra), (line, extra)
        assert args.command == argv[0]
