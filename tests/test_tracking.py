"""MLflow against a real tracking server: the search prints none of MLflow's own per-run lines."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from .conftest import cli_env as _env, experiment as _experiment


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    exe = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    if not os.path.exists(exe):
        pytest.skip("the mlflow command is not installed")
    port = _free_port()
    proc = subprocess.Popen([exe, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
                             "--default-artifact-root", str(tmp_path / "artifacts")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start in 120 s")
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_search_against_a_tracking_server_prints_no_mlflow_lines(tmp_path, mlflow_server):
    path = _experiment(tmp_path, n_trials=4, tracking=mlflow_server)
    out = subprocess.run([sys.executable, "-m", "archsearch.cli", "search", str(path)], cwd=tmp_path, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert "View run" not in text and "View experiment" not in text, text[-2000:]
    assert "MLflow tracking off" not in text and "4 " in text  # tracked, and the search reported its trials
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("t")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) >= 4 and all(r.info.status != "RUNNING" for r in runs)
