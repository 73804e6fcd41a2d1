"""The HTTP side of ``device-serve``: at most so many connections at once (one more is answered 503 without a thread),
and the request handler (authorised first, then routed; every answer, refusals included, one line of JSON). The
jobs themselves and the job log belong to :class:`archsearch.serve.server.DeviceServer`."""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional
from urllib.parse import parse_qs, urlsplit

from .protocol import DEVICE_PATH, TIME_PATH, JobError, job_from_json, job_from_query

if TYPE_CHECKING:
    from .server import DeviceServer

__all__ = ["BoundedServer", "Handler"]

#: A refused body is read and dropped up to this size, so that the client sees the answer, not a reset.
_DRAIN_BYTES = 64 << 20
_DRAIN_UNAUTHORISED_BYTES = 1 << 20
#: A body must keep coming at this rate (after the first read timeout): a client that drips it is cut off.
_MIN_BODY_RATE = 64 << 10


class BoundedServer(ThreadingHTTPServer):
    """At most ``limit`` connections at once; one more is answered 503 in one line and closed, without a thread
    (400 clients that send headers and stall held 400 threads before)."""

    daemon_threads = True

    def __init__(self, address, handler, limit: int) -> None:
        super().__init__(address, handler)
        self.limit = limit
        self._active = 0
        self._count = threading.Lock()

    def process_request(self, request, client_address) -> None:
        with self._count:
            full = self._active >= self.limit
            if not full:
                self._active += 1
        if full:
            body = json.dumps({"error": f"busy: {self.limit} connections open; retry later"}).encode()
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
                                b"Retry-After: 5\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count:
                self._active -= 1


class Handler(BaseHTTPRequestHandler):
    """One request: authorised first, then routed; the DeviceServer it serves is ``self.server.device``."""
    protocol_version = "HTTP/1.1"
    server_version = "archsearch-device-serve"

    @property
    def device(self) -> "DeviceServer":
        return self.server.device  # type: ignore[attr-defined]
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.device.options.read_timeout_s  # type: ignore[misc]  # StreamRequestHandler sets it on the socket
        super().setup()

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:  # noqa: ARG002
        """http.server's own refusals (a malformed request line, an unsupported method such as PUT, a header too
        long) as every other answer: one line of JSON, and the connection closed."""
        try:
            self._send(code, {"error": message or self.responses.get(code, ("error",))[0]}, close=True)
        except OSError:
            self.close_connection = True

    def _read_body(self, length: int) -> Optional[bytes]:
        """The body, or None when the client stops sending or drips it slower than :data:`_MIN_BODY_RATE`."""
        deadline = time.monotonic() + self.device.options.read_timeout_s + length / _MIN_BODY_RATE
        parts, left = [], length
        try:
            while left > 0:
                if time.monotonic() > deadline:
                    return None
                chunk = self.rfile.read1(min(left, 1 << 20)) if hasattr(self.rfile, "read1") else self.rfile.read(min(left,
                                                                                                                      1 << 20))
                if not chunk:
                    return None
                parts.append(chunk)
                left -= len(chunk)
        except (TimeoutError, OSError):
            return None
        return b"".join(parts)

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
        try:
            while n > 0:
                chunk = self.rfile.read(min(n, 1 << 20))
                if not chunk:
                    return False
                n -= len(chunk)
        except OSError:  # a Content-Length that lies: the read timeout ends the wait
            return False
        return True

    def _refuse(self, status: int, message: str, record: Optional[Dict[str, Any]] = None) -> None:
        # A client without the token gets its answer only if its body is small: the server reads no more for it.
        cap = _DRAIN_UNAUTHORISED_BYTES if status == 401 else _DRAIN_BYTES
        if self.command == "POST":
            self._drain(cap)  # read (up to cap) so that the client gets the answer rather than a reset
        self.device.log({"client": self.client_address[0], "path": urlsplit(self.path).path, "status": status,
                         "error": message, **(record or {})})
        self._send(status, {"error": message}, close=True)  # after an error nothing more is read on this connection

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
        body = self._read_body(length)
        if body is None:
            self.device.log({"client": self.client_address[0], "path": url.path, "status": 408, "error": "body not sent in time"})
            return self._send(408, {"error": "the body did not arrive in time; send it at once"}, close=True)
        try:
            job = job_from_query(body, parse_qs(url.query), self.device.options.max_model_bytes) if raw \
                else job_from_json(body, self.device.options.max_model_bytes)
        except JobError as e:
            self.device.log({"client": self.client_address[0], "path": url.path, "status": e.status, "error": str(e)})
            return self._send(e.status, {"error": str(e)}, close=True)
        cores = os.cpu_count() or 1
        if job.threads > cores:  # more threads than cores time nothing but contention, and hold the one job slot
            message = f"threads: at most {cores} on this device (its logical CPUs), got {job.threads}"
            self.device.log({"client": self.client_address[0], "path": url.path, "status": 422, "error": message})
            return self._send(422, {"error": message}, close=True)
        status, answer = self.device.submit(job)
        record: Dict[str, Any] = {"client": self.client_address[0], "path": url.path, "status": status,
                                  "model_sha256": (answer.get("model_sha256")
                                                   or [hashlib.sha256(m).hexdigest() for m in job.models]),
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
        self._send(status, answer, close=status != 200)
