"""The ``remote`` latency backend: models timed on a device running ``archsearch device-serve``.

A session exports each (module, input) pair to ONNX here and sends them as one job; the device runs the
timing protocol of :mod:`archsearch._timing` (interleaving included, so that its drift cancels as it does
locally) and answers raw per-run times with its fingerprint, which becomes the measurement's device.
The token comes from ``ARCHSEARCH_DEVICE_TOKEN`` at the moment of sending: it is never part of the
options, a cache key, a condition, a study or a log line. An unreachable or failing device raises
:class:`MeasurementError`: one line, and the trial fails like any other.
"""
from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .._timing import MAX_BURST
from ..errors import MeasurementError
from ._export import export_onnx
from ..options import LatencyConfig
from ..serve.protocol import DEVICE_PATH, TIME_PATH, TOKEN_ENV, Job, job_query, job_to_json

__all__ = ["RemoteBackend", "RemoteSession"]

_devices: Dict[str, Tuple[Dict[str, Any], str]] = {}
_devices_lock = threading.Lock()


def _token() -> str:
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise MeasurementError(f"remote latency: set {TOKEN_ENV} to the device server's token")
    return token


def _call(url: str, path: str, timeout_s: float, body: Optional[bytes] = None,
          content_type: str = "application/json") -> Dict[str, Any]:
    request = urllib.request.Request(url.rstrip("/") + path, data=body, method="POST" if body is not None else "GET")
    request.add_header("Authorization", f"Bearer {_token()}")
    if body is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            detail = str(json.loads(e.read()).get("error", ""))[:200]
        except (ValueError, AttributeError, OSError):
            detail = ""
        raise MeasurementError(f"device {url} answered {e.code}{': ' + detail if detail else ''}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise MeasurementError(f"device {url} unreachable ({reason})") from None
    except ValueError:
        raise MeasurementError(f"device {url} answered something that is not JSON") from None


class RemoteBackend:
    """``device(cfg)`` asks the server once per process and URL; ``open`` prepares a session."""

    def device(self, cfg: LatencyConfig) -> Tuple[Dict[str, Any], str]:
        assert cfg.url is not None
        with _devices_lock:
            if cfg.url not in _devices:
                answer = _call(cfg.url, DEVICE_PATH, min(cfg.request_timeout_s, 30.0))
                _devices[cfg.url] = (dict(answer.get("device", {})), str(answer.get("fingerprint", "")))
            return _devices[cfg.url]

    def open(self, pairs: Sequence[Tuple[nn.Module, torch.Tensor]], cfg: LatencyConfig) -> "RemoteSession":
        facts, fingerprint = self.device(cfg)
        models = [export_onnx(m.eval(), x) for m, x in pairs]
        return RemoteSession(models, [tuple(x.shape) for _, x in pairs], facts, fingerprint)


@dataclass
class RemoteSession:
    models: List[bytes]
    shapes: List[Tuple[int, ...]]
    device: Dict[str, Any]
    fingerprint: str

    def _job(self, cfg: LatencyConfig, mode: str, max_burst: int = MAX_BURST) -> Dict[str, Any]:
        job = Job(self.models, self.shapes, warmup=cfg.warmup, repeats=cfg.repeats, threads=cfg.threads,
                  provider=cfg.provider, mode=mode, time_budget_s=cfg.time_budget_s, max_burst=max_burst)
        assert cfg.url is not None
        if len(self.models) == 1:  # one model travels as it is (no base64): the query string says how to time it
            answer = _call(cfg.url, TIME_PATH + "?" + job_query(job), cfg.request_timeout_s, self.models[0],
                           "application/octet-stream")
        else:
            answer = _call(cfg.url, TIME_PATH, cfg.request_timeout_s, job_to_json(job))
        if answer.get("fingerprint") != self.fingerprint:
            raise MeasurementError(f"device {cfg.url} changed during the study ({self.fingerprint} -> {answer.get('fingerprint')}): "
                                   "restart the search to time on the new one")
        return answer

    def round_robin(self, cfg: LatencyConfig) -> List[List[float]]:
        return [list(map(float, t)) for t in self._job(cfg, "round_robin")["times_ms"]]

    def interleave(self, cfg: LatencyConfig, max_burst: int) -> Tuple[List[float], List[float], List[float]]:
        answer = self._job(cfg, "interleave", max_burst)
        ta, tb = answer["times_ms"]
        return list(map(float, ta)), list(map(float, tb)), list(map(float, answer["ratios"]))
