"""What travels between a search and ``archsearch device-serve``: endpoints, the job, the answer.

One definition for both sides (the server validates with it, the client builds with it); no torch.

* ``GET /v1/device``: the device's facts and fingerprint.
* ``POST /v1/time``: one timing job. Either JSON (``application/json``)::

      {"models": [{"onnx": "<base64>", "shape": [1, 3, 256, 256]}, ...],   # 1, or 2 to interleave
       "warmup": 3, "repeats": 10, "threads": 4, "provider": "CPUExecutionProvider",
       "mode": "round_robin" | "interleave", "time_budget_s": null, "max_burst": 5}

  or one raw ONNX file (``application/octet-stream``) with the same fields in the query string
  (``?shape=1,3,256,256&repeats=20``): ``curl --data-binary @model.onnx``.
  The answer: ``{"times_ms": [[...], ...], "ratios": [...] (interleave), "device": {...},
  "fingerprint": "...", "protocol": {...}, "model_sha256": [...], "elapsed_s": ...}``.

Every request carries ``Authorization: Bearer <token>``. Errors answer ``{"error": "one line"}`` with
401 (token), 404 (path), 411 (no length), 413 (too large), 422 (not a model this server will time, or a
run past its time or memory limit), 503 (queue full).
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .._timing import MAX_BURST

__all__ = [
    "AnswerError", "FINGERPRINT_RE", "MAX_ANSWER_BYTES", "check_device_answer", "check_time_answer",
    "DEVICE_PATH", "DEFAULT_PORT", "Job", "JobError", "MAX_MODELS", "MODES", "TIME_PATH", "TOKEN_ENV", "job_from_json",
    "job_from_query", "job_query", "job_to_json",
]

#: The environment variable that holds the token, on the device and on the machine that searches.
TOKEN_ENV = "ARCHSEARCH_DEVICE_TOKEN"
DEFAULT_PORT = 8765
DEVICE_PATH = "/v1/device"
TIME_PATH = "/v1/time"
MODES = ("round_robin", "interleave")
#: One model, or a model and the probe it is interleaved with.
MAX_MODELS = 2
_LIMITS = {"warmup": (0, 1000), "repeats": (1, 10000), "threads": (1, 1024), "max_burst": (1, 50)}
_MAX_DIMS, _MAX_SIDE, _MAX_ELEMENTS = 6, 16384, 1 << 28


#: A device's fingerprint: it names the predictor's table file and enters cache keys, so it is a plain name.
FINGERPRINT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The largest answer a client reads: times of 10,000 repeats of two models fit many times over.
MAX_ANSWER_BYTES = 4 << 20


class AnswerError(ValueError):
    """A device's answer that is not what this protocol defines (the client refuses it in one line)."""


def _fingerprint(answer: Mapping[str, Any]) -> str:
    fp = answer.get("fingerprint")
    if not isinstance(fp, str) or not FINGERPRINT_RE.fullmatch(fp):
        raise AnswerError(f"fingerprint {str(fp)[:40]!r} is not a plain name (letters, digits, '.', '_', '-')")
    return fp


def check_device_answer(answer: Any) -> Tuple[Dict[str, Any], str]:
    """``GET /v1/device``'s answer as (facts, fingerprint), or :class:`AnswerError`."""
    if not isinstance(answer, dict):
        raise AnswerError(f"expected a JSON object, got {type(answer).__name__}")
    facts = answer.get("device")
    if not isinstance(facts, dict):
        raise AnswerError(f"device: expected an object of facts, got {type(facts).__name__}")
    return facts, _fingerprint(answer)


