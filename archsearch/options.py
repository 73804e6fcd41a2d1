"""Every measurement option and its default, defined once.

The experiment files (``measure:`` in ``trials/*.yaml`` and ablations), the command line and Python
callers all build these dataclasses, so a default changes here and nowhere else (a test pins that the
three agree). Torch-free: loading and validating a config imports no framework.

The accuracy defaults come from the fidelity study in ``analysis/proxy_fidelity`` (real Fashion-MNIST
images, specs of ``search_spaces/fastvithd.yaml``, a quarter-width copy with depth cap 4 at 128 px): by its
rule (the cheapest signal reaching min(0.6, 0.8 x noise ceiling)) that is ``naswot`` on one batch of 64
real images, confirmed on 10 held-out specs; among the training signals ``train_loss_sum`` over 50 steps
ranked best for its cost.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from .errors import ConfigError
from .geometry import GEOMETRIES, ProxyGeometry
from .spec import MAX_RESOLUTION, ArchSpec

__all__ = [
    "COUNTER_NAMES", "DATA_SET_NAMES", "DEFAULT_STORAGE", "PREDICTOR_FIT", "LATENCY_BACKEND_NAMES", "ZERO_COST_NAMES", "DataRule",
    "LatencyConfig", "MeasureOptions",
    "ProxyConfig", "ScalingRule", "TrainProxyConfig",
]

#: The most intra-op threads a measurement may ask for.
MAX_THREADS = max(64, 4 * (os.cpu_count() or 1))

#: Names of the registries filled where each entry is defined (``measure.flops.COUNTERS``,
#: ``measure.latency.LATENCY_BACKENDS``, ``proxy.data.DATA_SETS``); those modules check they match.
COUNTER_NAMES = ("fast", "fvcore", "ptflops")
LATENCY_BACKEND_NAMES = ("torch-cpu", "cuda", "onnxruntime", "remote")
#: Whole models timed to fit the latency predictor's scale and exponent (a study's and `calibrate`'s default).
PREDICTOR_FIT = 8
#: Where a study lives unless its experiment file or --storage says otherwise (an SQLite file here).
DEFAULT_STORAGE = "sqlite:///archsearch.db"
DATA_SET_NAMES = ("fashion-mnist", "fashion-mnist-canvas", "digits", "glyphs")
#: Zero-cost proxies (``proxy.zero_cost.PROXIES``, which checks it matches): torch-free, for the metric registry.
ZERO_COST_NAMES = ("synflow", "naswot", "grad_norm", "snip")

#: The input side a data set's proxies follow by default, as a factor of the candidate's resolution (see
#: :meth:`ScalingRule.side`). ``glyphs`` is a scene in normalised coordinates whose detail a larger side
#: shows: 1/8 is this project's CPU tier (256 -> 32, 1024 -> 128 px); on a GPU set ``resolution_scale: 1``.
#: The other data sets have no detail to gain and keep their fixed ``resolution``.
DATA_SIDE_SCALE = {"glyphs": 0.125}


def _require(obj, lo: int, *keys: str) -> None:
    for key in keys:
        if getattr(obj, key) < lo:
            raise ConfigError(key, f"must be >= {lo}, got {getattr(obj, key)}")


def _at_most(obj, hi: int, *keys: str) -> None:
    for key in keys:
        if getattr(obj, key) > hi:
            raise ConfigError(key, f"must be <= {hi}, got {getattr(obj, key)}")


#: The most images a proxy's data set may hold (memory is checked as well, before the images are made).
MAX_IMAGES = 10_000_000


@dataclass(frozen=True)
class LatencyConfig:
    backend: str = "torch-cpu"
    #: Intra-op threads (torch and ONNX Runtime); default: every core of this machine.
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    warmup: int = 3
    repeats: int = 10
    batch: int = 1
    channels_last: bool = False
    compile: bool = False
    #: Stop timing once this many seconds are spent (after at least 3 repeats); None: all repeats.
    time_budget_s: Optional[float] = None
    #: Keep freed heap memory mapped while timing (glibc), so forwards do not pay page faults; see
    #: :mod:`archsearch.measure._heap`. False times the allocator's default behaviour.
    retain_heap: bool = True
    #: The declared spread: a result whose coefficient of variation exceeds it is measured again (up to
    #: ``noisy_retries`` more times, the steadiest kept); still above it, it is marked ``noisy`` in its
    #: conditions and never cached as a good value (a busy host once stored 1524 ms, CV 0.52, for ~300 ms).
    max_cv: float = 0.25
    noisy_retries: int = 2
    #: ``remote`` only: the device server (``archsearch device-serve``), ``http://HOST:PORT``; its token is
    #: read from ``ARCHSEARCH_DEVICE_TOKEN`` when a measurement is sent, never stored with the options.
    url: Optional[str] = None
    #: ``remote`` only: the ONNX Runtime execution provider the device times with.
    provider: str = "CPUExecutionProvider"
    #: ``remote`` only: how long one timing job may take, queueing included, before the measurement fails.
    request_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.backend not in LATENCY_BACKEND_NAMES:
            raise ConfigError("backend", f"{self.backend!r} is not one of: {', '.join(LATENCY_BACKEND_NAMES)}")
        self._check_remote()
        for key, lo in (("threads", 1), ("warmup", 0), ("repeats", 1), ("batch", 1)):
            _require(self, lo, key)
        if self.threads > MAX_THREADS:  # torch segfaults at 100,000; no timing means anything past the cores
            raise ConfigError("threads", f"must be at most {MAX_THREADS} (4 x this machine's cores, at least 64), "
                                         f"got {self.threads}")
        if not 0 < self.max_cv <= 10:
            raise ConfigError("max_cv", f"must be within (0, 10], got {self.max_cv}")
        _require(self, 0, "noisy_retries")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ConfigError("time_budget_s", f"must be > 0 (or left out), got {self.time_budget_s}")
        if self.compile and self.backend == "onnxruntime":
            raise ConfigError("compile", "torch.compile does not apply to the onnxruntime backend")

    def _check_remote(self) -> None:
        if self.backend != "remote":
            for key, default in (("url", None), ("provider", "CPUExecutionProvider")):
                if getattr(self, key) != default:
                    raise ConfigError(key, f"applies to backend 'remote' only (backend is {self.backend!r})")
            return
        url = self.url or ""
        scheme, _, rest = url.partition("://")
        if scheme not in ("http", "https") or not rest.strip("/") or any(c.isspace() for c in url):
            raise ConfigError("url", f"backend 'remote' needs the device server as http://HOST:PORT, got {self.url!r}")
        if "?" in url or "#" in url:
            raise ConfigError("url", "must be http://HOST:PORT without a query: the token comes from ARCHSEARCH_DEVICE_TOKEN")
        if "@" in rest.split("/", 1)[0]:
            raise ConfigError("url", "must not hold credentials: the token comes from ARCHSEARCH_DEVICE_TOKEN")
        if not 0 < self.request_timeout_s <= 86400:
            raise ConfigError("request_timeout_s", f"must be within (0, 86400], got {self.request_timeout_s}")
        if self.compile or self.channels_last:
            raise ConfigError("compile" if self.compile else "channels_last", "does not apply to the remote backend (ONNX)")

    @property
    def device(self) -> str:
        """``cuda``, ``cpu`` or ``remote``: where this backend runs."""
        return {"cuda": "cuda", "remote": "remote"}.get(self.backend, "cpu")

    def cache_key(self) -> dict:
        """What decides a latency besides the model and the device: how long and how often are left out,
        and so is where the device answers (its fingerprint, in the key beside this, says which it is)."""
        d = asdict(self)
        for how in ("time_budget_s", "max_cv", "noisy_retries", "url", "request_timeout_s"):
            d.pop(how)
        if self.backend != "remote":
            d.pop("provider")  # keys of local timings stay what they were before the remote backend
        return d


@dataclass(frozen=True)
class ScalingRule:
    """Width factor, depth cap and width rounding; logged with every proxy score so it can be rerun.

    Quarter width and depth cap 4: a cap of 2 turns FastViTHD's depths 2-12-24-4-2 into 2-2-2-2-2 and
    erases the depth choices a search makes; the fidelity study's scaling subset compares the caps.
    """

    width_mult: float = 0.25
    max_depth: Optional[int] = 4
    round_to: int = 8
    #: The input side as a factor of the candidate's resolution (``round(f x resolution)``, at least
    #: ``min_side``); None: the data set's rule (:data:`DATA_SIDE_SCALE`), else the fixed ``resolution``.
    resolution_scale: Optional[float] = None
    min_side: int = 32
    #: How the candidate becomes the network a proxy judges (:data:`archsearch.geometry.GEOMETRIES`): ``copy``
    #: keeps its strides, ``late_grid`` and ``reference`` keep its deployed token grid.
    geometry: str = "copy"
    #: The candidate's own resolution, set by ``for_candidate`` (the deployed grid a geometry keeps).
    candidate_resolution: Optional[int] = None

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise ConfigError("geometry", f"{self.geometry!r} is not one of: {', '.join(GEOMETRIES)}")
        if self.width_mult <= 0:
            raise ConfigError("width_mult", f"must be > 0, got {self.width_mult}")
        if self.resolution_scale is not None and not 0 < self.resolution_scale <= 4:
            raise ConfigError("resolution_scale", f"must be within (0, 4], got {self.resolution_scale}")
        _require(self, 8, "min_side")
        _at_most(self, MAX_RESOLUTION, "min_side")
        if self.max_depth is not None and self.max_depth < 1:
            raise ConfigError("max_depth", f"must be >= 1, got {self.max_depth}")
        _require(self, 1, "round_to")

    def side_scale(self, data: str) -> Optional[float]:
        """The factor the data set's side rule applies to a candidate's resolution (None: a fixed side)."""
        return self.resolution_scale if self.resolution_scale is not None else DATA_SIDE_SCALE.get(data)

    def proxy_geometry(self, data: str) -> ProxyGeometry:
        """This rule as the one object that maps a candidate to the network a proxy judges and its side."""
        return ProxyGeometry(self.geometry, self.side_scale(data), getattr(self, "resolution", 128), self.min_side,
                             self.width_mult, self.max_depth, self.round_to)

    def scaled(self, spec: ArchSpec) -> ArchSpec:
        """The network a proxy trains or scores for ``spec`` (its geometry at ``candidate_resolution``)."""
        side = getattr(self, "resolution", None) if self.candidate_resolution is not None else None
        return self.proxy_geometry(getattr(self, "data", "")).network(spec, self.candidate_resolution, side)


@dataclass(frozen=True)
class DataRule:
    """Which images a proxy sees; shared by the zero-cost proxies (one batch) and the training proxy.

    ``fashion-mnist`` (real photos, upscaled), ``fashion-mnist-canvas`` (small on a cluttered canvas),
    ``digits`` (the built-in digit canvas), an ImageFolder path (training only), or ``noise`` (a Gaussian
    batch; zero-cost proxies only). Zero-cost proxies invert on synthetic data (White et al., 2022).
    """

    data: str = "fashion-mnist"
    #: Directory holding Fashion-MNIST's IDX files (default: where Debian's package puts them).
    data_root: Optional[str] = None
    #: Digit size of the digit canvas; bright bars on either canvas.
    digit_px: int = 32
    clutter: int = 2


@dataclass(frozen=True)
class ProxyConfig(ScalingRule, DataRule):
    """How a zero-cost proxy scores a spec: the scaling rule, input side, batch (data) and seed."""

    resolution: int = 128
    batch_size: int = 64
    num_classes: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self, 1, "resolution", "batch_size", "num_classes")
        _at_most(self, MAX_RESOLUTION, "resolution")

    def for_candidate(self, resolution: Optional[int]) -> "ProxyConfig":
        return _for_candidate(self, resolution)


@dataclass(frozen=True)
class TrainProxyConfig(ScalingRule, DataRule):
    """Short training of the scaled copy ``self.scaled(spec)``: data, input side, budget, optimiser, seed.

    ``steps`` is the budget of both training metrics: ``train_top1`` (validation top-1 after it) and
    ``train_loss_sum`` (the sum of the training losses over it; Ru et al., 2021).
    """

    resolution: int = 128
    steps: int = 50
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    #: Validate every this many steps (the history); None: once, after the last step.
    val_every: Optional[int] = None
    train_size: int = 10000
    val_size: int = 2000
    seed: int = 0
    accelerator: str = "cpu"
    devices: int = 1
    progress_bar: bool = False
    #: DataLoader worker processes (0: load in the training process); where data is rendered as a stream (glyphs at
    #: GPU sides), they render while the accelerator trains. How data is loaded, not what: not in the cache key.
    data_workers: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self, 1, "resolution", "steps", "batch_size", "train_size", "val_size", "devices")
        _require(self, 0, "data_workers")
        _at_most(self, MAX_RESOLUTION, "resolution")
        _at_most(self, MAX_IMAGES, "train_size", "val_size")
        if self.val_every is not None:
            _require(self, 1, "val_every")
        if self.data == "noise" or not self.data.strip():
            raise ConfigError("data", f"{self.data!r}: training needs one of {', '.join(DATA_SET_NAMES)} "
                                      "or an ImageFolder path")

    def for_candidate(self, resolution: Optional[int]) -> "TrainProxyConfig":
        return _for_candidate(self, resolution)

    def cache_key(self) -> dict:
        """What decides a training's numbers (not how it is displayed)."""
        d = asdict(self)
        d.pop("progress_bar")
        d.pop("data_workers")
        return d


