"""Short-training accuracy proxy with Lightning: train a scaled-down copy for a fixed step budget.

CPU by default; GPUs and several devices through Lightning's own ``accelerator`` / ``devices``.
Validation top-1 and loss are recorded at every validation; with a single-objective Optuna trial they
are reported so that a pruner can stop a hopeless trial (multi-objective studies cannot prune: the
history then goes to the trial's user attributes).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .. import _interrupts, _scoped
from ..build import build_model
from ..errors import ConfigError
from ..spec import ArchSpec
from ..options import TrainProxyConfig
from .data import load_data

__all__ = ["RungHook", "TrainProxyConfig", "TrainResult", "train_proxy"]


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


def _quiet_lightning():
    # Lightning announces devices, tips and data-loader advice on every Trainer; a proxy trains hundreds
    # of times. Its loggers are quieted for the call only.
    import warnings

    stack = contextlib.ExitStack()
    stack.enter_context(_scoped.log_levels({n: logging.WARNING for n in ("lightning", "lightning.pytorch", "lightning.fabric")}))
    stack.enter_context(warnings.catch_warnings())
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    warnings.filterwarnings("ignore", message=".*have no `val_dataloader`.*")  # a rung run validates at its end only
    return stack


def _resume_state(checkpoint: Optional[Path]) -> Optional[dict]:
    """archsearch's part of a rung checkpoint (boundaries passed), or None when there is none to resume."""
    if checkpoint is None or not Path(checkpoint).exists():
        return None
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=False).get("archsearch") or None
    except Exception:  # noqa: BLE001 - a damaged checkpoint (a crash while writing) is trained again from step 0
        Path(checkpoint).unlink(missing_ok=True)
        return None


