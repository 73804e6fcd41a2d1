"""archsearch: search and ablate hybrid RepMixer / attention vision encoders (FastViT, FastViTHD).

The public API; everything else is reachable through its module but may change.
"""
from .errors import ArchsearchError, ConfigError, InvalidSample
from .export._timm import install_timm_hook
from .references import REFERENCES, get_reference, load_spec
from .spec import ArchSpec, StageSpec, parse_resolution

__version__ = "0.1.0"

# An exported folder whose spec needs archsearch's extensions names the timm model `archsearch_fastvit`: timm
# finds it in any process that imported archsearch (registered when timm itself is imported, not before).
install_timm_hook()

__all__ = [
    "ArchSpec",
    "ArchsearchError",
    "Candidate",
    "ConfigError",
    "InvalidSample",
    "REFERENCES",
    "SearchSpace",
    "StageSpec",
    "build_model",
    "draw",
    "get_reference",
    "load_space",
    "load_spec",
    "parse_resolution",
    "reparameterize",
]


#: Names loaded on first use: the builder imports torch and timm (seconds) and the space Optuna and
#: OmegaConf, so that ``import archsearch`` stays instant and imports nothing it does not need.
_LAZY = {"build_model": "build", "reparameterize": "build", "Candidate": "space", "SearchSpace": "space",
         "draw": "space", "load_space": "space"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'archsearch' has no attribute {name!r}")
