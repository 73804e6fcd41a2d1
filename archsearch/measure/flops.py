"""Parameters, MACs and activations of a spec at a resolution, by three counters.

``fast`` (the default) runs the deploy-form model on the meta device under a ``TorchDispatchMode``
that prices every aten op with ``torch.utils.flop_counter``'s formulas: no memory, no arithmetic,
well under a second for FastViTHD at 1024 px (fvcore took 36 s there, ptflops 59 s). On meta, SDPA
decomposes to ``bmm``, so attention matmuls are counted; on CPU tensors the fused
``_scaled_dot_product_flash_attention_for_cpu`` is priced too (torch's own counter skips it).

What each counter counts (MACs = multiply-accumulates; FLOPs = 2 x MACs):

============================  =========  =================  ==========================
op                            fast       fvcore             ptflops (aten backend)
============================  =========  =================  ==========================
conv weights                  yes        yes                yes
linear / mm weights           yes        yes                yes
attention QK^T and AV         yes        no (SDPA skipped)  no (fused CPU SDPA skipped)
conv / linear bias adds       separate   no                 yes, in the total
norms (BN, LayerNorm)         no         yes                no
activations, elementwise      no         no                 no
============================  =========  =================  ==========================

So the counters agree exactly on conv + linear weights ("shared ops"); ``macs`` of the fast counter
is conv + linear + attention. The test suite checks the agreement.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

from ..build import build_model, count_params, deploy_model
from ..errors import ConfigError
from ..options import COUNTER_NAMES
from ..spec import ArchSpec, Resolution, parse_resolution

__all__ = ["Complexity", "COUNTERS", "count_complexity"]

aten = torch.ops.aten

#: Category of each priced op. Matmuls between activations (bmm, SDPA) occur only in attention in the
#: FastViT family; linear layers lower to mm / addmm.
_CATEGORY = {
    aten.convolution: "conv",
    aten._convolution: "conv",
    aten.mm: "linear",
    aten.addmm: "linear",
    aten.bmm: "attention",
    aten.baddbmm: "attention",
    aten._scaled_dot_product_flash_attention: "attention",
    aten._scaled_dot_product_efficient_attention: "attention",
    aten._scaled_dot_product_cudnn_attention: "attention",
    aten._scaled_dot_product_flash_attention_for_cpu: "attention",
}


def _cpu_sdpa_flops(query, key, value, *args, out_val=None, **kwargs) -> int:  # noqa: ARG001 - torch.utils.flop_counter calls formulas with these names
    return sdpa_flop_count(query.shape, key.shape, value.shape)


def _bias_adds(packet, args, out) -> int:
    if packet in (aten.convolution, aten._convolution) and args[2] is not None:
        return out.numel()
    if packet is aten.addmm:
        return out.numel()
    return 0


class _OpCounter(TorchDispatchMode):
    """Prices each aten op as it runs: MACs by category, bias adds, output elements of priced ops."""

    def __init__(self) -> None:
        super().__init__()
        self.macs: Dict[str, int] = {"conv": 0, "linear": 0, "attention": 0}
        self.bias_adds = 0
        self.activations = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        category = _CATEGORY.get(packet)
        if category is not None:
            formula = _cpu_sdpa_flops if packet is aten._scaled_dot_product_flash_attention_for_cpu else flop_registry[packet]
            self.macs[category] += formula(*args, **kwargs, out_val=out) // 2
            self.bias_adds += _bias_adds(packet, args, out)
            first = out[0] if isinstance(out, (tuple, list)) else out
            self.activations += first.numel()
        return out


@dataclass(frozen=True)
class Complexity:
    """Counts for one (spec, resolution); ``conditions`` says how they were obtained."""

    params: int
    params_deploy: int
    macs: int
    macs_by_op: Dict[str, int]
    bias_adds: int
    #: Output elements of conv / linear / attention ops (fvcore's activation count); x4 for fp32 bytes.
    activations: int
    conditions: Dict[str, object] = field(default_factory=dict)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def shared_macs(self) -> int:
        """conv + linear weight MACs: what every counter counts the same way."""
        return self.macs_by_op.get("conv", 0) + self.macs_by_op.get("linear", 0)

    def to_dict(self) -> dict:
        return asdict(self)


def _fast(spec: ArchSpec, hw: tuple[int, int]) -> dict:
    model = build_model(spec, device="meta", inference_mode=True, resolution=hw).eval()
    counter = _OpCounter()
    with torch.no_grad(), counter:
        model(torch.empty(1, spec.in_chans, *hw, device="meta"))
    return dict(
        macs=sum(counter.macs.values()),
        macs_by_op=dict(counter.macs),
        bias_adds=counter.bias_adds,
        activations=counter.activations,
    )


def _fvcore(spec: ArchSpec, hw: tuple[int, int]) -> dict:
    import logging

    from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis

    model = deploy_model(spec, resolution=hw)
    x = torch.randn(1, spec.in_chans, *hw)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    flops = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_op = dict(flops.by_operator())  # fvcore's "flop" is one multiply-accumulate
    acts = ActivationCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    macs_by_op = {
        "conv": int(by_op.pop("conv", 0)),
        "linear": int(by_op.pop("linear", 0) + by_op.pop("addmm", 0)),
        "attention": int(by_op.pop("matmul", 0) + by_op.pop("bmm", 0)),
    }
    return dict(
        macs=int(flops.total()),
        macs_by_op=macs_by_op,
        bias_adds=0,
        activations=int(acts.total()),
        other_ops={k: int(v) for k, v in by_op.items()},
        unsupported_ops=dict(flops.unsupported_ops()),
    )


def _ptflops(spec: ArchSpec, hw: tuple[int, int]) -> dict:
    from ptflops import get_model_complexity_info

    model = deploy_model(spec)
    macs, _ = get_model_complexity_info(
        model, (spec.in_chans, *hw), as_strings=False, print_per_layer_stat=False, verbose=False, backend="aten"
    )
    # ptflops reports one total (weights MACs + bias adds); no per-op split.
    return dict(macs=int(macs), macs_by_op={}, bias_adds=0, activations=0)


#: Counters by name; ``fast`` is the default everywhere.
COUNTERS: Dict[str, Callable[[ArchSpec, tuple[int, int]], dict]] = {
    "fast": _fast,
    "fvcore": _fvcore,
    "ptflops": _ptflops,
}
assert tuple(COUNTERS) == COUNTER_NAMES


def count_complexity(spec: ArchSpec, resolution: Resolution, *, counter: str = "fast") -> Complexity:
    if counter not in COUNTERS:
        raise ConfigError("counter", f"{counter!r} is not one of: {', '.join(COUNTERS)}")
    hw = parse_resolution(resolution)
    start = time.perf_counter()
    counts = COUNTERS[counter](spec, hw)
    seconds = time.perf_counter() - start
    extra = {k: counts.pop(k) for k in ("other_ops", "unsupported_ops") if k in counts}
    return Complexity(
        params=count_params(build_model(spec, device="meta")),
        params_deploy=count_params(build_model(spec, device="meta", inference_mode=True)),
        **counts,
        conditions=dict(counter=counter, resolution=list(hw), batch=1, seconds=round(seconds, 3), **extra),
    )
