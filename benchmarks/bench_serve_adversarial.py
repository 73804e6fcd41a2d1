"""``device-serve`` under an adversarial run, all on 127.0.0.1: does a valid job still get its answer?

Phases, in order, against one server started with its defaults (read timeout, connection cap, log rotation):

1. idle: valid jobs one after another (a 16-channel 3x3 conv at 64x64 px, 5 repeats): the idle time of a job;
2. 400 stalled connections (request headers begun, never finished): the server's threads while they are held, a valid
   job meanwhile, and again after the read timeout has closed them;
3. 10,000 requests without a token, each with a 60 KB path: the job log's size afterwards;
4. 10 valid jobs at once (one runs, the queue holds 4, the rest are answered 503 at once);
5. after: valid jobs one after another, against the idle time.

    python benchmarks/bench_serve_adversarial.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _conv_model(channels: int = 16) -> bytes:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((channels, channels, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


class Bench:
    def __init__(self, log: Path) -> None:
        self.token = secrets.token_urlsafe(24)
        env = {**os.environ, "ARCHSEARCH_DEVICE_TOKEN": self.token}
        self.proc = subprocess.Popen([sys.executable, "-m", "archsearch.cli", "device-serve", "--port", "0", "--log", str(log)],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            raise SystemExit(f"device-serve did not start: {line!r}")
        self.url = line.split("listening on ")[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])
        self.job = json.dumps({"models": [{"onnx": base64.b64encode(_conv_model()).decode(), "shape": [1, 16, 64, 64]}],
                               "warmup": 1, "repeats": 5, "threads": 1}).encode()

    def valid(self) -> tuple:
        """(HTTP status, seconds) of one valid job."""
        req = urllib.request.Request(self.url + "/v1/time", data=self.job, method="POST",
                                     headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        start = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            status = e.code
        except OSError:
            status = 0
        return status, round(time.monotonic() - start, 3)

    def threads(self) -> int:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(x for x in text.splitlines() if x.startswith("Threads:")).split()[1])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _unauthenticated(port: int, path: str) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            while s.recv(65536):
                pass
    except OSError:
        pass


def run(out: Path) -> dict:
    from archsearch.serve.server import ServeOptions

    defaults = ServeOptions()
    tmp = Path(tempfile.mkdtemp(prefix="serve-adversarial-"))
    log = tmp / "jobs.jsonl"
    b = Bench(log)
    result: dict = {"limits": {"read_timeout_s": defaults.read_timeout_s, "max_connections": defaults.max_connections,
                               "log_max_mb": defaults.log_max_mb, "log_field_chars": 300,
                               "unauthenticated_log_lines_per_s": 1, "queue": defaults.queue, "timeout_s": defaults.timeout_s},
                    "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    try:
        b.valid()  # the first job pays the imports of the job's child process
        idle = [b.valid()[1] for _ in range(5)]
        result["idle_s"] = {"runs": idle, "median": statistics.median(idle)}

        stalled = []
        for _ in range(400):
            s = socket.create_connection(("127.0.0.1", b.port), timeout=10)
            s.sendall(b"GET /v1/device HTTP/1.1\r\nHost: x\r\n")
            stalled.append(s)
        time.sleep(0.5)
        during = b.valid()
        result["stalled_400"] = {"server_threads_while_held": b.threads(), "valid_job_while_held": during}
        time.sleep(defaults.read_timeout_s + 2)
        closed = 0
        for s in stalled:
            s.settimeout(0.2)
            try:
                closed += s.recv(1) == b""
            except OSError:
                pass
            s.close()
        result["stalled_400"].update(closed_by_server=closed, server_threads_after_timeout=b.threads(),
                                     valid_job_after_timeout=b.valid())

        path = "/" + "x" * 60_000
        start = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda _: _unauthenticated(b.port, path), range(10_000)))
        result["unauthenticated_10000"] = {"seconds": round(time.monotonic() - start, 1), "log_bytes": log.stat().st_size,
                                           "valid_job_after": b.valid()}

        with ThreadPoolExecutor(10) as pool:
            concurrent = list(pool.map(lambda _: b.valid(), range(10)))
        result["concurrent_10"] = {"statuses": sorted(s for s, _ in concurrent),
                                   "seconds_of_200": sorted(t for s, t in concurrent if s == 200)}

        after = [b.valid()[1] for _ in range(5)]
        result["after_s"] = {"runs": after, "median": statistics.median(after)}
        result["after_over_idle"] = round(statistics.median(after) / statistics.median(idle), 3)
        result["log_bytes_final"] = sum(p.stat().st_size for p in tmp.glob("jobs.jsonl*"))
    finally:
        b.stop()
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_adversarial.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / "serve_adversarial.md").write_text(_report(result), encoding="utf-8")
    return result


def _report(r: dict) -> str:
    lim, st, un, cc = r["limits"], r["stalled_400"], r["unauthenticated_10000"], r["concurrent_10"]
    return "\n".join([
        "# device-serve under an adversarial run", "",
        "Made by `python benchmarks/bench_serve_adversarial.py --out benchmarks/results` (all on 127.0.0.1, "
        f"{r['host']['cpus']} CPUs, Python {r['host']['python']}); raw figures in `serve_adversarial.json`.", "",
        "## The limits chosen (`ServeOptions`, each a `device-serve` flag)", "",
        f"* read timeout {lim['read_timeout_s']:g} s: a client silent that long (headers or body) is disconnected;",
        f"* at most {lim['max_connections']} connections at once; one more gets a one-line 503 and is closed without a thread;",
        f"* job log: every field cut to {lim['log_field_chars']} characters, refusals without the token logged at most "
        f"{lim['unauthenticated_log_lines_per_s']} a second (with the count of those not logged), the file rotated past "
        f"{lim['log_max_mb']:g} MB (so it and its one old copy stay under {2 * lim['log_max_mb']:g} MB);",
        f"* one job at a time, {lim['queue']} waiting, each job limited to {lim['timeout_s']:g} s; threads at most the "
        "device's logical CPUs.", "",
        "## What happened", "",
        "| phase | figure |", "| --- | --- |",
        f"| idle | a valid job took {r['idle_s']['median']:.3f} s (median of 5) |",
        f"| 400 stalled connections held | server threads {st['server_threads_while_held']}; a valid job: status "
        f"{st['valid_job_while_held'][0]} in {st['valid_job_while_held'][1]:.3f} s |",
        f"| after the read timeout | {st['closed_by_server']} of 400 closed by the server; threads "
        f"{st['server_threads_after_timeout']}; a valid job: status {st['valid_job_after_timeout'][0]} in "
        f"{st['valid_job_after_timeout'][1]:.3f} s |",
        f"| 10,000 unauthenticated 60 KB paths | {un['seconds']:.1f} s; job log {un['log_bytes'] / 1024:.1f} KB; a valid job "
        f"after: status {un['valid_job_after'][0]} in {un['valid_job_after'][1]:.3f} s |",
        f"| 10 valid jobs at once | statuses {cc['statuses']}; the answered ones took {cc['seconds_of_200']} s |",
        f"| after | a valid job took {r['after_s']['median']:.3f} s (median of 5): **{r['after_over_idle']:.2f}x** its idle "
        f"time; job log {r['log_bytes_final'] / 1024:.1f} KB in all |", "",
    ]) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    r = run(p.parse_args().out)
    print(json.dumps({k: r[k] for k in ("idle_s", "after_over_idle", "log_bytes_final")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
