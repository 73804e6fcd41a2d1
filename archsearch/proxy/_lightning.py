"""The Lightning side of the training proxy: the module that trains one scaled copy, and its trainer.

Imported by :func:`archsearch.proxy.train.train_proxy` when it trains, so that importing the proxy's
types costs no Lightning. The module keeps, besides the model, what a proxy reports: the training-loss
sum, the validation history and, in a run decided at rung boundaries, each boundary's signals.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import lightning as L
import torch
import torch.nn.functional as F

from .. import _interrupts, _scoped
from ..build import build_model
from ..options import TrainProxyConfig
from ..spec import ArchSpec

__all__ = ["Boundaries", "ProxyModule", "quiet_lightning", "trainer_for"]


class Boundaries:
    """A run's rung boundaries below the last: the signals taken at each, and the one whose decision stopped it.

    ``steps`` are the lower boundaries' step counts; ``decide(i, signals)`` answers whether the run goes on past
    boundary ``i``. ``passed`` may start with the boundaries a resumed run had already passed.
    """

    def __init__(self, steps: List[int], decide: Callable[[int, Dict[str, float]], bool], *, val_subset: int = 0,
                 checkpoint: Optional[Path] = None, passed: Optional[List[Dict[str, float]]] = None) -> None:
        self.index = {b: i for i, b in enumerate(steps)}
        self.decide = decide
        self.val_subset = val_subset
        self.checkpoint = checkpoint
        self.passed: List[Dict[str, float]] = list(passed or [])
        self.stopped_at: Optional[int] = None

    def due(self, step: int) -> Optional[int]:
        """The boundary reached at ``step``, unless it was already passed (a resumed run)."""
        i = self.index.get(step)
        return i if i is not None and len(self.passed) <= i else None


class ProxyModule(L.LightningModule):
    """Trains ``scaled`` on the proxy's task; validation (full pass) fills ``history``, boundaries score a subset."""

    def __init__(self, scaled: ArchSpec, num_classes: int, cfg: TrainProxyConfig, val_loader, *,
                 boundaries: Optional[Boundaries] = None, trial=None) -> None:
        super().__init__()
        torch.manual_seed(cfg.seed)
        self.model = build_model(scaled, num_classes=num_classes)
        self.cfg = cfg
        self.val_loader = val_loader
        self.boundaries = boundaries
        self.trial = trial
        self.history: List[Dict[str, float]] = []
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
        b = self.boundaries
        i = b.due(self.global_step) if b is not None else None
        if b is None or i is None:
            return
        start = time.perf_counter()
        signals = {"step": float(self.global_step), "loss_sum": self.loss_sum, "train_loss": self.last_train_loss}
        if b.val_subset:
            signals.update(self._subset_scores(b.val_subset))
        b.passed.append(signals)
        if b.checkpoint is not None:
            _save_atomic(self.trainer, b.checkpoint)
        signals["boundary_s"] = time.perf_counter() - start  # what the rung cost besides its steps
        if not b.decide(i, signals):
            b.stopped_at = i
            self.trainer.should_stop = True

    @torch.no_grad()
    def _subset_scores(self, n: int) -> Dict[str, float]:
        """Top-1 and loss on the first ``n`` validation images: a rung's look at accuracy, no full pass."""
        was_training = self.model.training
        self.model.eval()
        loss, correct, seen = 0.0, 0, 0
        for x, y in self.val_loader:
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
        self.history.append(record)
        self.log_dict({"val_loss": record["val_loss"], "val_top1": record["val_top1"]}, prog_bar=True)
        if self.trial is not None:
            self._report(record)

    def _report(self, record: Dict[str, float]) -> None:
        """A single-objective trial reports for its pruner; a multi-objective one keeps the history."""
        import optuna

        if len(self.trial.study.directions) == 1:
            self.trial.report(record["val_top1"], record["step"])
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"val_top1 {record['val_top1']:.3f} at step {record['step']}")
        else:
            self.trial.set_user_attr("train_history", list(self.history))

    def on_save_checkpoint(self, state: dict) -> None:
        state["archsearch"] = {"loss_sum": self.loss_sum, "first_train_loss": self.first_train_loss,
                               "last_train_loss": self.last_train_loss, "history": list(self.history),
                               "boundaries": list(self.boundaries.passed) if self.boundaries else []}

    def on_load_checkpoint(self, state: dict) -> None:
        saved = state.get("archsearch", {})
        self.loss_sum = saved.get("loss_sum", 0.0)
        self.first_train_loss = saved.get("first_train_loss", float("nan"))
        self.last_train_loss = saved.get("last_train_loss", float("nan"))
        self.history[:0] = saved.get("history", [])

    def configure_optimizers(self):
        cfg = self.cfg
        opt = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def trainer_for(cfg: TrainProxyConfig, batches_per_epoch: int) -> L.Trainer:
    """A quiet trainer for ``cfg.steps`` steps that validates every ``cfg.val_every`` (or at the end)."""
    return L.Trainer(
        max_steps=cfg.steps, accelerator=cfg.accelerator, devices=cfg.devices, logger=False, enable_checkpointing=False,
        enable_progress_bar=cfg.progress_bar, enable_model_summary=False, num_sanity_val_steps=0,
        val_check_interval=min(cfg.val_every or cfg.steps, batches_per_epoch), check_val_every_n_epoch=None,
        deterministic=False,
    )


def quiet_lightning() -> contextlib.ExitStack:
    """Lightning's device announcements, tips and data-loader advice, quieted for the call only (a proxy trains
    hundreds of times)."""
    stack = contextlib.ExitStack()
    stack.enter_context(_scoped.log_levels({n: logging.WARNING for n in ("lightning", "lightning.pytorch", "lightning.fabric")}))
    stack.enter_context(warnings.catch_warnings())
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    warnings.filterwarnings("ignore", message=".*have no `val_dataloader`.*")  # a rung run validates at its end only
    return stack


def _save_atomic(trainer: L.Trainer, checkpoint: Path) -> None:
    Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{checkpoint}.{os.getpid()}.tmp")
    trainer.save_checkpoint(str(tmp))
    tmp.replace(checkpoint)
