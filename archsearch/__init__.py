"""archsearch: search and ablate hybrid RepMixer / attention vision encoders (FastViT, FastViTHD).

The public API; everything else is reachable through its module but may change.
"""
from .errors import ArchsearchError, ConfigError, InvalidSample
from .references import REFERENCES, get_reference, load_spec
from .space import Candidate, SearchSpace, draw, load_space
from .spec import ArchSpec, StageSpec, parse_resolution

__version__ = "0.1.0"

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


def __getattr__(name: str):
    # The builder imports torch and timm (seconds); load it only when asked for, so that
    # `archsearch --help` and spec/space validation stay instant.
    if name in ("build_model", "reparameterize"):
        from . import build

        return getattr(build, name)
    raise AttributeError(f"module 'archsearch' has no attribute {name!r}")