def _times(name: str, value: Any, lo: int, hi: int) -> List[float]:
    if not isinstance(value, list) or not lo <= len(value) <= hi:
        n = len(value) if isinstance(value, list) else type(value).__name__
        raise AnswerError(f"{name}: expected {lo} to {hi} times, got {n}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise AnswerError(f"{name}: {str(v)[:40]!r} is not a positive time in ms")
    return [float(v) for v in value]


def check_time_answer(answer: Any, job: "Job") -> Dict[str, Any]:
    """``POST /v1/time``'s answer to ``job``: ``times_ms`` (one list per model, as many samples as the job's
    repeats allow), ``ratios`` for an interleaved pair, and the fingerprint; else :class:`AnswerError`."""
    if not isinstance(answer, dict):
        raise AnswerError(f"expected a JSON object, got {type(answer).__name__}")
    fewest = min(3, job.repeats) if job.time_budget_s is not None else job.repeats
    times = answer.get("times_ms")
    if not isinstance(times, list) or len(times) != len(job.models):
        raise AnswerError(f"times_ms: expected one list per model ({len(job.models)})")
    if job.mode == "interleave":
        ta = _times("times_ms[0]", times[0], fewest, job.repeats)
        tb = _times("times_ms[1]", times[1], len(ta), len(ta) * job.max_burst)
        ratios = _times("ratios", answer.get("ratios"), len(ta), len(ta))
        checked = {"times_ms": [ta, tb], "ratios": ratios}
    else:
        checked = {"times_ms": [_times(f"times_ms[{i}]", t, fewest, job.repeats) for i, t in enumerate(times)]}
    return {**answer, **checked, "fingerprint": _fingerprint(answer)}


class JobError(ValueError):
    """A job this server will not run; ``status`` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    """One timing job: the models (ONNX bytes) with their input shapes, and how to time them."""

    models: List[bytes]
    shapes: List[Tuple[int, ...]]
    warmup: int = 3
    repeats: int = 10
    threads: int = 1
    provider: str = "CPUExecutionProvider"
    mode: str = "round_robin"
    time_budget_s: Optional[float] = None
    max_burst: int = MAX_BURST
    extra: Dict[str, Any] = field(default_factory=dict)

    def protocol(self) -> Dict[str, Any]:
        """How the models were timed (everything but the models): part of every answer and cache key."""
        d = asdict(self)
        for key in ("models", "extra"):
            d.pop(key)
        d["shapes"] = [list(s) for s in self.shapes]
        return d


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value), 10)
        except ValueError:
            raise JobError(f"{name}: must be an integer, got {str(value)[:40]!r}") from None
    lo, hi = _LIMITS[name]
    if not lo <= value <= hi:
        raise JobError(f"{name}: must be within [{lo}, {hi}], got {value}")
    return value


def _shape(value: Any) -> Tuple[int, ...]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= _MAX_DIMS:
        raise JobError(f"shape: must be 1 to {_MAX_DIMS} sizes, like 1,3,256,256")
    try:
        dims = tuple(int(str(v).strip(), 10) for v in value)
    except ValueError:
        raise JobError(f"shape: sizes must be integers, got {str(value)[:60]!r}") from None
    elements = 1
    for d in dims:
        if not 1 <= d <= _MAX_SIDE:
            raise JobError(f"shape: each size must be within [1, {_MAX_SIDE}], got {d}")
        elements *= d
    if elements > _MAX_ELEMENTS:
        raise JobError(f"shape: {elements} input elements is more than {_MAX_ELEMENTS}")
    return dims


def _options(fields: Mapping[str, Any]) -> Dict[str, Any]:
    known = {"warmup", "repeats", "threads", "provider", "mode", "time_budget_s", "max_burst", "shape", "models"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise JobError(f"unknown field {unknown[0]!r}")
    out: Dict[str, Any] = {k: _int(k, fields[k]) for k in ("warmup", "repeats", "threads", "max_burst") if k in fields}
    if "provider" in fields:
        provider = str(fields["provider"])
        if not provider.isidentifier() or len(provider) > 64:
            raise JobError(f"provider: not an execution provider name: {provider[:40]!r}")
        out["provider"] = provider
    if "mode" in fields:
        if fields["mode"] not in MODES:
            raise JobError(f"mode: must be one of {', '.join(MODES)}, got {str(fields['mode'])[:40]!r}")
        out["mode"] = fields["mode"]
    budget = fields.get("time_budget_s")
    if budget is not None:
        try:
            out["time_budget_s"] = float(budget)
        except (TypeError, ValueError):
            raise JobError(f"time_budget_s: must be a number, got {str(budget)[:40]!r}") from None
        if not 0 < out["time_budget_s"] <= 86400:
            raise JobError(f"time_budget_s: must be within (0, 86400], got {budget}")
    return out


def _checked(job: Job, max_model_bytes: int) -> Job:
    for i, onnx in enumerate(job.models):
        if len(onnx) > max_model_bytes:
            raise JobError(f"models[{i}]: {len(onnx)} bytes is more than this server's {max_model_bytes}", status=413)
    if job.mode == "interleave" and len(job.models) != 2:
        raise JobError("mode interleave needs exactly 2 models (the model and its probe)")
    return job


def job_from_json(body: bytes, max_model_bytes: int) -> Job:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise JobError("the body is neither an ONNX model nor a JSON job") from None
    if not isinstance(data, dict):
        raise JobError("a JSON job must be an object")
    opts = _options(data)
    models = data.get("models")
    if not isinstance(models, list) or not 1 <= len(models) <= MAX_MODELS:
        raise JobError(f"models: must be a list of 1 to {MAX_MODELS} models")
    onnx: List[bytes] = []
    shapes: List[Tuple[int, ...]] = []
    for i, m in enumerate(models):
        if not isinstance(m, dict) or set(m) != {"onnx", "shape"}:
            raise JobError(f"models[{i}]: must be {{onnx: base64, shape: [..]}}")
        try:
            onnx.append(base64.b64decode(str(m["onnx"]), validate=True))
        except (binascii.Error, ValueError):
            raise JobError(f"models[{i}].onnx: not base64") from None
        shapes.append(_shape(m["shape"]))
    return _checked(Job(onnx, shapes, **opts), max_model_bytes)


def job_from_query(body: bytes, query: Mapping[str, List[str]], max_model_bytes: int) -> Job:
    fields = {k: v[-1] for k, v in query.items()}
    if "shape" not in fields:
        raise JobError("shape: a raw ONNX body needs ?shape=N,C,H,W")
    opts = _options(fields)
    shape = _shape(fields["shape"])
    return _checked(Job([body], [shape], **opts), max_model_bytes)


def job_query(job: Job) -> str:
    """The query string of a one-model job sent as a raw ONNX body."""
    from urllib.parse import urlencode

    fields = {k: v for k, v in job.protocol().items() if k != "shapes" and v is not None}
    return urlencode({**fields, "shape": ",".join(map(str, job.shapes[0]))})


def job_to_json(job: Job) -> bytes:
    payload = job.protocol()
    payload.pop("shapes")
    payload["models"] = [{"onnx": base64.b64encode(m).decode("ascii"), "shape": list(s)} for m, s in zip(job.models, job.shapes)]
    return json.dumps(payload).encode()
