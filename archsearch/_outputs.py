"""Output directories that hold exactly one run's files.

A command that writes a set of files (``pareto``, ``report``, ``sample``, ``search --pareto-out``) into a
directory first checks it: a path that is a file, or a directory that already holds files, is refused in
one line unless ``--overwrite`` is given. Every file a command writes is recorded in the directory's
manifest (``.archsearch-outputs.json``, by kind); ``--overwrite`` removes exactly the files the manifest
says an earlier run of the same kind wrote, so nothing stale stays beside the new ones and a file of the
user's own (a hand-written ``pareto_trial9999_mine.yaml``) is never touched. Files are written atomically
(a temporary file, then a rename), so a full disk leaves the previous file or none, never a cut one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Iterable, List

from .errors import ConfigError

__all__ = ["MANIFEST", "md_text", "prepare_output_dir", "record_outputs", "save_figure", "write_atomic"]

MANIFEST = ".archsearch-outputs.json"
KINDS = ("pareto", "sample", "report", "ablate")
#: Files each kind always writes: checked before anything runs, so a user's own ``report.md`` is never replaced.
KIND_FILES = {"pareto": ("pareto.csv", "pareto.md", "pareto.png"), "report": ("report.md",),
              "ablate": ("results.csv", "results.json", "ablation.json")}

#: Per output directory prepared in this process: files there that no earlier run of the same command wrote (its
#: manifest does not list them). :func:`write_atomic` never replaces one; a run that would is refused in one line.
_FOREIGN: Dict[Path, set] = {}


def _manifest(out: Path) -> Dict[str, List[str]]:
    try:
        data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        return {k: [str(n) for n in v] for k, v in data.items() if isinstance(v, list)} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _owned(out: Path, manifest: Dict[str, List[str]], kind: str) -> set:
    """Names an earlier run of ``kind`` wrote in ``out``: its manifest, and an ablation written before manifests."""
    names = set(manifest.get(kind, []))
    if kind == "ablate" and "ablate" not in manifest and (out / "ablation.json").is_file():
        try:
            legacy = json.loads((out / "ablation.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            legacy = None
        if isinstance(legacy, dict) and str(legacy.get("command", "")).startswith("archsearch ablate"):
            names |= set(KIND_FILES["ablate"])
    return names


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` through a temporary file in the same directory and a rename; an error names the path. A file
    of the user's own in a prepared output directory is never replaced (one line instead)."""
    path = Path(path)
    if path.name in _FOREIGN.get(path.parent.resolve(), ()) and path.exists():
        raise ConfigError("--out", f"{path} exists and no earlier run of this command wrote it; it is left as it is "
                                   "(move it, or choose another directory)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise ConfigError("--out", f"cannot write {path}: {e.strerror or type(e).__name__}") from None


def record_outputs(out: Path | str, kind: str, names: Iterable[str]) -> None:
    """Add ``names`` (files in ``out``) to what the manifest says ``kind`` wrote there."""
    out = Path(out)
    manifest = _manifest(out)
    manifest[kind] = sorted(set(manifest.get(kind, [])) | {Path(n).name for n in names})
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1))


def prepare_output_dir(out: Path | str, kind: str, *, overwrite: bool = False, option: str = "--out") -> Path:
    """Make ``out`` ready for one ``kind`` output set (see the module's docstring); returns it."""
    if kind not in KINDS:
        raise ValueError(kind)
    out = Path(out)
    _FOREIGN.pop(out.resolve(), None)  # what an earlier call found there says nothing about this one
    if out.exists() and not out.is_dir():
        raise ConfigError(option, f"{out} is a file; give a directory")
    if out.is_dir():
        present = sorted(p.name for p in out.iterdir() if p.name != MANIFEST)
        if present and not overwrite:
            shown = ", ".join(present[:3]) + (f" and {len(present) - 3} more" if len(present) > 3 else "")
            raise ConfigError(option, f"{out} is not empty ({shown}); choose an empty directory or pass --overwrite")
        if overwrite:
            manifest = _manifest(out)
            owned = _owned(out, manifest, kind)
            foreign = {n for n in present if n not in owned}
            clash = [n for n in KIND_FILES.get(kind, ()) if n in foreign]
            if clash:
                raise ConfigError(option, f"{out / clash[0]} is not from an earlier `{kind}` run; --overwrite replaces only "
                                          "what archsearch wrote there (move it, or choose another directory)")
            _FOREIGN[out.resolve()] = foreign
            if "ablate" not in manifest and kind == "ablate" and owned & set(KIND_FILES["ablate"]):
                manifest["ablate"] = list(KIND_FILES["ablate"])  # an ablation from before manifests: its own files
            for name in manifest.pop(kind, []):
                p = out / name
                if p.parent == out and (p.is_file() or p.is_symlink()):
                    p.unlink()
            write_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(option, f"cannot create {out}: {e.strerror}") from None
    return out


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """A matplotlib figure as PNG, written atomically."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    write_atomic(path, buf.getvalue())


def md_text(text: object) -> str:
    """A user's string (a study name) inside Markdown: one line, no raw HTML, no code-span breaks."""
    one_line = " ".join(str(text).split())
    return (one_line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("`", "&#96;")
            .replace("|", "&#124;"))
