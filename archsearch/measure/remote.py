"""The ``remote`` latency backend: models timed on a device running ``archsearch device-serve``.

A session exports each (module, input) pair to ONNX here and sends them as one job; the device runs the
timing protocol of :mod:`archsearch._timing` (interleaving included, so that its drift cancels as it does
locally) and answers raw per-run times with its fingerprint, which becomes the measurement's device.
The token comes from ``ARCHSEARCH_DEVICE_TOKEN`` at the moment of sending: it is never part of the
options, a cache key, a condition, a study or a log line. An unreachable or failing device raises
:class:`MeasurementError`: one line, and the trial fails like any other.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import torch
import torch.nn as nn

from .._timing import MAX_BURST
from ..errors import MeasurementError
from ._export import export_onnx
from ..options import LatencyConfig
from ..serve.protocol import (DEVICE_PATH, MAX_ANSWER_BYTES, TIME_PATH, TOKEN_ENV, AnswerError, Job, check_device_answer,
                              check_time_answer, job_query, job_to_json)

__all__ = ["RemoteBackend", "RemoteSession"]

_devices: Dict[str, Tuple[Dict[str, Any], str]] = {}
_devices_lock = threading.Lock()


def _token() -> str:
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise MeasurementError(f"remote latency: set {TOKEN_ENV} to the device server's token")
    return token


def _call(url: str, path: str, timeout_s: float, body: Optional[bytes] = None,
          content_type: str = "application/json") -> Any:
    """One request, bounded as a whole: a device that answers a byte at a time is cut off at ``timeout_s`` (a
    timer shuts the socket; urllib's timeout bounds each read, not the call). No redirect is followed (the token
    would go to wherever it points), and an answer over :data:`MAX_ANSWER_BYTES` is refused unread."""
    parts = urlsplit(url.rstrip("/") + path)
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname or "", parts.port, timeout=min(timeout_s, 30.0))
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        with contextlib.suppress(OSError, AttributeError):
            conn.sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(timeout_s, cut)
    timer.daemon = True
    headers = {"Authorization": f"Bearer {_token()}", "Connection": "close"}
    if body is not None:
        headers["Content-Type"] = content_type
    timer.start()
    try:
        conn.request("POST" if body is not None else "GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                     body=body, headers=headers)
        response = conn.getresponse()
        data = response.read(MAX_ANSWER_BYTES + 1)
    except (OSError, http.client.HTTPException) as e:
        if expired.is_set():
            raise MeasurementError(f"device {url} did not answer within {timeout_s:g} s (request_timeout_s)") from None
        raise MeasurementError(f"device {url} unreachable ({e or type(e).__name__})") from None
    finally:
        timer.cancel()
        conn.close()
    if expired.is_set():  # a socket shut mid-read returns what came so far, without an error
        raise MeasurementError(f"device {url} did not answer within {timeout_s:g} s (request_timeout_s)")
    if len(data) > MAX_ANSWER_BYTES:
        raise MeasurementError(f"device {url} answered more than {MAX_ANSWER_BYTES >> 20} MB: refused")
    if 300 <= response.status < 400:
        raise MeasurementError(f"device {url} answered {response.status} (a redirect to "
                               f"{str(response.getheader('Location'))[:100]}): not followed, the token stays with {url}")
    try:
        answer = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        answer = None
    if response.status != 200:
        detail = str(answer.get("error", ""))[:200] if isinstance(answer, dict) else ""
        raise MeasurementError(f"device {url} answered {response.status}{': ' + detail if detail else ''}")
    if answer is None:
        raise MeasurementError(f"device {url} answered something that is not JSON")
    return answer


def _checked(url: str, check, *args):
    try:
        return check(*args)
    except AnswerError as e:
        raise MeasurementError(f"device {url} answered outside the protocol: {e}") from None


class RemoteBackend:
    """``device(cfg)`` asks the server once per process and URL; ``open`` prepares a session."""

    def device(self, cfg: LatencyConfig) -> Tuple[Dict[str, Any], str]:
        assert cfg.url is not None
        with _devices_lock:
            if cfg.url not in _devices:
                answer = _call(cfg.url, DEVICE_PATH, min(cfg.request_timeout_s, 30.0))
                _devices[cfg.url] = _checked(cfg.url, check_device_answer, answer)
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
        answer = _checked(cfg.url, check_time_answer, answer, job)
        if answer["fingerprint"] != self.fingerprint:
            raise MeasurementError(f"device {cfg.url} changed during the study ({self.fingerprint} -> "
                                   f"{answer.get('fingerprint')}): "
                                   "restart the search to time on the new one")
        return answer

    def round_robin(self, cfg: LatencyConfig) -> List[List[float]]:
        return self._job(cfg, "round_robin")["times_ms"]

    def interleave(self, cfg: LatencyConfig, max_burst: int) -> Tuple[List[float], List[float], List[float]]:
        answer = self._job(cfg, "interleave", max_burst)
        ta, tb = answer["times_ms"]
        return ta, tb, answer["ratios"]
