"""Accuracy proxies: zero-cost scores at initialisation (``zero_cost``), short Lightning training
(``train``) on offline data (``data``), and their measured fidelity (``fidelity``)."""
from .zero_cost import PROXIES, ProxyConfig, ProxyScore, proxy_batch, score_proxy

__all__ = ["PROXIES", "ProxyConfig", "ProxyScore", "proxy_batch", "score_proxy"]
