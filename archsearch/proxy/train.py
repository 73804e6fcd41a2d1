"""Short-training accuracy proxy with Lightning: train a scaled-down copy for a fixed step budget.

CPU by default; GPUs and several devices through Lightning's own ``accelerator`` / ``devices``.
Validation top-1 and loss are recorded at every validation; with a single-objective Optuna trial they
are reported so that a pruner can stop a hopeless trial (multi-objective studies cannot prune: the
history then goes to the trial's user attributes).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from .. import _interrupts
from ..errors import ConfigError
from ..spec import ArchSpec
from ..options import TrainProxyConfig
from .data import load_data

__all__ = ["RungHook", "TrainProxyConfig", "TrainResult", "decide_again", "train_proxy"]


@dataclass
class RungHook:
    """One training run decided at rung boundaries (a multi-fidelity search's trial, :mod:`archsearch._rungs`).

    At each boundary but the last, the run's cheap signals (the training-loss sum so far, the last training
    loss and, with ``val_subset``, top-1 and loss on that many validation images) go to ``decide(i, signals)``;
    False stops the run there. The model, optimiser and data stay in memory from the first step to the
    last, so a rung costs its steps and nothing else. The learning-rate schedule spans the last boundary
    (one-cycle, as a plain training of that length): the run that reaches it is exactly a plain training,
    and every trial at a rung is at the same point of the same schedule, so their signals compare.
    """

    boundaries: Sequence[int]
    decide: Callable[[int, Dict[str, float]], bool]
    #: Validation images scored at each boundary but the last (0: none; the last always uses the full set).
    val_subset: int = 256
    #: Written at each boundary but the last, so that a crashed trial's retry resumes there; read if present.
    checkpoint: Optional[Path] = None


@dataclass
class TrainResult:
    val_top1: float
    val_loss: float
    train_loss: float
    first_train_loss: float
    #: Sum of the training losses of every step: the training-speed estimator (Ru et al., 2021).
    loss_sum: float = float("nan")
    history: List[Dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    config: Dict[str, object] = field(default_factory=dict)
    trained_spec_hash: str = ""
    #: With a :class:`RungHook`: the signals at each boundary passed, and the boundary that stopped the run.
    boundaries: List[Dict[str, float]] = field(default_factory=list)
    stopped_at: Optional[int] = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainResult":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def stopped_at_boundary(self, i: int) -> "TrainResult":
        """This run as one that stopped at boundary ``i``: its scores are that boundary's signals (top-1 and loss
        only where the boundary scored a validation subset)."""
        at = self.boundaries[i]
        return dataclasses.replace(self, val_top1=at.get("val_top1", float("nan")), val_loss=at.get("val_loss", float("nan")),
                                   train_loss=at["train_loss"], loss_sum=at["loss_sum"], boundaries=self.boundaries[: i + 1],
                                   stopped_at=i)


def _resume_state(checkpoint: Optional[Path]) -> Optional[dict]:
    """archsearch's part of a rung checkpoint (boundaries passed), or None when there is none to resume."""
    if checkpoint is None or not Path(checkpoint).exists():
        return None
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=False).get("archsearch") or None
    except Exception:  # noqa: BLE001 - a damaged checkpoint (a crash while writing) is trained again from step 0
        Path(checkpoint).unlink(missing_ok=True)
        return None


def decide_again(rungs: RungHook, boundaries: Sequence[Dict[str, float]]) -> Optional[int]:
    """Decide the boundaries a run has already passed once more (the study has moved on since): the first that
    stops it now, or None."""
    for i, signals in enumerate(boundaries):
        if not rungs.decide(i, signals):
            return i
    return None


