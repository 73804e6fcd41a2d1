"""Writing one exported encoder's folder, and every member of a study's front."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .._outputs import MANIFEST, _manifest
from ..errors import ConfigError
from ..spec import ArchSpec, parse_resolution
from ._timm import EXTENSION_MODEL, timm_config

__all__ = ["FORMATS", "ExportedEncoder", "Origin", "export_encoder", "export_front", "parse_formats", "resolve_source"]

FORMATS = ("timm", "onnx")
#: The manifest kind of an export folder: ``--overwrite`` replaces exactly the files an earlier export wrote.
KIND = "export"
ONNX_OPSET = 17
#: ONNX Runtime must agree with torch within this relative error (of the output's largest magnitude).
ONNX_RTOL = 1e-4


@dataclass(frozen=True)
class Origin:
    """Where an exported spec came from: a reference, a spec file, or a study's trial with what it measured."""

    source: str
    study: Optional[str] = None
    storage: Optional[str] = None
    trial: Optional[int] = None
    objectives: Dict[str, float] = field(default_factory=dict)
    metrics: Dict[str, float] = field(default_factory=dict)
    latency_conditions: Dict[str, Any] = field(default_factory=dict)
    trained_top1: Optional[List[float]] = None


@dataclass(frozen=True)
class ExportedEncoder:
    out: Path
    formats: Tuple[str, ...]
    spec_hash: str
    arch: str
    resolution: Tuple[int, int]
    params: int
    macs: float
    grid: Tuple[int, int]
    timm_architecture: str
    onnx_max_abs_diff: Optional[float]

    @property
    def needs_archsearch(self) -> bool:
        return self.timm_architecture == EXTENSION_MODEL


def parse_formats(formats: Sequence[str] | str) -> Tuple[str, ...]:
    names = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    bad = [f for f in names if f not in FORMATS]
    if bad or not names:
        raise ConfigError("--format", f"{', '.join(bad) or 'nothing'}: formats are {', '.join(FORMATS)} (comma-separated)")
    return tuple(dict.fromkeys(names))


def resolve_source(source: str, *, storage: Optional[str] = None) -> Tuple[ArchSpec, Optional[int], Origin]:
    """A reference name, a spec YAML, or ``STUDY:TRIAL`` (with ``storage``) -> (spec, its resolution, origin)."""
    from ..references import REFERENCES, load_spec

    if storage is not None or (":" in source and not Path(source).exists() and source not in REFERENCES):
        name, _, number = source.rpartition(":")
        if not name or not number.lstrip("-").isdigit():
            raise ConfigError("SOURCE", f"{source!r}: a study's trial is STUDY:TRIAL (with --storage), e.g. quickstart:12")
        if storage is None:
            raise ConfigError("--storage", f"{source!r} names a study's trial: give the study's --storage")
        return _from_trial(name, int(number), storage)
    spec = load_spec(source)
    if not isinstance(spec, ArchSpec):
        raise ConfigError("SOURCE", f"{source}: only FastViT-family specs export (it is {spec.code})")
    origin = f"reference `{source}`" if source in REFERENCES else f"spec file `{source}`"
    return spec, None, Origin(source=origin)


def _from_trial(study_name: str, number: int, storage: str) -> Tuple[ArchSpec, Optional[int], Origin]:
    from .._record import TrialRecord
    from .._study import ATTR_LATENCY, ATTR_OBJECTIVES
    from ..pareto import load_study

    study = load_study(study_name, storage)
    trials = study.get_trials(deepcopy=False)
    match = [t for t in trials if t.number == number]
    if not match:
        raise ConfigError("TRIAL", f"study {study_name!r} has no trial {number} (trials 0-{len(trials) - 1})"
                          if trials else f"study {study_name!r} has no trials")
    record = TrialRecord.of(match[0])
    if record.state != "COMPLETE" or record.spec is None:
        why = f": {record.invalid_reason or record.error}" if record.invalid_reason or record.error else ""
        raise ConfigError("TRIAL", f"trial {number} of {study_name!r} is {record.state}{why}; only a complete trial exports")
    names = study.user_attrs.get(ATTR_OBJECTIVES) or [f"objective_{i}" for i in range(len(record.values or []))]
    from ..errors import mask_secrets

    origin = Origin(source=f"trial {number} of study `{study_name}`", study=study_name, storage=mask_secrets(storage),
                    trial=number, objectives=dict(zip(names, record.values or [])), metrics=dict(record.metrics),
                    latency_conditions=dict(match[0].user_attrs.get(ATTR_LATENCY) or {}))
    return record.spec, record.resolution, origin


