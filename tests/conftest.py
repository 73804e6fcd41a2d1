from __future__ import annotations

import fcntl
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import gzip
import struct
import subprocess

import pytest

import numpy as np
import optuna
import sqlalchemy.exc
import torch
import torch.nn as nn

from archsearch.references import get_reference

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    # Measurements and latency tables go to a throw-away directory, never the user's cache.
    os.environ["ARCHSEARCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("archsearch-cache"))
    yield


@pytest.fixture(autouse=True, scope="session")
def _deterministic_torch():
    # Random-init FastViT nets produce denormals; flushing keeps CPU time stable and tests fast.
    torch.set_flush_denormal(True)
    torch.set_num_threads(2)
    yield


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm statistics, affine params and layer scales non-trivial values.

    At initialisation BN is an identity and layer scales are 1e-5, so folding them would be checked
    only on near-identity branches; random values make the reparameterisation test mean something.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        for name, p in model.named_parameters():
            if name.endswith("gamma") or name.endswith("layer_scale"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


TINY_LLM_YAML = """
name: tiny-llm
layers: 2
hidden: 64
heads: 4
kv_heads: 2
intermediate: 128
vocab: 1000
"""


# --- shared fixtures ---------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape) + \
        array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_fashion(root, n_train: int = 40, n_val: int = 20, gz: bool = True) -> None:
    """A Fashion-MNIST-shaped fixture: class k is a bright square of side 4+2k (learnable, deterministic)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_val)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, k in enumerate(labels):
            images[i, 2:6 + 2 * k, 2:6 + 2 * k] = 200
        for name, arr in ((f"{split}-images-idx3-ubyte", images), (f"{split}-labels-idx1-ubyte", labels)):
            data = idx_bytes(arr)
            (root / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)


# --- small search spaces and experiments ---------------------------------------------------------------

#: A tiny space of every structural choice (strides, stage counts, attention placement).
TINY = """
name: tiny
resolution: [64]
num_stages: [2, 3]
output_stride: [8, 16, 32]
num_attention_stages: [0, 1, 2]
fixed: {head_dim: 8}
stages:
  - {depth: [1], width: [8, 16]}
  - {depth: [1], width_mult: [1, 2], token_mixer: [repmixer, attention]}
  - {depth: [1], width: [4, 32], token_mixer: [attention]}
"""

#: The search tests' space: small enough that a trial measures in well under a second.
SEARCH_SPACE = """
name: tiny
resolution: [32, 64]
num_stages: [2, 3]
output_stride: [8, 16]
num_attention_stages: [0, 1]
fixed: {head_dim: 8}
stages:
  - {depth: [1], width: [8, 16]}
  - {depth: [1, 2], width_mult: [1, 2], token_mixer: [repmixer, attention]}
  - {depth: [1], width_mult: [1, 2], token_mixer: [repmixer, attention]}
"""


def experiment(tmp: Path, *, objectives: str = "[{name: macs, direction: minimize}, {name: naswot, direction: maximize}]",
                n_trials: int = 8, storage: str | None = None, tracking: str | None = None, mlflow: bool = False,
                extra: str = "") -> Path:
    """A small experiment; MLflow tracking only where a test looks at it (``tracking`` URI, or ``mlflow`` for a
    local SQLite store): creating a tracking database costs each process seconds."""
    (tmp / "space.yaml").write_text(SEARCH_SPACE)
    ref = get_reference("fastvit_t8").spec.scaled(width_mult=1 / 6, max_depth=1).replace(
        stages=get_reference("fastvit_t8").spec.scaled(width_mult=1 / 6, max_depth=1).stages[:2], head_dim=8)
    ref.replace(name="ref").save(tmp / "ref.yaml")
    uri = tracking or (f"sqlite:///{tmp}/mlflow.db" if mlflow else None)
    track = f'{{uri: "{uri}", experiment: t}}' if uri else "{enabled: false}"
    text = f"""
name: t
space: space.yaml
objectives: {objectives}
constraints: [{{metric: tokens, max: 64}}]
sampler: {{name: nsga2, seed: 0, population_size: 4}}
n_trials: {n_trials}
storage: {storage or f'sqlite:///{tmp}/study.db'}
enqueue: [{{spec: ref.yaml, resolution: 64}}]
tracking: {track}
measure:
  proxy: {{resolution: 32, batch_size: 8, width_mult: 1.0, data: noise}}
  latency: {{threads: 1, warmup: 1, repeats: 3}}
heartbeat_s: 1
grace_s: 3
{extra}
"""
    (tmp / "trials.yaml").write_text(text)
    return tmp / "trials.yaml"


def cli_env(tmp: Path) -> dict:
    """The environment of a command-line subprocess: its own cache, unbuffered output."""
    return {**os.environ, "ARCHSEARCH_CACHE_DIR": str(tmp / "cache"), "PYTHONUNBUFFERED": "1"}


# --- the command line, in this process -----------------------------------------------------------------

def run_cli(args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """``archsearch ARGS`` as :func:`archsearch.cli.main` in this process, with ``cwd`` and ``env`` (added to
    os.environ) for the call only, its stdout and stderr captured: what a subprocess would give, without paying
    the interpreter's start-up and a cold import of torch, timm and optuna (seconds per call).

    Tests of the executable itself (signals, kill -9, memory limits, imports at start-up) run it as a
    subprocess instead."""
    import contextlib
    import io

    from archsearch.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env = dict(os.environ)
    with contextlib.ExitStack() as stack:
        if cwd is not None:
            here = os.getcwd()
            os.chdir(cwd)
            stack.callback(os.chdir, here)
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        os.environ.update(env or {})
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse: --help, a usage error
            code = e.code if isinstance(e.code, int) else 2
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


# --- subprocess workers and services (search, rung and hardening tests) ---------------------------------

def default_sigint() -> None:
    # A harness that runs the suite in the background (`cmd &` in a script) starts it with SIGINT ignored,
    # and children inherit that; the workers here must see Ctrl-C as a user's terminal sends it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_popen(args, tmp: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "archsearch.cli", *args], cwd=tmp, env=cli_env(tmp),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint, **kw)


#: What loading a study raises while a worker under test is still creating it (no study yet; the schema half
#: made: CI saw a poll race the worker's schema creation, both inserting alembic's version row).
NOT_YET = (KeyError, sqlalchemy.exc.SQLAlchemyError)


def wait_for(predicate, timeout: float, what: str, proc=None) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` s, or as soon as ``proc`` (a Popen) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited ({proc.returncode}) while waiting for {what}: {out}{err}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def study_states(url: str, name: str = "t") -> dict:
    """The study's trial states by number; {} while the worker under test is still creating the study."""
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except NOT_YET:
        return {}
    return {t.number: t.state for t in study.get_trials(deepcopy=False)}


def postgres_url(db: str = "test") -> str:
    return f"postgresql://postgres@127.0.0.1:5432/{db}"


def postgres_available() -> bool:
    try:
        import psycopg

        psycopg.connect(postgres_url(), connect_timeout=3).close()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture
def postgres_dbs():
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (trust auth, database 'test')")
    import psycopg

    # One PostgreSQL test at a time across the xdist workers: two of them together, each with its worker
    # processes' pools, peaked at 49 connections here and hit the server's 100 in CI under load.
    with open(Path(tempfile.gettempdir()) / "archsearch-tests-postgresql.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, whatever happens below
        names = [f"archsearch_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("optuna", "mlflow")]
        conn = psycopg.connect(postgres_url(), autocommit=True)
        with conn.cursor() as cur:
            for name in names:
                cur.execute(f"CREATE DATABASE {name}")
        yield [postgres_url(n) for n in names]
        with conn.cursor() as cur:
            for name in names:
                cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.close()
