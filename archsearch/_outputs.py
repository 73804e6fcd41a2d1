"""Output directories that hold exactly one run's files.

A command that writes a set of files (``pareto``, ``report``, ``sample``, ``search --pareto-out``) into a
directory first checks it: a path that is a file, or a directory that already holds files, is refused in
one line unless ``--overwrite`` is given. With ``--overwrite`` the files a previous run of the same kind
wrote (its name patterns) are removed first, so that nothing stale stays beside the new ones; files of
any other kind are left alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .errors import ConfigError

__all__ = ["OUTPUT_PATTERNS", "prepare_output_dir"]

#: The files each kind of output set writes (glob patterns).
OUTPUT_PATTERNS = {
    "pareto": ("pareto_trial*.yaml", "pareto.csv", "pareto.md", "pareto.png"),
    "sample": ("spec_*.yaml", "samples.csv"),
    "report": ("report.md", "*.png"),
}


def prepare_output_dir(out: Path | str, kind: str, *, overwrite: bool = False, option: str = "--out") -> Path:
    """Make ``out`` ready for one ``kind`` output set (see the module's docstring); returns it."""
    out = Path(out)
    patterns: Sequence[str] = OUTPUT_PATTERNS[kind]
    if out.exists() and not out.is_dir():
        raise ConfigError(option, f"{out} is a file; give a directory")
    if out.is_dir():
        present = sorted(p.name for p in out.iterdir())
        if present and not overwrite:
            shown = ", ".join(present[:3]) + (f" and {len(present) - 3} more" if len(present) > 3 else "")
            raise ConfigError(option, f"{out} is not empty ({shown}); choose an empty directory or pass --overwrite")
        if overwrite:
            for pattern in patterns:
                for p in out.glob(pattern):
                    if p.is_file() or p.is_symlink():
                        p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(option, f"cannot create {out}: {e.strerror}") from None
    return out
