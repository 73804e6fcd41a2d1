"""The device server and the ``remote`` latency backend, on 127.0.0.1: a search timed by a server the test
starts (torch blocked in the server and its jobs), the cache, refusals that leave it up, a killed server."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import optuna
import pytest
from onnx import TensorProto, helper, numpy_helper

from archsearch.serve.protocol import DEVICE_PATH, TIME_PATH, TOKEN_ENV

from .conftest import SEARCH_SPACE as SPACE, run_cli

#: End to end (subprocesses, services, training): outside the fast subset (`pytest -m 'not slow'`).
pytestmark = pytest.mark.slow

TOKEN = "test-token-" + "x7Qz" * 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_torch(tmp: Path) -> Path:
    """A PYTHONPATH entry under which ``import torch`` (and the frameworks on top of it) fails."""
    block = tmp / "no-torch"
    for name in ("torch", "timm", "lightning", "mlflow", "transformers"):
        (block / name).mkdir(parents=True, exist_ok=True)
        (block / name / "__init__.py").write_text(f"raise ImportError('{name} is not on this device')\n")
    return block


class Server:
    def __init__(self, tmp: Path, *args: str, port: int = 0) -> None:
        env = {**os.environ, TOKEN_ENV: TOKEN, "PYTHONPATH": str(_no_torch(tmp)), "ARCHSEARCH_CACHE_DIR": str(tmp / "device")}
        self.log = tmp / "jobs.jsonl"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "archsearch.cli", "device-serve", "--port", str(port), "--log", str(self.log), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert "listening on" in line, line + self.proc.stderr.read()
        self.url = line.split("listening on ")[1].split()[0]
        self.fingerprint = line.split(" as ")[1].split()[0]
        self.first_line = line
        # Read what the server prints (a line per job) as it comes: a pipe nobody reads fills at 64 KB and
        # blocks the server mid-answer.
        self._printed: dict = {"out": [], "err": []}
        self._readers = [threading.Thread(target=self._drain, args=(stream, self._printed[key]), daemon=True)
                         for key, stream in (("out", self.proc.stdout), ("err", self.proc.stderr))]
        for t in self._readers:
            t.start()

    @staticmethod
    def _drain(stream, into: list) -> None:
        for line in stream:
            into.append(line)

    def jobs(self) -> list:
        return [json.loads(x) for x in self.log.read_text().splitlines()] if self.log.exists() else []

    def stop(self) -> str:
        self.proc.kill()
        self.proc.wait(timeout=30)
        for t in self._readers:
            t.join(timeout=30)
        return self.first_line + "".join(self._printed["out"]) + "".join(self._printed["err"])


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path, "--timeout-s", "20", "--max-model-mb", "1")
    yield s
    s.stop()


def _post(url: str, body: bytes, *, token: str | None = TOKEN, ctype: str = "application/json", query: str = "") -> tuple:
    req = urllib.request.Request(url + TIME_PATH + query, data=body, method="POST")
    req.add_header("Content-Type", ctype)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _add_model(external: bool = False, channels: int = 3) -> bytes:
    """y = x + c: the smallest float model; with ``external``, c lives in a file next to it (refused)."""
    c = numpy_helper.from_array(np.ones((1,), np.float32), "c")
    if external:
        c.ClearField("raw_data")
        c.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "../../../etc/passwd"), ("offset", "0"), ("length", "4")):
            c.external_data.add(key=k, value=v)
    graph = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 8, 8])], [c])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _conv_model(channels: int = 16) -> bytes:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((channels, channels, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _job(model: bytes, shape, **kw) -> bytes:
    return json.dumps({"models": [{"onnx": base64.b64encode(model).decode(), "shape": list(shape)}],
                       "warmup": 1, "repeats": 3, **kw}).encode()


def _valid(server: Server) -> None:
    status, answer = _post(server.url, _job(_add_model(), [1, 3, 8, 8]))
    assert status == 200 and len(answer["times_ms"][0]) == 3 and answer["fingerprint"] == server.fingerprint


def test_refusals_leave_the_server_up(tmp_path):
    server = Server(tmp_path, "--timeout-s", "8", "--max-model-mb", "1")
    assert onnx.load_from_string(_add_model()).graph.node  # the fixture is a real model
    _valid(server)
    for token in (None, "wrong-" + TOKEN[6:]):
        assert _post(server.url, _job(_add_model(), [1, 3, 8, 8]), token=token)[0] == 401
        req = urllib.request.Request(server.url + DEVICE_PATH)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 401
    _valid(server)
    # Oversized: 2 MB raw against a 1 MB limit, refused on its Content-Length.
    status, answer = _post(server.url, b"\0" * (2 << 20), ctype="application/octet-stream", query="?shape=1,3,8,8")
    assert status == 413 and "more than" in answer["error"]
    _valid(server)
    # Not ONNX: as a raw body and as a JSON job.
    assert _post(server.url, b"hello, not a model", ctype="application/octet-stream", query="?shape=1,3,8,8")[0] == 422
    status, answer = _post(server.url, _job(b"\x08\x07garbage" * 50, [1, 3, 8, 8]))
    assert status == 422 and "not an ONNX model" in answer["error"]
    _valid(server)
    # External data: refused before ONNX Runtime could read the file it names.
    status, answer = _post(server.url, _job(_add_model(external=True), [1, 3, 8, 8]))
    assert status == 422 and "external data" in answer["error"]
    _valid(server)
    # Past the time limit: 10,000 repeats of a 16-channel conv at 256 px; the child is killed.
    start = time.monotonic()
    status, answer = _post(server.url, _job(_conv_model(), [1, 16, 256, 256], repeats=10000))
    assert status == 422 and "limit" in answer["error"] and time.monotonic() - start < 60
    _valid(server)
    # Bad fields name themselves.
    status, answer = _post(server.url, _job(_add_model(), [1, 3, 8, 8], repeats=0))
    assert status == 422 and answer["error"].startswith("repeats:")
    # A raw ONNX body with its shape in the query (curl --data-binary @model.onnx).
    status, answer = _post(server.url, _conv_model(), ctype="application/octet-stream", query="?shape=1,16,32,32&repeats=4")
    assert status == 200 and len(answer["times_ms"][0]) == 4
    log = server.log.read_text()
    assert TOKEN not in log and "traceback" not in log.lower()
    statuses = [j["status"] for j in server.jobs()]
    assert {200, 401, 413, 422} <= set(statuses)
    assert all(len(h) == 64 for j in server.jobs() if j["status"] == 200 for h in j["model_sha256"])
    out = server.stop()
    assert TOKEN not in out and "Traceback" not in out


def test_a_full_queue_answers_503(tmp_path):
    s = Server(tmp_path, "--queue", "0", "--timeout-s", "30")
    try:
        deadline = time.monotonic() + 60
        slow_answers: list = []

        def slow_job() -> None:  # retried while the probe's own job holds the one place
            while time.monotonic() < deadline:
                slow_answers.append(_post(s.url, _job(_conv_model(), [1, 16, 128, 128], repeats=1000))[0])
                if slow_answers[-1] != 503:
                    return
                time.sleep(0.05)

        slow = threading.Thread(target=slow_job)
        slow.start()
        status = answer = None
        while slow.is_alive() and time.monotonic() < deadline:  # while the slow job runs, the next finds no room
            status, answer = _post(s.url, _job(_add_model(), [1, 3, 8, 8]))
            if status == 503:  # only the slow job can hold the place now
                break
        slow.join()
        assert slow_answers and slow_answers[-1] != 503, "the slow job ran"
        assert status == 503 and "busy" in answer["error"]
        _valid(s)
    finally:
        s.stop()


def _remote_search(tmp: Path, url: str, name: str, n_trials: int = 4, tracking: bool = False) -> Path:
    (tmp / "space.yaml").write_text(SPACE)
    track = f'{{uri: "sqlite:///{tmp}/mlflow.db", experiment: r}}' if tracking else "{enabled: false}"
    (tmp / f"{name}.yaml").write_text(f"""
