"""device-serve against hostile and careless clients: no unauthenticated client can fill the disk or hold the
server's threads, every answer is one line of JSON and an error closes the connection, and bad start-up options
are refused before the server listens."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archsearch.serve.protocol import DEVICE_PATH, TOKEN_ENV

from .test_serve import TOKEN, Server, _add_model, _job, _post

pytestmark = pytest.mark.slow


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _raw(url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` as is and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return out + b"<still open>"
            if not chunk:
                return out
            out += chunk


def _answers(raw: bytes) -> list:
    return [part for part in raw.split(b"HTTP/1.1 ")[1:]]


def test_unauthenticated_long_paths_cannot_grow_the_log(tmp_path):
    server = Server(tmp_path)
    try:
        path = "/" + "x" * 8000
        for _ in range(300):
            _raw(server.url, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        # The next refusal logged (a second after the last) carries the count of those not logged.
        first = len(server.jobs())
        deadline = time.monotonic() + 10
        while len(server.jobs()) == first and time.monotonic() < deadline:
            _raw(server.url, b"GET /v1/device HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            time.sleep(0.1)
        size = server.log.stat().st_size
        records = server.jobs()
        # Before: every 401 logged its full path (300 x 8 KB = 2.4 MB here). Now: a line a second, each cut short.
        assert size < 20_000, size
        assert all(len(json.dumps(r)) <= 1200 for r in records)
        assert sum(r.get("not_logged_since", 0) for r in records) + len(records) >= 301
    finally:
        server.stop()


def _threads(pid: int) -> int:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line for line in lines if line.startswith("Threads:")).split()[1])


def test_stalled_clients_neither_hold_threads_nor_keep_a_valid_client_out(tmp_path):
    server = Server(tmp_path, "--max-connections", "16", "--read-timeout-s", "2")
    stalled = []
    try:
        for _ in range(120):  # headers begun, never finished
            s = socket.create_connection(("127.0.0.1", _port(server.url)), timeout=5)
            s.sendall(b"GET /v1/device HTTP/1.1\r\nHost: x\r\n")
            stalled.append(s)
        time.sleep(0.5)
        assert _threads(server.proc.pid) <= 16 + 8, "one thread per stalled client (120 before the cap)"
        stalled[0].settimeout(10)  # past the read timeout (2 s) the server closes every stalled connection
        assert stalled[0].recv(100) == b"", "a stalled connection is closed by the server after the read timeout"
        import urllib.request

        req = urllib.request.Request(server.url + DEVICE_PATH, headers={"Authorization": f"Bearer {TOKEN}"})
        start = time.monotonic()
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200 and "fingerprint" in json.loads(r.read())
        assert time.monotonic() - start < 2
    finally:
        for s in stalled:
            s.close()
        server.stop()


def test_errors_are_one_line_of_json_and_close_the_connection(tmp_path):
    server = Server(tmp_path)
    try:
        auth = f"Authorization: Bearer {TOKEN}\r\n"
        put = _raw(server.url, f"PUT /v1/time HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\n\r\n".encode())
        assert put.startswith(b"HTTP/1.1 501") and b"application/json" in put and b"<html" not in put.lower()
        assert json.loads(put.split(b"\r\n\r\n", 1)[1])["error"]
        # A Content-Length shorter than the body: the rest would have been answered as another request (an HTML 400).
        lying = (f"POST /v1/time?shape=1,3,4,4 HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/octet-stream\r\n"
                 "Content-Length: 5\r\n\r\nhelloGARBAGE-THAT-IS-NOT-HTTP\r\n\r\n").encode()
        out = _raw(server.url, lying)
        assert len(_answers(out)) == 1 and b"<html" not in out.lower() and out.startswith(b"HTTP/1.1 422")
        chunked = (f"POST /v1/time HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
                   "5\r\nhello\r\n0\r\n\r\n").encode()
        out = _raw(server.url, chunked)
        assert len(_answers(out)) == 1 and out.startswith(b"HTTP/1.1 411") and b"application/json" in out
    finally:
        server.stop()


def test_more_threads_than_the_device_has_cores_are_refused_at_once(tmp_path):
    server = Server(tmp_path)
    try:
        start = time.monotonic()
        status, answer = _post(server.url, _job(_add_model(), [1, 3, 32, 32], threads=(os.cpu_count() or 1) + 1, repeats=3))
        assert status == 422 and "logical CPUs" in answer["error"] and time.monotonic() - start < 10
    finally:
        server.stop()


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, TOKEN_ENV: TOKEN, "ARCHSEARCH_CACHE_DIR": str(tmp_path / "c")}
    return subprocess.run([sys.executable, "-m", "archsearch.cli", "device-serve", "--port", "0", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_an_unwritable_log_is_refused_before_listening(tmp_path):
    (tmp_path / "file").write_text("x")
    result = _serve(tmp_path, "--log", str(tmp_path / "file" / "jobs.jsonl"))
    assert result.returncode == 2 and "--log: cannot write the job log" in result.stderr
    assert "listening" not in result.stdout and "Traceback" not in result.stderr


def test_a_token_file_without_end_is_refused_with_bounded_reading():
    result = subprocess.run([sys.executable, "-m", "archsearch.cli", "device-serve", "--port", "0", "--token-file",
                             "/dev/zero"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "larger than 4 KB" in result.stderr


def test_sigterm_prints_a_stopped_line(tmp_path):
    server = Server(tmp_path)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    printed = server.stop()
    assert "device-serve: stopped" in printed