def _for_candidate(cfg, resolution: Optional[int]):
    """``cfg`` with its input side for a candidate evaluated at ``resolution`` and the rule made explicit
    (``resolution_scale`` and the candidate's resolution kept), so that the geometry is in every result and
    cache key."""
    import dataclasses

    scale = cfg.side_scale(cfg.data)
    if scale is None or resolution is None:
        return cfg
    side = cfg.proxy_geometry(cfg.data).side(int(resolution))
    return dataclasses.replace(cfg, resolution=side, resolution_scale=scale, candidate_resolution=int(resolution))


@dataclass(frozen=True)
class MeasureOptions:
    """Every option of every metric: the ``measure:`` section of an experiment file."""

    counter: str = "fast"
    llm: str = "qwen2-0.5b"
    prompt_tokens: int = 32
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    #: Zero-cost proxies (synflow, naswot, grad_norm, snip).
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    #: Training metrics (train_top1, train_loss_sum).
    train: TrainProxyConfig = field(default_factory=TrainProxyConfig)
    #: Whole models of the study's space timed to fit the latency predictor (scale, exponent) before a
    #: study that uses predicted latency starts, when this device's table has no fit yet (0: no fit).
    predictor_fit: int = PREDICTOR_FIT

    def __post_init__(self) -> None:
        if self.predictor_fit < 0:
            raise ConfigError("predictor_fit", f"must be >= 0, got {self.predictor_fit}")
        if self.counter not in COUNTER_NAMES:
            raise ConfigError("counter", f"{self.counter!r} is not one of: {', '.join(COUNTER_NAMES)}")
        if self.prompt_tokens < 0:
            raise ConfigError("prompt_tokens", f"must be >= 0, got {self.prompt_tokens}")
