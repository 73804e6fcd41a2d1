"""Accuracy proxies: zero-cost scores at initialisation (``zero_cost``)."""
from .zero_cost import PROXIES, ProxyConfig, ProxyScore, proxy_batch, score_proxy

__all__ = ["PROXIES", "ProxyConfig", "ProxyScore", "proxy_batch", "score_proxy"]