def _check_resolution(spec: ArchSpec, resolution: Any) -> Tuple[int, int]:
    hw = parse_resolution(resolution)
    grid = spec.grid(hw)
    if min(grid) < 1 or min(hw) < spec.output_stride:  # a smaller side is a token grid of padding
        raise ConfigError("resolution", f"{hw[0]}x{hw[1]} px gives {spec.code} a {grid[0]}x{grid[1]} token grid; it needs "
                                        f"at least {spec.output_stride} px a side (output stride {spec.output_stride})")
    return hw


def _weights(spec: ArchSpec, checkpoint: Optional[Path], seed: int):
    """The training-form model with seeded initial weights, or a checkpoint's (loaded strictly)."""
    import torch

    from ..build import build_model

    torch.manual_seed(seed)
    model = build_model(spec).eval()
    if checkpoint is not None:
        try:
            if str(checkpoint).endswith(".safetensors"):
                from safetensors.torch import load_file

                state = load_file(str(checkpoint))
            else:
                state = torch.load(checkpoint, map_location="cpu", weights_only=True)
                state = state.get("state_dict", state) if isinstance(state, dict) else state
            model.load_state_dict(state, strict=True)
        except (OSError, RuntimeError, ValueError, KeyError, AttributeError) as e:
            raise ConfigError("--weights", f"{checkpoint}: {str(e).splitlines()[0][:200]}") from None
    return model