def train_proxy(spec: ArchSpec, config: Optional[TrainProxyConfig] = None, *, trial=None,
                rungs: Optional[RungHook] = None) -> TrainResult:
    """Train ``cfg.scaled(spec)`` for ``cfg.steps`` steps and validate.

    With ``rungs`` the run is decided at its boundaries (:class:`RungHook`; the last must be ``cfg.steps``)
    and may stop early; a checkpoint left at a boundary by a crashed run is resumed from, its boundaries'
    decisions replayed first.
    """
    import lightning as L

    cfg = config or TrainProxyConfig()
    if rungs is not None and (not rungs.boundaries or rungs.boundaries[-1] != cfg.steps):
        raise ValueError(f"the last rung boundary must be the training's {cfg.steps} steps, got {list(rungs.boundaries)}")
    lower = {b: i for i, b in enumerate(rungs.boundaries[:-1])} if rungs is not None else {}
    resumed = _resume_state(rungs.checkpoint) if rungs is not None else None
    passed: List[Dict[str, float]] = []
    if resumed is not None:
        assert rungs is not None
        for i, signals in enumerate(resumed.get("boundaries", [])):  # decided again: the study has moved on
            passed.append(signals)
            if not rungs.decide(i, signals):
                return TrainResult(signals.get("val_top1", float("nan")), signals.get("val_loss", float("nan")),
                                   signals["train_loss"], float("nan"), signals["loss_sum"], list(resumed.get("history", [])),
                                   0.0, asdict(cfg), cfg.scaled(spec).spec_hash, passed, i)
    scaled = cfg.scaled(spec)
    train_set, val_set, num_classes = load_data(cfg, cfg.train_size, cfg.val_size)
    history: List[Dict[str, float]] = []
    stopped: List[int] = []

    class ProxyModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(cfg.seed)
            self.model = build_model(scaled, num_classes=num_classes)
            self.last_train_loss = float("nan")
            self.first_train_loss = float("nan")
            self.loss_sum = 0.0
            self._val: List[tuple] = []

        def on_train_batch_start(self, _batch, _batch_idx) -> None:
            _interrupts.check()  # a safe point every step (see archsearch._interrupts)

        def training_step(self, batch, _):
            x, y = batch
            loss = F.cross_entropy(self.model(x), y)
            self.last_train_loss = float(loss.detach())
            self.loss_sum += self.last_train_loss
            if self.global_step == 0:
                self.first_train_loss = self.last_train_loss
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def on_train_batch_end(self, _outputs, _batch, _batch_idx) -> None:
            if self.global_step not in lower or len(passed) > lower[self.global_step]:
                return
            assert rungs is not None
            i = lower[self.global_step]
            start = time.perf_counter()
            signals = {"step": float(self.global_step), "loss_sum": self.loss_sum, "train_loss": self.last_train_loss}
            if rungs.val_subset:
                signals.update(self._subset_scores(rungs.val_subset))
            passed.append(signals)
            if rungs.checkpoint is not None:
                _save_atomic(self.trainer, rungs.checkpoint)
            signals["boundary_s"] = time.perf_counter() - start  # what the rung cost besides its steps
            if not rungs.decide(i, signals):
                stopped.append(i)
                self.trainer.should_stop = True

        @torch.no_grad()
        def _subset_scores(self, n: int) -> Dict[str, float]:
            """Top-1 and loss on the first ``n`` validation images: a rung's look at accuracy, no full pass."""
            was_training = self.model.training
            self.model.eval()
            loss, correct, seen = 0.0, 0, 0
            for x, y in val_loader:
                x, y = x[: n - seen].to(self.device), y[: n - seen].to(self.device)
                logits = self.model(x)
                loss += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
                if seen >= n:
                    break
            self.model.train(was_training)
            return {"val_top1": correct / seen, "val_loss": loss / seen, "val_images": float(seen)}

        def validation_step(self, batch, _):
            x, y = batch
            logits = self.model(x)
            self._val.append((F.cross_entropy(logits, y, reduction="sum").item(), (logits.argmax(1) == y).sum().item(), len(y)))

        def on_validation_epoch_end(self) -> None:
            loss, correct, n = (sum(v[i] for v in self._val) for i in range(3))
            self._val.clear()
            record = {"step": int(self.global_step), "val_loss": loss / n, "val_top1": correct / n}
            history.append(record)
            self.log_dict({"val_loss": record["val_loss"], "val_top1": record["val_top1"]}, prog_bar=True)
            if trial is not None:
                import optuna

                if len(trial.study.directions) == 1:
                    trial.report(record["val_top1"], record["step"])
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"val_top1 {record['val_top1']:.3f} at step {record['step']}")
                else:
                    trial.set_user_attr("train_history", list(history))

        def on_save_checkpoint(self, state: dict) -> None:
            state["archsearch"] = {"loss_sum": self.loss_sum, "first_train_loss": self.first_train_loss,
                                   "last_train_loss": self.last_train_loss, "history": list(history),
                                   "boundaries": list(passed)}

        def on_load_checkpoint(self, state: dict) -> None:
            saved = state.get("archsearch", {})
            self.loss_sum = saved.get("loss_sum", 0.0)
            self.first_train_loss = saved.get("first_train_loss", float("nan"))
            self.last_train_loss = saved.get("last_train_loss", float("nan"))
            history[:0] = saved.get("history", [])

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    if len(train_set) < cfg.batch_size:  # every batch would be dropped: no step, and a score that means nothing
        raise ConfigError("batch_size", f"the training data has {len(train_set)} images, fewer than one batch of "
                                        f"{cfg.batch_size}: no training step can be taken (lower batch_size or add images)")
    if len(val_set) == 0:
        raise ConfigError("data", "the validation data is empty")
    g = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=g, drop_last=True)
    val_loader = DataLoader(val_set, batch_size=max(cfg.batch_size, 64))
    module = ProxyModule()
    with _quiet_lightning():
        trainer = L.Trainer(
            max_steps=cfg.steps, accelerator=cfg.accelerator, devices=cfg.devices, logger=False, enable_checkpointing=False,
            enable_progress_bar=cfg.progress_bar, enable_model_summary=False, num_sanity_val_steps=0,
            val_check_interval=min(cfg.val_every or cfg.steps, len(train_loader)), check_val_every_n_epoch=None,
            deterministic=False,
        )
        start = time.perf_counter()
        resume = str(rungs.checkpoint) if resumed is not None and rungs is not None else None
        # Lightning answers Ctrl-C (and our SIGTERM) with sys.exit(1) and then ignores SIGINT: the caller
        # must see the interrupt itself, so that a search marks the trial and exits 130/143.
        with _interrupts.keep_sigint():
            try:
                # A rung run validates once, at its end: its boundaries score a subset themselves.
                trainer.fit(module, train_loader, val_loader if rungs is None else None, ckpt_path=resume)
                if not stopped and (not history or history[-1]["step"] != trainer.global_step):
                    trainer.validate(module, val_loader, verbose=False)
            except SystemExit:
                if trainer.interrupted:
                    raise _interrupts.interruption() from None
                raise
    seconds = time.perf_counter() - start
    if stopped:
        at = passed[stopped[0]]
        return TrainResult(at.get("val_top1", float("nan")), at.get("val_loss", float("nan")), module.last_train_loss,
                           module.first_train_loss, module.loss_sum, history, seconds, asdict(cfg), scaled.spec_hash,
                           passed, stopped[0])
    final = history[-1]
    if trainer.global_step < cfg.steps:
        raise ConfigError("steps", f"training stopped after {trainer.global_step} of {cfg.steps} steps")
    return TrainResult(final["val_top1"], final["val_loss"], module.last_train_loss, module.first_train_loss,
                       module.loss_sum, history, seconds, asdict(cfg), scaled.spec_hash, passed)


def _save_atomic(trainer, checkpoint: Path) -> None:
    Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{checkpoint}.{os.getpid()}.tmp")
    trainer.save_checkpoint(str(tmp))
    tmp.replace(checkpoint)