name: {name}
space: space.yaml
objectives: [{{name: latency_ms}}, {{name: params}}]
sampler: {{name: random, seed: 0}}
n_trials: {n_trials}
storage: sqlite:///{tmp}/study.db
tracking: {track}
measure: {{latency: {{backend: remote, url: "{url}", threads: 1, warmup: 1, repeats: 3}}}}
""")
    return tmp / f"{name}.yaml"


def _search(path: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    """``archsearch search PATH`` in this process, with the token in the environment (the server is the subprocess)."""
    return run_cli(["search", str(path), *extra], env={TOKEN_ENV: TOKEN, "ARCHSEARCH_CACHE_DIR": str(cache)})


def test_search_times_on_the_device_server_and_the_cache_sends_nothing_twice(server, tmp_path):
    first = _search(_remote_search(tmp_path, server.url, "r1", tracking=True), tmp_path / "cache")
    assert first.returncode == 0, first.stderr[-2000:]
    study = optuna.load_study(study_name="r1", storage=f"sqlite:///{tmp_path}/study.db")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) >= 3
    for t in done:  # each stored latency says which device timed it
        assert t.user_attrs["latency"]["device_fingerprint"] == server.fingerprint
        assert t.user_attrs["latency"]["backend"] == "remote" and t.user_attrs["latency"]["repeats"] == 3
    sent = len([j for j in server.jobs() if j.get("status") == 200])
    assert sent >= len(done)
    # The same specs again, in a new study: every latency is a cache hit, nothing is sent.
    second = _search(_remote_search(tmp_path, server.url, "r2"), tmp_path / "cache")
    assert second.returncode == 0, second.stderr[-2000:]
    assert len([j for j in server.jobs() if j.get("status") == 200]) == sent
    # The token is in none of what the search leaves behind.
    for text in (first.stdout + first.stderr, second.stdout + second.stderr):
        assert TOKEN not in text
    for path in [tmp_path / "study.db", tmp_path / "mlflow.db", server.log, *(tmp_path / "cache").rglob("*")]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_a_killed_server_fails_its_trial_in_one_line_and_a_restart_finishes_the_budget(tmp_path):
    port = _free_port()
    s = Server(tmp_path, "--timeout-s", "60", port=port)
    path = _remote_search(tmp_path, s.url, "k", n_trials=4)
    env = {**os.environ, TOKEN_ENV: TOKEN, "ARCHSEARCH_CACHE_DIR": str(tmp_path / "cache")}
    search = subprocess.Popen([sys.executable, "-m", "archsearch.cli", "search", str(path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not s.jobs() and time.monotonic() < deadline:  # the first job has come in: kill the server under it
        time.sleep(0.05)
    s.stop()
    out, err = search.communicate(timeout=300)
    assert "unreachable" in out + err and "Traceback" not in out + err
    failed = [t for t in optuna.load_study(study_name="k", storage=f"sqlite:///{tmp_path}/study.db").trials
              if t.state == optuna.trial.TrialState.FAIL]
    assert failed
    s = Server(tmp_path, "--timeout-s", "60", port=port)
    try:
        again = _search(path, tmp_path / "cache")
        assert again.returncode == 0, again.stderr[-2000:]
        study = optuna.load_study(study_name="k", storage=f"sqlite:///{tmp_path}/study.db")
        assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) >= 4
    finally:
        s.stop()


def test_interleaving_with_the_probe_runs_on_the_device_in_one_job(server):
    import dataclasses

    import torch

    from archsearch.measure.latency import latency_device, time_module, time_modules_interleaved
    from archsearch.options import LatencyConfig

    os.environ[TOKEN_ENV] = TOKEN
    try:
        cfg = LatencyConfig(backend="remote", url=server.url, threads=1, warmup=1, repeats=4)
        assert latency_device(cfg)[1] == server.fingerprint
        big, small = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 1)
        a, b, ratio = time_modules_interleaved((big, torch.zeros(1, 8, 64, 64)), (small, torch.zeros(1, 8, 16, 16)), cfg)
        assert a.repeats == ratio.repeats == 4 and b.repeats >= 4 and ratio.median_ms > 1
        assert time_module(small, torch.zeros(1, 8, 16, 16), dataclasses.replace(cfg, repeats=5)).repeats == 5
        modes = [j["mode"] for j in server.jobs() if j.get("status") == 200]
        assert modes == ["interleave", "round_robin"]
    finally:
        os.environ.pop(TOKEN_ENV)


def test_remote_options_are_checked_and_the_token_is_never_an_option(capsys, monkeypatch):
    from archsearch.cli import main
    from archsearch.errors import ConfigError
    from archsearch.options import LatencyConfig

    for bad, key in ((dict(backend="remote"), "url"), (dict(backend="remote", url="ftp://x"), "url"),
                     (dict(backend="remote", url="http://u:secret@h:1"), "url"),
                     (dict(backend="remote", url="http://h:1/?token=abc"), "url"), (dict(url="http://h:1"), "url"),
                     (dict(backend="remote", url="http://h:1", compile=True), "compile")):
        with pytest.raises(ConfigError) as e:
            LatencyConfig(**bad)
        assert e.value.key == key and "secret" not in str(e.value)
    assert "url" not in LatencyConfig(backend="remote", url="http://h:1").cache_key()
    assert main(["calibrate", "--backend", "remote"]) == 2
    assert "url" in capsys.readouterr().err
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main(["measure", "fastvit_t8", "-r", "64", "-m", "latency", "--no-cache", "measure.latency.backend=remote",
                 "measure.latency.url=http://127.0.0.1:9"]) != 0
    err = capsys.readouterr().err
    assert TOKEN_ENV in err and "Traceback" not in err