def train_proxy(spec: ArchSpec, config: Optional[TrainProxyConfig] = None, *, trial=None,
                rungs: Optional[RungHook] = None) -> TrainResult:
    """Train ``cfg.scaled(spec)`` for ``cfg.steps`` steps and validate.

    With ``rungs`` the run is decided at its boundaries (:class:`RungHook`; the last must be ``cfg.steps``)
    and may stop early; a checkpoint left at a boundary by a crashed run is resumed from, its boundaries'
    decisions replayed first.
    """
    cfg = config or TrainProxyConfig()
    scaled = cfg.scaled(spec)
    if rungs is not None and (not rungs.boundaries or rungs.boundaries[-1] != cfg.steps):
        raise ValueError(f"the last rung boundary must be the training's {cfg.steps} steps, got {list(rungs.boundaries)}")
    resumed = _resume_state(rungs.checkpoint) if rungs is not None else None
    if resumed is not None:
        assert rungs is not None
        passed = list(resumed.get("boundaries", []))
        i = decide_again(rungs, passed)
        if i is not None:
            return TrainResult(float("nan"), float("nan"), float("nan"), float("nan"), history=list(resumed.get("history", [])),
                               config=asdict(cfg), trained_spec_hash=scaled.spec_hash, boundaries=passed).stopped_at_boundary(i)
    train_set, val_set, num_classes = load_data(cfg, cfg.train_size, cfg.val_size)
    if len(train_set) < cfg.batch_size:  # every batch would be dropped: no step, and a score that means nothing
        raise ConfigError("batch_size", f"the training data has {len(train_set)} images, fewer than one batch of "
                                        f"{cfg.batch_size}: no training step can be taken (lower batch_size or add images)")
    if len(val_set) == 0:
        raise ConfigError("data", "the validation data is empty")
    workers = {"num_workers": cfg.data_workers, "persistent_workers": True} if cfg.data_workers else {}
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(cfg.seed), drop_last=True, **workers)
    val_loader = DataLoader(val_set, batch_size=max(cfg.batch_size, 64), **workers)
    from ._lightning import Boundaries, ProxyModule

    boundaries = None if rungs is None else Boundaries(
        list(rungs.boundaries[:-1]), rungs.decide, val_subset=rungs.val_subset, checkpoint=rungs.checkpoint,
        passed=resumed.get("boundaries", []) if resumed else None)
    module = ProxyModule(scaled, num_classes, cfg, val_loader, boundaries=boundaries, trial=trial)
    start = time.perf_counter()
    steps = _fit(module, cfg, train_loader, val_loader, resume=rungs.checkpoint if resumed is not None and rungs else None)
    result = TrainResult(float("nan"), float("nan"), module.last_train_loss, module.first_train_loss, module.loss_sum,
                         module.history, time.perf_counter() - start, asdict(cfg), scaled.spec_hash,
                         boundaries.passed if boundaries else [])
    if boundaries is not None and boundaries.stopped_at is not None:
        return result.stopped_at_boundary(boundaries.stopped_at)
    if steps < cfg.steps:
        raise ConfigError("steps", f"training stopped after {steps} of {cfg.steps} steps")
    return dataclasses.replace(result, val_top1=module.history[-1]["val_top1"], val_loss=module.history[-1]["val_loss"])


def _fit(module, cfg: TrainProxyConfig, train_loader, val_loader, *, resume: Optional[Path]) -> int:
    """Train ``module`` (from ``resume``'s checkpoint if given) and validate at the end; the steps taken.

    A run decided at rung boundaries validates once, at its end (its boundaries score a subset themselves)."""
    from ._lightning import quiet_lightning, trainer_for

    with quiet_lightning():
        trainer = trainer_for(cfg, len(train_loader))
        # Lightning answers Ctrl-C (and our SIGTERM) with sys.exit(1) and then ignores SIGINT: the caller
        # must see the interrupt itself, so that a search marks the trial and exits 130/143.
        with _interrupts.keep_sigint():
            try:
                rung_run = module.boundaries is not None
                trainer.fit(module, train_loader, None if rung_run else val_loader, ckpt_path=str(resume) if resume else None)
                stopped = rung_run and module.boundaries.stopped_at is not None
                if not stopped and (not module.history or module.history[-1]["step"] != trainer.global_step):
                    trainer.validate(module, val_loader, verbose=False)
            except SystemExit:
                if trainer.interrupted:
                    raise _interrupts.interruption() from None
                raise
    return trainer.global_step
