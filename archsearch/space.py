"""Declarative search spaces: YAML -> typed ``SpaceConfig`` -> ``SearchSpace.sample(trial) -> ArchSpec``.

Two facts about Optuna shape the sampling (checked with Optuna 5.0):

* Every trial suggests the same flat set of parameters: each stage's parameters are suggested up to the
  space's largest stage count, and ``num_stages`` decides which stages exist. NSGA-II, GP and
  multivariate TPE model only parameters present in every trial, so a conditional "stage 6 depth"
  would be drawn at random forever.
* Ordering rules are built into the parameterisation where they can be: with
  ``rules.attention_after_repmixer`` the mixer choice is ``num_attention_stages`` (the last k stages
  use attention), not one categorical per stage of which most combinations would be rejected.

What the parameterisation cannot rule out (an attention width not divisible by ``head_dim``, widths
that shrink, an output stride needing more downsampling stages than there are stages, a too-small
output grid) is rejected with :class:`InvalidSample` naming the reason; such a sample is never built.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, cast

import optuna
from omegaconf import MISSING

from ._config import apply_overrides, from_data, read_yaml
from .errors import ConfigError, InvalidSample
from .spec import POS_ENCODINGS, STEM_STRIDE, TOKEN_MIXERS, ArchSpec, StageSpec

__all__ = [
    "Candidate",
    "Rules",
    "SearchSpace",
    "SpaceConfig",
    "StageChoices",
    "apply_overrides",
    "draw",
    "load_space",
]

#: ArchSpec fields a space may hold fixed under ``fixed:`` (everything but the stages and the label).
_GLOBAL_FIELDS = {f.name: f for f in dataclasses.fields(ArchSpec) if f.name not in ("stages", "name")}


@dataclass
class StageChoices:
    """Choices for one stage position; each key lists the values the sampler may pick."""

    depth: List[int] = MISSING
    #: Absolute widths, or (stages after the first) ``width_mult``: multiples of the previous stage's
    #: width. Multipliers follow FastViT's constraint that a width change multiplies the width.
    width: Optional[List[int]] = None
    width_mult: Optional[List[int]] = None
    token_mixer: List[str] = field(default_factory=lambda: ["repmixer"])
    mlp_ratio: List[float] = field(default_factory=lambda: [3.0])
    pos_enc: List[str] = field(default_factory=lambda: ["none"])
    se_downsample: List[bool] = field(default_factory=lambda: [False])

    def __post_init__(self) -> None:
        if (self.width is None) == (self.width_mult is None):
            raise ConfigError("width", "give exactly one of 'width' and 'width_mult'")
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is not None and not getattr(self, f.name):
                raise ConfigError(f.name, "choice list is empty")
        for key, lo in (("depth", 1), ("width", 1), ("width_mult", 1)):
            for v in getattr(self, key) or ():
                if v < lo:
                    raise ConfigError(key, f"choice {v} must be >= {lo}")
        for v in self.mlp_ratio:
            if v <= 0:
                raise ConfigError("mlp_ratio", f"choice {v} must be > 0")
        for key, allowed in (("token_mixer", TOKEN_MIXERS), ("pos_enc", POS_ENCODINGS)):
            for v in getattr(self, key):
                if v not in allowed:
                    raise ConfigError(key, f"choice {v!r} is not one of: {', '.join(allowed)}")
        for f in dataclasses.fields(self):
            values = getattr(self, f.name) or []
            if len(set(values)) != len(values):
                raise ConfigError(f.name, f"choice list {values} has duplicates")


@dataclass
class Rules:
    #: RepMixer stages first, then attention stages (FastViT, FastViTHD); sampled as
    #: ``num_attention_stages``. Off: each stage's mixer is its own categorical.
    attention_after_repmixer: bool = True
    nondecreasing_width: bool = True
    #: Smallest side of the output token grid a sample may have.
    min_grid: int = 1

    def __post_init__(self) -> None:
        if self.min_grid < 1:
            raise ConfigError("min_grid", f"must be >= 1, got {self.min_grid}")


@dataclass
class SpaceConfig:
    """A search space as written in ``search_spaces/*.yaml``."""

    name: str = MISSING
    resolution: List[int] = MISSING
    num_stages: List[int] = MISSING
    #: Total stride of the output grid: 4 (stem) * 2 per downsampling stage.
    output_stride: List[int] = MISSING
    stages: List[StageChoices] = MISSING
    #: Used when ``rules.attention_after_repmixer``: how many trailing stages use attention.
    num_attention_stages: List[int] = field(default_factory=lambda: [0])
    rules: Rules = field(default_factory=Rules)
    #: ArchSpec global fields held fixed for every sample (norm, head_dim, lkc_act, ...).
    fixed: Dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        for key in ("resolution", "num_stages", "output_stride", "stages", "num_attention_stages"):
            values = getattr(self, key)
            if not values:
                raise ConfigError(key, "choice list is empty")
            if key != "stages" and len(set(values)) != len(values):
                raise ConfigError(key, f"choice list {values} has duplicates")
        for r in self.resolution:
            if r < 1:
                raise ConfigError("resolution", f"choice {r} must be >= 1")
        for n in self.num_stages:
            if n < 1:
                raise ConfigError("num_stages", f"choice {n} must be >= 1")
        max_stages = max(self.num_stages)
        if max_stages > len(self.stages):
            raise ConfigError(
                "num_stages", f"choice {max_stages} needs {max_stages} entries under 'stages', found {len(self.stages)}"
            )
        for s in self.output_stride:
            k = _downsampling_stages(s)
            if k is None:
                raise ConfigError("output_stride", f"choice {s} is not {STEM_STRIDE} times a power of two")
            if k > max_stages:
                raise ConfigError(
                    "output_stride",
                    f"choice {s} needs {k} downsampling stages, more than the largest num_stages ({max_stages})",
                )
        for k in self.num_attention_stages:
            if not 0 <= k <= max_stages:
                raise ConfigError("num_attention_stages", f"choice {k} is not within 0..{max_stages}")
        self._check_fixed()
        if self.stages[0].width is None:
            raise ConfigError("stages[0].width_mult", "the first stage needs absolute 'width' choices")
        head_dim = self.fixed.get("head_dim", _GLOBAL_FIELDS["head_dim"].default)
        for i, widths in enumerate(self.reachable_widths()):
            if "attention" in self.stages[i].token_mixer and not any(w % head_dim == 0 for w in widths):
                raise ConfigError(
                    f"stages[{i}].width",
                    f"no reachable width is divisible by head_dim {head_dim}, but token_mixer allows attention",
                )
        if self.rules.attention_after_repmixer and max(self.num_attention_stages) > 0:
            if not any("attention" in st.token_mixer for st in self.stages):
                raise ConfigError("num_attention_stages", "asks for attention stages but no stage allows attention")

    def reachable_widths(self) -> list[set[int]]:
        """Every width each stage position can take (absolute choices, or products of multipliers)."""
        reach: list[set[int]] = []
        for st in self.stages:
            if st.width is not None:
                reach.append(set(st.width))
            else:
                reach.append({w * m for w in reach[-1] for m in st.width_mult or ()})
        return reach

    def _check_fixed(self) -> None:
        for key in self.fixed:
            if key not in _GLOBAL_FIELDS:
                raise ConfigError(f"fixed.{key}", f"unknown key; expected one of: {', '.join(_GLOBAL_FIELDS)}")
        # Let ArchSpec check types and values: one place for every rule about a spec.
        try:
            ArchSpec(stages=(StageSpec(depth=1, width=1),), **self.fixed)
        except ConfigError as e:
            raise e.under("fixed") from None


def _downsampling_stages(output_stride: int) -> Optional[int]:
    if output_stride < STEM_STRIDE or output_stride % STEM_STRIDE:
        return None
    k = math.log2(output_stride // STEM_STRIDE)
    return int(k) if k == int(k) else None


@dataclass(frozen=True)
class Candidate:
    """One sampled point: an architecture and the input resolution it is evaluated at."""

    spec: ArchSpec
    resolution: int


class SearchSpace:
    """A validated space; ``sample`` draws an ``ArchSpec`` through an Optuna trial's ``suggest_*``."""

    def __init__(self, config: SpaceConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def max_stages(self) -> int:
        return max(self.config.num_stages)

    def sample_resolution(self, trial: optuna.Trial) -> int:
        return trial.suggest_categorical("resolution", self.config.resolution)

    def sample(self, trial: optuna.Trial) -> ArchSpec:
        """Suggest every parameter of the space, then build the spec or raise ``InvalidSample``."""
        cfg = self.config
        n = trial.suggest_categorical("num_stages", cfg.num_stages)
        output_stride = trial.suggest_categorical("output_stride", cfg.output_stride)
        if cfg.rules.attention_after_repmixer:
            n_attn = trial.suggest_categorical("num_attention_stages", cfg.num_attention_stages)
        raw: list[dict[str, Any]] = []
        for i, st in enumerate(cfg.stages[: self.max_stages]):
            if st.width is not None:
                width = trial.suggest_categorical(f"s{i}_width", st.width)
            else:
                width = raw[-1]["width"] * trial.suggest_categorical(f"s{i}_width_mult", cast(list, st.width_mult))
            raw.append(
                dict(
                    depth=trial.suggest_categorical(f"s{i}_depth", st.depth),
                    width=width,
                    mlp_ratio=trial.suggest_categorical(f"s{i}_mlp_ratio", st.mlp_ratio),
                    pos_enc=trial.suggest_categorical(f"s{i}_pos_enc", st.pos_enc),
                    se_downsample=trial.suggest_categorical(f"s{i}_se_downsample", st.se_downsample),
                    token_mixer=(
                        None
                        if cfg.rules.attention_after_repmixer
                        else trial.suggest_categorical(f"s{i}_token_mixer", st.token_mixer)
                    ),
                )
            )
        raw = raw[:n]
        if cfg.rules.attention_after_repmixer:
            if n_attn > n:
                raise InvalidSample(f"num_attention_stages {n_attn} exceeds num_stages {n}")
            for i, stage in enumerate(raw):
                stage["token_mixer"] = "attention" if i >= n - n_attn else "repmixer"
                if stage["token_mixer"] not in cfg.stages[i].token_mixer:
                    raise InvalidSample(
                        f"stage {i} would use {stage['token_mixer']} (num_attention_stages={n_attn}), "
                        f"but stages[{i}].token_mixer allows only {cfg.stages[i].token_mixer}"
                    )
        return self._assemble(raw, output_stride)

    def _assemble(self, raw: list[dict], output_stride: int) -> ArchSpec:
        n, rules = len(raw), self.config.rules
        k = _downsampling_stages(output_stride)
        assert k is not None  # checked at load time
        if k > n:
            raise InvalidSample(f"output_stride {output_stride} needs {k} downsampling stages, only {n} stages")
        # Downsample as early as possible: stages 1..k (stage 0 too when every stage must), as in FastViT
        # and FastViTHD; later stages then run at the final stride.
        first = 0 if k == n else 1
        for i, stage in enumerate(raw):
            stage["downsample"] = first <= i < first + k
        if rules.nondecreasing_width:
            for i in range(1, n):
                if raw[i]["width"] < raw[i - 1]["width"]:
                    raise InvalidSample(
                        f"stage {i} width {raw[i]['width']} < stage {i - 1} width {raw[i - 1]['width']} "
                        "(rules.nondecreasing_width)"
                    )
        try:
            return ArchSpec(stages=tuple(StageSpec(**s) for s in raw), **self.config.fixed)
        except ConfigError as e:
            raise InvalidSample(str(e)) from None

    def params_for(self, spec: ArchSpec, resolution: int) -> Optional[Dict[str, Any]]:
        """Trial parameters that sample exactly ``(spec, resolution)``, or None if it is not in the space.

        Used to enqueue reference designs as ordinary trials. Absent stage positions get their first
        choice (they do not affect the spec).
        """
        cfg = self.config
        n = spec.num_stages
        if n not in cfg.num_stages or resolution not in cfg.resolution or spec.output_stride not in cfg.output_stride:
            return None
        params: Dict[str, Any] = {"resolution": resolution, "num_stages": n, "output_stride": spec.output_stride}
        if cfg.rules.attention_after_repmixer:
            params["num_attention_stages"] = sum(s.token_mixer == "attention" for s in spec.stages)
        prev_width = None
        for i, st in enumerate(cfg.stages[: self.max_stages]):
            stage = spec.stages[i] if i < n else None
            if st.width is not None:
                params[f"s{i}_width"] = stage.width if stage else st.width[0]
            else:
                mult = stage.width // prev_width if stage and prev_width and stage.width % prev_width == 0 else None
                params[f"s{i}_width_mult"] = mult if stage else cast(list, st.width_mult)[0]
            for key in ("depth", "mlp_ratio", "pos_enc", "se_downsample"):
                params[f"s{i}_{key}"] = getattr(stage, key) if stage else getattr(st, key)[0]
            if not cfg.rules.attention_after_repmixer:
                params[f"s{i}_token_mixer"] = stage.token_mixer if stage else st.token_mixer[0]
            prev_width = stage.width if stage else prev_width
        try:
            got = self.sample_candidate(cast(optuna.Trial, optuna.trial.FixedTrial(params)))
        except (InvalidSample, ValueError):
            return None
        return params if got.spec == spec and got.resolution == resolution else None

    def sample_candidate(self, trial: optuna.Trial) -> Candidate:
        """Spec and resolution; also enforces ``rules.min_grid``, which depends on both."""
        resolution = self.sample_resolution(trial)
        spec = self.sample(trial)
        grid = spec.grid(resolution)
        if min(grid) < self.config.rules.min_grid:
            raise InvalidSample(
                f"output grid {grid[0]}x{grid[1]} at {resolution} px is below rules.min_grid {self.config.rules.min_grid}"
            )
        return Candidate(spec, resolution)


def load_space(path: str | Path, overrides: Sequence[str] = ()) -> SearchSpace:
    """Load and validate a space file; every error is a one-line :class:`ConfigError` naming the key."""
    data = apply_overrides(read_yaml(path), overrides)
    try:
        return SearchSpace(from_data(SpaceConfig, data))
    except ConfigError as e:
        raise ConfigError(e.key, f"{e.message} (in {path})") from None


def draw(space: SearchSpace, n: int, *, seed: int = 0, max_attempts: Optional[int] = None) -> tuple[list[Candidate], list[str]]:
    """``n`` valid candidates by random sampling, deterministic for ``seed``; also the rejection reasons.

    Goes through an in-memory Optuna study so that it exercises exactly the search's sampling code.
    """
    if n < 0:
        raise ConfigError("n", f"must be >= 0, got {n}")
    max_attempts = max_attempts if max_attempts is not None else max(100, 50 * n)
    prev = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        found: list[Candidate] = []
        rejected: list[str] = []
        while len(found) < n:
            if len(found) + len(rejected) >= max_attempts:
                raise ConfigError(
                    "", f"space {space.name!r}: only {len(found)} valid samples in {max_attempts} draws; "
                    f"most common rejection: {max(set(rejected), key=rejected.count)}"
                )
            trial = study.ask()
            try:
                found.append(space.sample_candidate(trial))
                study.tell(trial, 0.0)
            except InvalidSample as e:
                rejected.append(e.reason)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return found, rejected
    finally:
        optuna.logging.set_verbosity(prev)
