"""A spec as timm's ``local-dir:`` model folder: ``config.json`` (``architecture``, ``model_args``,
``pretrained_cfg``) and ``model.safetensors``.

timm rebuilds a folder's model as ``create_model(architecture, **model_args)``, so ``model_args`` must be JSON.
Most of a spec is (depths, widths, mixers, MLP ratios, downsampling, kernels, flags), but two of ``FastVit``'s
arguments are layer classes, not data: the positional encodings (``pos_embs``) and the attention norm
(``norm_layer``). Those come from the registered variant named as the ``architecture``, so a spec is plain timm
when one of :data:`BASES` has its pattern of CPE stages, CPE kernel and norm, and when it uses neither of
archsearch's two extensions (a width change without downsampling, a head size other than 32). Every other
spec names ``archsearch_fastvit``, a timm model registered when timm is imported in a process that imported
archsearch (:func:`install_timm_hook`).
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Any, Dict, Optional, Tuple

from ..spec import ArchSpec

__all__ = ["BASES", "EXTENSION_MODEL", "install_timm_hook", "register_timm_model", "timm_config"]

#: timm variants whose layer-class arguments a spec can reuse: (stages, stages with a 7x7 CPE, norm). timm
#: reads the first ``len(layers)`` entries of a variant's ``pos_embs``, so a variant also serves every shorter
#: spec whose CPE stages are that prefix's (``fastvit_mci3`` a 4-stage spec with a CPE on its last stage).
BASES: Dict[str, Tuple[int, Tuple[int, ...], str]] = {
    "fastvit_t8": (4, (), "batchnorm"),
    "fastvit_sa12": (4, (3,), "batchnorm"),
    "fastvit_mci3": (5, (3, 4), "layernorm2d"),
}


def _serves(pattern: Tuple[int, Tuple[int, ...], str], stages: int, cpe: Tuple[int, ...], norm: str) -> bool:
    n, base_cpe, base_norm = pattern
    return stages <= n and norm == base_norm and cpe == tuple(i for i in base_cpe if i < stages)
#: The timm model archsearch registers for specs no base expresses.
EXTENSION_MODEL = "archsearch_fastvit"
_TIMM_CPE_KERNEL = 7


def _base(spec: ArchSpec) -> Optional[str]:
    """The timm variant that expresses ``spec`` with JSON arguments only, or None (it needs archsearch)."""
    if spec.head_dim != 32 or not spec.final_conv:
        return None
    for prev, stage in zip(spec.stages, spec.stages[1:]):
        if stage.width != prev.width and not stage.downsample:  # timm forces stride 2 on a width change
            return None
    cpe = tuple(i for i, s in enumerate(spec.stages) if s.pos_enc == "cpe")
    if any(spec.stages[i].cpe_kernel != _TIMM_CPE_KERNEL for i in cpe):
        return None
    return next((name for name, pattern in BASES.items() if _serves(pattern, spec.num_stages, cpe, spec.norm)), None)


def timm_config(spec: ArchSpec, resolution: Tuple[int, int]) -> dict:
    """``config.json`` for ``spec`` (a feature extractor: ``num_classes`` 0) at its input ``resolution``."""
    base = _base(spec)
    model_args: Dict[str, Any]
    if base is None:
        architecture, model_args = EXTENSION_MODEL, {"spec": spec.to_dict(include_name=False)}
    else:
        architecture = base
        model_args = {
            "layers": list(spec.depths), "embed_dims": list(spec.widths),
            "mlp_ratios": [s.mlp_ratio for s in spec.stages], "downsamples": [s.downsample for s in spec.stages],
            "se_downsamples": [s.se_downsample for s in spec.stages],
            "token_mixers": [s.token_mixer for s in spec.stages], "repmixer_kernel_size": spec.repmixer_kernel,
            "down_patch_size": spec.down_patch_size, "lkc_use_act": spec.lkc_act,
            "stem_use_scale_branch": spec.stem_scale_branch, "cls_ratio": spec.head_ratio, "in_chans": spec.in_chans,
            "layer_scale_init_value": 1e-5 if spec.layer_scale else None,
        }
    h, w = resolution
    return {
        "architecture": architecture, "num_classes": 0, "num_features": spec.out_channels, "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [spec.in_chans, h, w], "fixed_input_size": False, "interpolation": "bicubic", "crop_pct": 1.0,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 0,
            "first_conv": "stem.0.conv_kxk.0.conv", "classifier": "head.fc",
        },
    }


def _archsearch_fastvit(pretrained: bool = False, **kwargs):
    """timm's entry for a spec (``spec``: ``ArchSpec.to_dict``): archsearch's builder under timm's factory, so
    that ``pretrained_cfg`` (a ``local-dir:`` folder's weights) and ``num_classes`` work as for any timm model."""
    from timm.models._builder import build_model_with_cfg

    from ..build import ArchNet

    class ArchsearchFastVit(ArchNet):
        def __init__(self, spec: dict, num_classes: int = 0, in_chans: Optional[int] = None, **options) -> None:
            parsed = ArchSpec.from_dict(spec)
            if in_chans is not None and in_chans != parsed.in_chans:
                parsed = parsed.replace(in_chans=in_chans)
            options.pop("global_pool", None)
            super().__init__(parsed, num_classes=num_classes, global_pool=True, **options)

    return build_model_with_cfg(ArchsearchFastVit, EXTENSION_MODEL, pretrained, **kwargs)


def register_timm_model() -> None:
    """Put ``archsearch_fastvit`` into timm's registry (once)."""
    from timm.models import is_model, register_model

    if not is_model(EXTENSION_MODEL):
        fn = _archsearch_fastvit
        fn.__name__ = EXTENSION_MODEL
        fn.__module__ = "archsearch.export._timm"
        register_model(fn)


class _TimmHook(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Registers ``archsearch_fastvit`` right after ``import timm`` finishes (``import archsearch`` must not
    import timm and torch itself: a command's ``--help`` stays instant)."""

    def find_spec(self, fullname, path, target=None):  # noqa: ARG002 - importlib's signature
        if fullname != "timm":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        self._inner = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        register_timm_model()


def install_timm_hook() -> None:
    """Make ``archsearch_fastvit`` available to timm in this process: now if timm is imported, else on import."""
    if "timm" in sys.modules:
        register_timm_model()
    elif not any(isinstance(f, _TimmHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TimmHook())
