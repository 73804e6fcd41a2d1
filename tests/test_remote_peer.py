"""The remote latency backend against a hostile or broken device: the token never leaves for another host, nothing
it answers reaches a file name, the cache or a traceback, and no answer holds a measurement past its deadline."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .conftest import run_cli

TOKEN = "hostile-test-token-0123456789"
DEVICE = {"device": {"name": "evil"}, "fingerprint": "device-evil"}


class Hostile:
    """A device server that answers ``GET /v1/device`` with ``device`` and ``POST /v1/time`` with ``time``: each a
    JSON-able value, or a callable that writes to the handler itself. Every request is recorded."""

    def __init__(self, device=DEVICE, time_answer=None) -> None:
        self.requests: list = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _answer(self, what) -> None:
                outer.requests.append((self.command, self.path, self.headers.get("Authorization")))
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                if callable(what):
                    return what(self)
                body = json.dumps(what).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._answer(device)

            def do_POST(self):
                self._answer(time_answer)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile():
    made = []

    def make(**kw) -> Hostile:
        made.append(Hostile(**kw))
        return made[-1]

    yield make
    for h in made:
        h.close()


def _measure(url: str, tmp_path: Path, *extra: str):
    return run_cli(["measure", "fastvit_t8", "-r", "64", "-m", "latency", "measure.latency.backend=remote",
                    f"measure.latency.url={url}", "measure.latency.repeats=3", "measure.latency.warmup=1",
                    "measure.latency.request_timeout_s=3", *extra],
                   env={"ARCHSEARCH_DEVICE_TOKEN": TOKEN, "ARCHSEARCH_CACHE_DIR": str(tmp_path / "cache")})


def _one_line(result, needle: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout[-500:], result.stderr[-2000:])
    assert needle in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_the_token_never_follows_a_redirect(hostile, tmp_path):
    other = hostile()

    def redirect(h):
        h.send_response(302)
        h.send_header("Location", other.url + "/v1/device")
        h.send_header("Content-Length", "0")
        h.end_headers()

    device = hostile(device=redirect)
    _one_line(_measure(device.url, tmp_path), "not followed")
    assert other.requests == [], "the redirect's target must never be asked, let alone see the token"


@pytest.mark.parametrize("fingerprint", ["../../../../escaped", "a/b", ".hidden", "", 12, "x" * 65])
def test_a_fingerprint_that_is_not_a_plain_name_is_refused_before_it_names_a_file(hostile, tmp_path, fingerprint):
    device = hostile(device={"device": {"name": "evil"}, "fingerprint": fingerprint})
    env = {"ARCHSEARCH_DEVICE_TOKEN": TOKEN, "ARCHSEARCH_CACHE_DIR": str(tmp_path / "a" / "b" / "cache")}
    result = run_cli(["calibrate", "--backend", "remote", "--url", device.url, "-n", "1", "--fit", "2", "-r", "64",
                      "--threads", "1"], env=env)
    _one_line(result, "fingerprint")
    assert not [p for p in tmp_path.rglob("*") if "escaped" in p.name or p.suffix in (".json", ".lock")]


def _time_answer(times, **extra):
    return {"times_ms": times, **DEVICE, **extra}


@pytest.mark.parametrize("answer, needle", [
    (_time_answer([[-5, -5, -5]]), "not a positive time"),
    (_time_answer([[0.5] * 50]), "expected 3 to 3 times, got 50"),
    (_time_answer([[float("nan")] * 3]), "positive time"),
    (_time_answer([[]]), "expected 3 to 3 times, got 0"),
    (_time_answer(["fast"]), "got str"),
    (_time_answer("fast"), "one list per model"),
    ([1, 2, 3], "expected a JSON object, got list"),
    ({"fingerprint": "device-evil"}, "times_ms"),
    (_time_answer([[1, 1, 1]], fingerprint="device-other"), "changed during the study"),
])
def test_a_wrongly_shaped_or_impossible_answer_is_one_line_and_never_cached(hostile, tmp_path, answer, needle):
    device = hostile(time_answer=answer)
    _one_line(_measure(device.url, tmp_path), needle)
    _one_line(_measure(device.url, tmp_path), needle)  # not served from a cache the second time
    assert len([r for r in device.requests if r[0] == "POST"]) == 2


@pytest.mark.parametrize("device_answer, needle", [
    ([DEVICE], "expected a JSON object, got list"),
    ({"device": "evil", "fingerprint": "device-evil"}, "device: expected an object"),
    ({"device": {}}, "fingerprint"),
])
def test_a_wrongly_shaped_device_answer_is_one_line(hostile, tmp_path, device_answer, needle):
    _one_line(_measure(hostile(device=device_answer).url, tmp_path), needle)


def test_a_huge_answer_is_refused_unread(hostile, tmp_path):
    def huge(h):
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(6 << 20))
        h.end_headers()
        try:
            h.wfile.write(b"[" + b"1," * (3 << 20))
        except OSError:
            pass

    _one_line(_measure(hostile(time_answer=huge).url, tmp_path), "more than 4 MB")


def test_a_device_that_drips_a_byte_at_a_time_is_cut_off_at_the_deadline(hostile, tmp_path):
    def drip(h):
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        try:
            for _ in range(100):
                h.wfile.write(b" ")
                h.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass

    device = hostile(time_answer=drip)
    start = time.monotonic()
    result = _measure(device.url, tmp_path)
    _one_line(result, "did not answer within 3 s")
    assert time.monotonic() - start < 30  # urllib's per-read timeout alone held this for 50 s


def test_the_credential_mask_leaves_a_path_with_an_at_sign_alone():
    from archsearch.errors import mask_secrets

    assert mask_secrets("http://h:1/u:p@x") == "http://h:1/u:p@x"
    assert mask_secrets("see postgresql://u:S3cret@db:5432/x") == "see postgresql://u:***@db:5432/x"
