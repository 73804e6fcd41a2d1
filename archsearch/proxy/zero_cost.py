"""Zero-cost accuracy proxies at initialisation: synflow, naswot, grad_norm, snip.

Each scores a freshly initialised network from one mini-batch, deterministically for a seed. A spec too
big to score on this machine is scored on a scaled-down copy (same topology, narrower and shallower,
smaller input): ``ProxyConfig`` holds that scaling rule and is logged with every score.

* ``synflow`` (Tanaka et al., 2020): sum |theta * dR/dtheta| with R the output sum of the network with
  absolute-valued weights on an all-ones input, in float64; data-free. Zero when a layer every path
  crosses is dead.
* ``naswot`` (Mellor et al., 2021): log|det K| of the Hamming-similarity kernel of the binary codes
  (pre-activation > 0) that a batch leaves at every GELU; higher when inputs are told apart.
* ``grad_norm``: sum over parameters of ||dL/dtheta||_2 for cross-entropy on the batch.
* ``snip`` (Lee et al., 2019): sum |theta * dL/dtheta| for the same loss.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..build import build_model
from ..errors import ConfigError
from ..spec import ArchSpec
from ..options import ZERO_COST_NAMES, ProxyConfig

__all__ = ["PROXIES", "ProxyConfig", "ProxyScore", "proxy_batch", "score_proxy"]


@dataclass(frozen=True)
class ProxyScore:
    name: str
    score: float
    seconds: float
    config: Dict[str, object]
    scored_spec_hash: str

    def to_dict(self) -> dict:
        return asdict(self)


def proxy_batch(cfg: ProxyConfig, in_chans: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded batch: Gaussian images and random labels (``data: noise``), or real images and labels."""
    g = torch.Generator().manual_seed(cfg.seed)
    if cfg.data != "noise":
        from .data import load_data

        # The first batch_size images of the data set's fixed subset, in a seeded order.
        train, _, _ = load_data(cfg, cfg.batch_size, 1)
        idx = torch.randperm(len(train), generator=g).tolist()
        x, y = zip(*(train[i] for i in idx))
        return torch.stack(x)[:, :in_chans].contiguous(), torch.tensor(y)
    x = torch.randn(cfg.batch_size, in_chans, cfg.resolution, cfg.resolution, generator=g)
    y = torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=g)
    return x, y


def synflow(model: nn.Module, x: torch.Tensor, _y: torch.Tensor) -> float:
    model = model.double().eval()
    with torch.no_grad():
        signs = {}
        for name, p in model.state_dict().items():
            if p.is_floating_point():
                signs[name] = torch.sign(p)
                p.abs_()
    model.zero_grad()
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64)
    model(ones).sum().backward()
    score = sum((p * p.grad).abs().sum().item() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if name in signs:
                p.mul_(signs[name])
    return float(score)


def naswot(model: nn.Module, x: torch.Tensor, _y: torch.Tensor) -> float:
    model = model.eval()
    n = x.shape[0]
    kernel = torch.zeros(n, n, dtype=torch.float64)

    def hook(_module: nn.Module, inputs, _output) -> None:
        codes = (inputs[0].detach().reshape(n, -1) > 0).double()
        kernel.add_(codes @ codes.T + (1 - codes) @ (1 - codes).T)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.GELU, nn.ReLU))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if sign > 0 else float("-inf")


def _loss_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.train()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()


def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    _loss_grads(model, x, y)
    return float(sum(p.grad.norm().item() for p in model.parameters() if p.grad is not None))


def snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    _loss_grads(model, x, y)
    return float(sum((p * p.grad).abs().sum().item() for p in model.parameters() if p.grad is not None))


#: Zero-cost proxies by name: (model with a classifier head, images, labels) -> score; higher is better.
PROXIES: Dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], float]] = {
    "synflow": synflow,
    "naswot": naswot,
    "grad_norm": grad_norm,
    "snip": snip,
}
assert tuple(PROXIES) == ZERO_COST_NAMES


def score_proxy(spec: ArchSpec, name: str, config: Optional[ProxyConfig] = None) -> ProxyScore:
    if name not in PROXIES:
        raise ConfigError("proxy", f"{name!r} is not one of: {', '.join(PROXIES)}")
    cfg = config or ProxyConfig()
    scored = cfg.scaled(spec)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = build_model(scored, num_classes=cfg.num_classes)
    x, y = proxy_batch(cfg, spec.in_chans)
    score = PROXIES[name](model, x, y)
    return ProxyScore(name, score, time.perf_counter() - start, asdict(cfg), scored.spec_hash)
