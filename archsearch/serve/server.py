"""``archsearch device-serve``: time ONNX models on this device for searches that run elsewhere.

Safe by default: it binds 127.0.0.1; every request needs the bearer token; bodies and models have a
size limit; only self-contained ONNX models are timed, each job in a child process with a wall-clock
and a memory limit; one job runs at a time, with a queue of bounded length; errors are one line of JSON
with their HTTP status, never a traceback. Each job is logged (model hash, shape, result; never the
token) to a JSON-lines file. No torch: ONNX Runtime and onnx are all it needs.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from .. import _host
from ._http import BoundedServer, Handler
from .protocol import DEFAULT_PORT, MAX_MODELS, TOKEN_ENV, Job

__all__ = ["DeviceServer", "ServeOptions", "device_facts"]

_JSON_SLACK = 64 << 10
#: Every string in a log record is cut to this length, so that no request can write a long line.
_LOG_FIELD_CHARS = 300


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    #: The largest model (ONNX file) accepted, in MB: FastViTHD's deploy model is about 500 MB in float32.
    max_model_mb: float = 1024.0
    #: Wall-clock limit of one job's child process (start, checks, warm-up, timing), in seconds.
    timeout_s: float = 120.0
    #: Address-space limit of one job's child process, in MB.
    max_memory_mb: int = 8192
    #: Jobs that may wait while one runs; one more is refused with 503.
    queue: int = 4
    #: The job log (JSON lines); default ``$ARCHSEARCH_CACHE_DIR/device-serve/jobs.jsonl``.
    log: Optional[Path] = None
    #: A client that sends nothing for this long (headers or body) is disconnected: stalled clients free their thread.
    read_timeout_s: float = 10.0
    #: Connections served at once; one more is answered 503 and closed without a thread.
    max_connections: int = 64
    #: The job log rotates (to ``.1``) past this size, so that it and its one old copy stay under twice it.
    log_max_mb: float = 4.0

    def __post_init__(self) -> None:
        from ..errors import ConfigError

        for key, lo in (("max_model_mb", 0.001), ("timeout_s", 0.1), ("max_memory_mb", 64), ("queue", 0),
                        ("read_timeout_s", 0.1), ("max_connections", 1), ("log_max_mb", 0.01)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < lo:
                raise ConfigError(key, f"must be at least {lo}, got {value!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", f"must be within [0, 65535], got {self.port}")

    @property
    def max_model_bytes(self) -> int:
        return int(self.max_model_mb * (1 << 20))

    @property
    def log_path(self) -> Path:
        if self.log is not None:
            return Path(self.log)
        base = os.environ.get("ARCHSEARCH_CACHE_DIR") or Path.home() / ".cache" / "archsearch"
        return Path(base) / "device-serve" / "jobs.jsonl"


def device_facts() -> Tuple[Dict[str, Any], str]:
    """(facts, fingerprint) of this device as it times ONNX models: CPU, cores, governor and power mode
    where readable, OS, ONNX Runtime and its execution providers. The fingerprint is a hash of the facts."""
    import onnxruntime as ort

    facts: Dict[str, Any] = {
        "kind": "onnxruntime",
        "name": _host.cpu_model(),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "governor": _host.governor(),
        "power_mode": _host.power_mode(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
    }
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:8]
    return facts, f"device-{digest}"


class DeviceServer:
    """The HTTP server and its one-at-a-time job runner."""

    def __init__(self, options: ServeOptions, token: str, announce: Callable[[str], None] = print) -> None:
        if len(token) < 16:
            from ..errors import ConfigError

            raise ConfigError("token", "must be at least 16 characters")
        self.options = options
        self._token = token.encode()
        self.announce = announce
        self.facts, self.fingerprint = device_facts()
        self._pending = 0
        self._admit = threading.Lock()
        self._running = threading.Lock()
        self._log_lock = threading.Lock()
        self._refused_since = 0  # unauthenticated refusals not logged since the last one logged
        self._refused_logged = 0.0
        self._log_failed = False
        self.jobs = 0
        self._check_log()
        self.httpd = BoundedServer((options.host, options.port), Handler, options.max_connections)
        self.httpd.daemon_threads = True
        self.httpd.device = self  # type: ignore[attr-defined]  # what each request's handler serves

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}"

    def authorized(self, header: Optional[str]) -> bool:
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)

    def _check_log(self) -> None:
        """Refuse to start with a job log that cannot be written (it would fail every request later)."""
        path = self.options.log_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8"):
                pass
        except OSError as e:
            from ..errors import ConfigError

            raise ConfigError("--log", f"cannot write the job log {path} ({e.strerror or type(e).__name__})") from None

    def log(self, record: Dict[str, Any]) -> None:
        """Append one record, every string cut short; refusals without the token at most once a second (with the
        count of those not logged), and the file rotated past ``log_max_mb``: no client can grow it without bound."""
        now = time.monotonic()
        with self._log_lock:
            if record.get("status") == 401:
                if now - self._refused_logged < 1.0:
                    self._refused_since += 1
                    return
                record = {**record, "not_logged_since": self._refused_since}
                self._refused_since, self._refused_logged = 0, now
            short = {k: v[:_LOG_FIELD_CHARS] if isinstance(v, str) else v for k, v in record.items()}
            line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **short}, sort_keys=True)[:4 * _LOG_FIELD_CHARS]
            path = self.options.log_path
            try:
                if path.exists() and path.stat().st_size > self.options.log_max_mb * (1 << 20):
                    os.replace(path, path.with_name(path.name + ".1"))
                with path.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")
            except OSError as e:  # a full disk must not fail the requests: say so once
                if not self._log_failed:
                    self._log_failed = True
                    self.announce(f"warning: cannot write the job log {path} ({e.strerror}); serving on without it")

    def max_body(self, raw: bool) -> int:
        if raw:
            return self.options.max_model_bytes
        return MAX_MODELS * (4 * math.ceil(self.options.max_model_bytes / 3) + 4) + _JSON_SLACK

    def submit(self, job: Job) -> Tuple[int, Dict[str, Any]]:
        """Run ``job`` when its turn comes; 503 at once when the queue is full."""
        with self._admit:
            if self._pending >= 1 + self.options.queue:
                return 503, {"error": f"busy: one job running and {self.options.queue} waiting; retry later"}
            self._pending += 1
        try:
            with self._running:
                self.jobs += 1
                return self._run(job)
        finally:
            with self._admit:
                self._pending -= 1

    def _run(self, job: Job) -> Tuple[int, Dict[str, Any]]:
        start = time.monotonic()
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}  # the child never sees the token
        with tempfile.TemporaryDirectory(prefix="archsearch-job-") as tmp:
            paths = []
            for i, onnx in enumerate(job.models):
                path = Path(tmp) / f"model{i}.onnx"
                path.write_bytes(onnx)
                paths.append(str(path))
            request = {"paths": paths, "protocol": job.protocol(),
                       "limits": {"memory_bytes": self.options.max_memory_mb << 20, "timeout_s": self.options.timeout_s}}
            try:
                done = subprocess.run([sys.executable, "-m", "archsearch.serve._job"], input=json.dumps(request),
                                      capture_output=True, text=True, timeout=self.options.timeout_s, cwd=tmp, env=env)
            except subprocess.TimeoutExpired:
                return 422, {"error": f"the job ran past this server's {self.options.timeout_s:g} s limit"}
        try:
            answer = json.loads(done.stdout)
        except ValueError:
            answer = None
        if done.returncode != 0 or not isinstance(answer, dict):
            how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
            return 422, {"error": f"the model's run failed ({how}; the memory limit is {self.options.max_memory_mb} MB)"}
        if "error" in answer:
            return int(answer.get("status", 422)), {"error": str(answer["error"])}
        answer.update(device=self.facts, fingerprint=self.fingerprint, protocol=job.protocol(),
                      model_sha256=[hashlib.sha256(m).hexdigest() for m in job.models],
                      elapsed_s=round(time.monotonic() - start, 3))
        return 200, answer

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        finally:
            self.httpd.server_close()
