"""The one scaling rule shared by every proxy: how a spec too big for this machine is shrunk."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError
from ..spec import ArchSpec


@dataclass(frozen=True)
class ScalingRule:
    """Width factor, depth cap and width rounding; logged with every proxy score so it can be rerun.

    The defaults (quarter width, depth cap 2) are the ones validated for the training proxy.
    """

    width_mult: float = 0.25
    max_depth: Optional[int] = 2
    round_to: int = 8

    def __post_init__(self) -> None:
        if self.width_mult <= 0:
            raise ConfigError("width_mult", f"must be > 0, got {self.width_mult}")
        if self.max_depth is not None and self.max_depth < 1:
            raise ConfigError("max_depth", f"must be >= 1, got {self.max_depth}")
        self._require_positive("round_to")

    def _require_positive(self, *keys: str) -> None:
        for key in keys:
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1, got {getattr(self, key)}")

    def scaled(self, spec: ArchSpec) -> ArchSpec:
        """The spec itself when the rule is the identity (factor 1, no cap), else ``spec.scaled``."""
        if self.width_mult == 1.0 and self.max_depth is None:
            return spec
        return spec.scaled(width_mult=self.width_mult, max_depth=self.max_depth, round_to=self.round_to)


@dataclass(frozen=True)
class DataRule:
    """Which images a proxy sees; shared by the zero-cost proxies (one batch) and the training proxy.

    ``fashion-mnist`` (real photos, upscaled), ``fashion-mnist-canvas`` (small on a cluttered canvas),
    ``digits`` (the built-in digit canvas), an ImageFolder path (training only), or ``noise`` (a Gaussian
    batch; zero-cost proxies only).
    """

    data: str = "digits"
    #: Directory holding Fashion-MNIST's IDX files (default: where Debian's package puts them).
    data_root: Optional[str] = None
    #: Digit size of the digit canvas, and bright bars on either canvas.
    digit_px: int = 32
    clutter: int = 2
