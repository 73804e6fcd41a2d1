"""Accuracy proxies: zero-cost scores at initialisation (``zero_cost``), short Lightning training
(``train``) on offline data (``data``, ``glyphs``), and their measured fidelity (``fidelity``).

Names load on first use: the proxies import torch, which a command's ``--help`` must not pay for."""
from __future__ import annotations

_LAZY = {"PROXIES": ".zero_cost", "ProxyConfig": "..options", "ProxyScore": ".zero_cost", "proxy_batch": ".zero_cost",
         "score_proxy": ".zero_cost"}

__all__ = ["PROXIES", "ProxyConfig", "ProxyScore", "proxy_batch", "score_proxy"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
