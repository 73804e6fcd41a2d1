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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from .. import _host
from .protocol import DEFAULT_PORT, DEVICE_PATH, MAX_MODELS, TIME_PATH, TOKEN_ENV, Job, JobError, job_from_json, job_from_query

__all__ = ["DeviceServer", "ServeOptions", "device_facts"]

#: A refused body is read and dropped up to this size, so that the client sees the answer, not a reset.
_DRAIN_BYTES = 64 << 20
_DRAIN_UNAUTHORISED_BYTES = 1 << 20
_JSON_SLACK = 64 << 10


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

    def __post_init__(self) -> None:
        from ..errors import ConfigError

        for key, lo in (("max_model_mb", 0.001), ("timeout_s", 0.1), ("max_memory_mb", 64), ("queue", 0)):
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
        self.jobs = 0
        self.httpd = ThreadingHTTPServer((options.host, options.port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.device = self  # type: ignore[attr-defined]  # what each request's handler serves

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}"

    def authorized(self, header: Optional[str]) -> bool:
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)

    def log(self, record: Dict[str, Any]) -> None:
        path = self.options.log_path
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}, sort_keys=True)
        with self._log_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")

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


class _Handler(BaseHTTPRequestHandler):
    """One request: authorised first, then routed; the DeviceServer it serves is ``self.server.device``."""
    protocol_version = "HTTP/1.1"
    server_version = "archsearch-device-serve"

    @property
    def device(self) -> "DeviceServer":
        return self.server.device  # type: ignore[attr-defined]
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # the job log says what happened; no access log
        pass

    def _send(self, status: int, payload: Dict[str, Any], close: bool = False) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 503:
            self.send_header("Retry-After", "5")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _length(self) -> Optional[int]:
        try:
            n = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return None
        return n if n >= 0 else None

    def _drain(self, cap: int) -> bool:
        """Read and drop the body of a refused request; False when over ``cap`` (the connection is closed)."""
        n = self._length() or 0
        if n > cap:
            return False
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 20))
            if not chunk:
                return False
            n -= len(chunk)
        return True

    def _refuse(self, status: int, message: str, record: Optional[Dict[str, Any]] = None) -> None:
        # A client without the token gets its answer only if its body is small: the server reads no more for it.
        cap = _DRAIN_UNAUTHORISED_BYTES if status == 401 else _DRAIN_BYTES
        kept = self._drain(cap) if self.command == "POST" else True
        self.device.log({"client": self.client_address[0], "path": urlsplit(self.path).path, "status": status,
                    "error": message, **(record or {})})
        self._send(status, {"error": message}, close=not kept)

    def _guarded(self, handle: Callable[[], None]) -> None:
        try:
            if not self.device.authorized(self.headers.get("Authorization")):
                return self._refuse(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
            handle()
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # noqa: BLE001 - never a traceback in a response; the job log keeps the type
            self.device.log({"client": self.client_address[0], "status": 500, "error": type(e).__name__})
            self._send(500, {"error": f"internal error ({type(e).__name__})"}, close=True)

    def do_GET(self) -> None:
        def handle() -> None:
            if urlsplit(self.path).path != DEVICE_PATH:
                return self._refuse(404, f"no such endpoint; GET {DEVICE_PATH}, POST {TIME_PATH}")
            self._send(200, {"device": self.device.facts, "fingerprint": self.device.fingerprint})

        self._guarded(handle)

    def do_POST(self) -> None:
        self._guarded(self._time)

    def _time(self) -> None:
        url = urlsplit(self.path)
        if url.path != TIME_PATH:
            return self._refuse(404, f"no such endpoint; GET {DEVICE_PATH}, POST {TIME_PATH}")
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._refuse(411, "send the body with a Content-Length, not chunked")
        length = self._length()
        if length is None:
            return self._refuse(411, "a job needs a Content-Length")
        ctype = self.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip().lower()
        raw = ctype != "application/json"
        if length > self.device.max_body(raw):
            return self._refuse(413, f"body of {length} bytes is more than this server's {self.device.max_body(raw)}")
        body = self.rfile.read(length)
        try:
            job = job_from_query(body, parse_qs(url.query), self.device.options.max_model_bytes) if raw \
                else job_from_json(body, self.device.options.max_model_bytes)
        except JobError as e:
            self.device.log({"client": self.client_address[0], "path": url.path, "status": e.status, "error": str(e)})
            return self._send(e.status, {"error": str(e)})
        status, answer = self.device.submit(job)
        record: Dict[str, Any] = {"client": self.client_address[0], "path": url.path, "status": status,
                                  "model_sha256": answer.get("model_sha256") or [hashlib.sha256(m).hexdigest() for m in job.models],
                                  "shapes": [list(s) for s in job.shapes], "mode": job.mode, "repeats": job.repeats}
        if status == 200:
            record["median_ms"] = [round(statistics.median(t), 4) for t in answer["times_ms"]]
            record["elapsed_s"] = answer["elapsed_s"]
        else:
            record["error"] = answer.get("error")
        self.device.log(record)
        self.device.announce(f"job {self.device.jobs}: {status} {'x'.join(map(str, job.shapes[0]))} "
                        + (f"median {record['median_ms'][0]:.3g} ms ({answer['elapsed_s']:.1f} s)" if status == 200
                           else str(answer.get('error'))))
        self._send(status, answer)