def _write_timm(model, spec: ArchSpec, hw: Tuple[int, int], folder: Path) -> str:
    from safetensors.torch import save_file

    folder.mkdir()
    config = timm_config(spec, hw)
    (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt", "spec_hash": spec.spec_hash})
    return config["architecture"]


def _write_onnx(model, spec: ArchSpec, hw: Tuple[int, int], folder: Path) -> float:
    """The deploy model, exported with a dynamic batch axis and checked with ONNX Runtime first."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from ..build import example_input, reparameterize

    deploy = reparameterize(model)
    folder.mkdir()
    path = folder / "model.onnx"
    x = example_input(spec.in_chans, hw, batch=2, seed=1)
    # The TorchScript exporter (dynamo=False): the dynamo one needs onnxscript, which the project does not ship.
    torch.onnx.export(deploy, (x,), str(path), dynamo=False, opset_version=ONNX_OPSET, input_names=["pixel_values"],
                      output_names=["features"], dynamic_axes={"pixel_values": {0: "batch"}, "features": {0: "batch"}})
    proto = onnx.load(str(path))
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise ConfigError("--format", "the ONNX export referenced external data; refusing a file that is not self-contained")
    with torch.no_grad():
        want = deploy(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x.numpy()})[0]
    diff = float(np.max(np.abs(got - want)))
    if diff > ONNX_RTOL * max(1.0, float(np.max(np.abs(want)))):
        raise ConfigError("--format", f"ONNX Runtime disagrees with torch by {diff:.3g} (max abs): not written")
    return diff


def export_encoder(spec: ArchSpec, resolution: Any, out: Path | str, *, formats: Sequence[str] = FORMATS,
                   overwrite: bool = False, origin: Optional[Origin] = None, weights: Optional[Path] = None,
                   seed: int = 0) -> ExportedEncoder:
    """Write ``out`` (see the package's docstring). Everything is written into a temporary folder beside ``out`` and
    moved in only when complete: an error leaves no half-written folder. An existing ``out`` is replaced only with
    ``overwrite``, and then only the files an earlier export wrote there (its manifest); other files stay."""
    from ..build import count_params
    from ..measure.flops import count_complexity
    from ._card import card

    formats = parse_formats(formats)
    hw = _check_resolution(spec, resolution)
    out = Path(out)
    _check_out(out, overwrite)
    tmp = out.with_name(f".{out.name}.export-{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        model = _weights(spec, weights, seed)
        arch = _write_timm(model, spec, hw, tmp / "timm") if "timm" in formats else timm_config(spec, hw)["architecture"]
        diff = _write_onnx(model, spec, hw, tmp / "onnx") if "onnx" in formats else None
        result = ExportedEncoder(out, formats, spec.spec_hash, spec.code, hw, count_params(model),
                                 count_complexity(spec, hw).macs, spec.grid(hw), arch, diff)
        (tmp / "spec.yaml").write_text(spec.to_yaml(), encoding="utf-8")
        (tmp / "README.md").write_text(card(spec, result, origin or Origin(source="the Python API")), encoding="utf-8")
        (tmp / "export.json").write_text(json.dumps({**_jsonable(result), "origin": asdict(origin) if origin else None},
                                                    indent=1) + "\n", encoding="utf-8")
        _move_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _jsonable(r: ExportedEncoder) -> dict:
    d = asdict(r)
    d["out"], d["needs_archsearch"] = str(r.out), r.needs_archsearch
    return d


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", f"{out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError("--out", f"{out} exists and is not empty; choose another folder or pass --overwrite")
        if KIND not in _manifest(out):
            raise ConfigError("--out", f"{out} holds files no export wrote; --overwrite replaces only an earlier export")


def _move_in(tmp: Path, out: Path) -> None:
    """Move the finished files of ``tmp`` into ``out``: the earlier export's files there are removed first, a file
    of the user's own is never replaced (refused before anything moves)."""
    written = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    old = _manifest(out).get(KIND, []) if out.is_dir() else []
    clash = [n for n in written if (out / n).exists() and n not in old]
    if clash:
        raise ConfigError("--out", f"{out / clash[0]} exists and no export wrote it; it is left as it is")
    out.mkdir(parents=True, exist_ok=True)
    for name in old:
        p = out / name
        if p.is_file() and p.resolve().is_relative_to(out.resolve()):
            p.unlink()
    for name in written:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / name, out / name)
    manifest = _manifest(out)
    manifest[KIND] = written
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def export_front(study_name: str, storage: str, out: Path | str, *, formats: Sequence[str] = FORMATS,
                 overwrite: bool = False, tracking_uri: Optional[str] = None,
                 on_member=None) -> List[ExportedEncoder]:
    """Export every member of the study's Pareto front to ``out/trialNNNN``; with ``tracking_uri``, log each folder
    as an artifact of its trial's MLflow run (found by the study and trial tags the search wrote)."""
    from ..pareto import load_study, pareto_rows

    formats = parse_formats(formats)
    rows = pareto_rows(load_study(study_name, storage))
    done = []
    for k, row in enumerate(rows, 1):
        spec, res, origin = _from_trial(study_name, row.number, storage)
        result = export_encoder(spec, res, Path(out) / f"trial{row.number:04d}", formats=formats, overwrite=overwrite,
                                origin=origin)
        if tracking_uri:
            _log_artifact(tracking_uri, study_name, row.number, result.out)
        done.append(result)
        if on_member is not None:
            on_member(k, len(rows), row.number, result)
    return done


def _log_artifact(uri: str, study_name: str, number: int, folder: Path) -> None:
    from ..tracking import Tracker
    from ..trials import TrackingConfig

    tracker = Tracker(TrackingConfig(uri=uri))

    def log() -> None:
        runs = tracker.client.search_runs(
            [tracker._experiment()], max_results=1,
            filter_string=f"tags.`archsearch.study` = '{study_name}' and tags.`optuna.trial_number` = '{number}'")
        if runs:
            tracker.client.log_artifacts(runs[0].info.run_id, str(folder), "export")

    tracker._run(f"log trial {number}'s export", log)
