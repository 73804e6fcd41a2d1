"""A found encoder leaves as a folder the ecosystem reads.

``export_encoder(spec, resolution, out)`` writes ``out/timm`` (timm's ``local-dir:`` folder: ``config.json`` and
``model.safetensors``), ``out/onnx/model.onnx`` (the reparameterized deploy model, self-contained, dynamic batch,
checked with ONNX Runtime against torch) and ``out/README.md``, a model card. ``export_front`` does it for every
member of a study's Pareto front. Names load on first use: this package is imported by ``import archsearch``
(which registers the timm model of :mod:`._timm` once timm is imported) and must not import torch itself.
"""
from __future__ import annotations

_LAZY = {"ExportedEncoder": "._folder", "FORMATS": "._folder", "Origin": "._folder", "export_encoder": "._folder",
         "export_front": "._folder", "resolve_source": "._folder", "timm_config": "._timm"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
