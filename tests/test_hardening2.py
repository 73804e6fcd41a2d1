"""Hardening, round two: newer features under hostile and careless input. Every case ends in one line and exit
status 2 (or 1 for a run that completed nothing), with nothing stored lost and memory bounded."""
from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from archsearch.cli import main
from archsearch.errors import mask_secrets

from .conftest import ROOT, run_cli

QUICKSTART = str(ROOT / "trials" / "quickstart.yaml")
Q = [QUICKSTART, "tracking.enabled=false", "enqueue=[]", "objectives=[{name: params}, {name: macs}]",
     'space_overrides=["resolution=[64]"]']


def _fails(capsys, argv, *needles, code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# --- special files and numbers --------------------------------------------------------------------------------

def test_special_files_are_read_with_a_byte_limit_and_never_echoed(capsys):
    _fails(capsys, ["build", "/dev/zero"], "/dev/zero", "more than")
    _fails(capsys, ["search", *Q, "space=/dev/zero", "--dry-run"], "/dev/zero")
    line = _fails(capsys, ["search", *Q, "space=/etc/passwd", "--dry-run"], "/etc/passwd", "expected one of")
    assert "root:" not in line, "the file is named, its contents are not shown"


@pytest.mark.parametrize("override, needle", [
    ("n_trials=" + "9" * 100_000, "n_trials"),
    ("constraints=[{metric: tokens, max: .nan}]", "constraints[0].max"),
    ("timeout_s=-5", "timeout_s"),
    ("max_consecutive_failures=0", "max_consecutive_failures"),
    ("measure.latency.threads=100000", "measure.latency.threads"),
    ("n_trials=100000000", "n_trials"),
])
def test_numbers_are_checked(capsys, override, needle):
    _fails(capsys, ["search", *Q, override, "--dry-run"], needle)


def test_a_thread_count_past_the_bound_is_refused(capsys):
    _fails(capsys, ["measure", "fastvit_t8", "-r", "64", "-m", "latency", "--threads", "100000"], "threads", "at most")


# --- storage and secrets --------------------------------------------------------------------------------------

def test_in_memory_sqlite_is_refused_for_a_search(capsys, tmp_path):
    _fails(capsys, ["search", *Q, "--storage", "sqlite://", "n_trials=1"], "in-memory SQLite")
    _fails(capsys, ["search", *Q, "--storage", "sqlite:///:memory:", "n_trials=1"], "in-memory SQLite")


def test_secrets_in_a_query_string_are_masked(capsys):
    assert mask_secrets("postgresql://u@h/db?sslmode=require&password=S3cret") == "postgresql://u@h/db?sslmode=require&password=***"
    assert mask_secrets("http://h:5000/?token=abc&x=1") == "http://h:5000/?token=***&x=1"
    line = _fails(capsys, ["search", *Q, "--storage", "postgresql://u@127.0.0.1:1/db?password=S3cret", "n_trials=1"], "***")
    assert "S3cret" not in line


# --- runs that complete nothing, trainings that cannot train --------------------------------------------------

@pytest.mark.slow
def test_a_run_that_completed_no_trial_exits_non_zero(tmp_path):
    # On a CPU machine every latency trial fails; an invalid sample is PRUNED: still nothing completed.
    args = [*Q, "objectives=[{name: params}, {name: latency_ms}]", "measure.latency.backend=cuda",
            "--storage", f"sqlite:///{tmp_path}/f.db", "n_trials=4", "max_consecutive_failures=3"]
    proc = run_cli(["search", *args], tmp_path, {"ARCHSEARCH_CACHE_DIR": str(tmp_path / "c")})
    if proc.returncode == 0 and "cuda" not in proc.stderr.lower():
        pytest.skip("this machine has a CUDA device: the trials do not fail")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "no trial completed in this run" in proc.stderr and "Traceback" not in proc.stderr


def _image_folder(root: Path, images: dict) -> Path:
    for split in ("train", "val"):
        for cls, files in images.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                (root / split / cls / name).write_bytes(data)
    return root


def _png(w: int, h: int, pixel: bytes = b"\x00\x80") -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + pixel * w for _ in range(min(h, 4)))  # grey+alpha rows (a declared size may lie)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 4, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_a_training_that_cannot_take_a_step_is_refused(capsys, tmp_path):
    data = _image_folder(tmp_path / "few", {"a": {"1.png": _png(8, 8)}, "b": {"2.png": _png(8, 8)}})
    _fails(capsys, ["proxy", "fastvit_t8", "--kind", "train", "--steps", "20", "-r", "32", "--data", str(data), "--json"],
           "fewer than one batch")


@pytest.mark.parametrize("bad, needle", [("truncated", "truncated.png"), ("bomb", "pixels")])
def test_broken_images_in_an_image_folder(capsys, tmp_path, bad, needle):
    good = {f"{i}.png": _png(8, 8) for i in range(40)}  # more than one batch of 64 in all
    broken = {"truncated.png": _png(8, 8)[:40]} if bad == "truncated" else {"bomb.png": _png(100_000, 100_000)}
    data = _image_folder(tmp_path / "d", {"a": {**good, **broken}, "b": good})
    _fails(capsys, ["proxy", "fastvit_t8", "--kind", "train", "--steps", "2", "-r", "32", "--data", str(data),
                    "--width-mult", "0.125", "--max-depth", "1", "--json"], needle)


def _idx_header(shape) -> bytes:
    return bytes([0, 0, 0x08, len(shape)]) + b"".join(struct.pack(">I", d) for d in shape)


def test_damaged_and_bomb_idx_files_are_one_line_with_bounded_memory(tmp_path):
    root = tmp_path / "fm"
    root.mkdir()
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_header((10, 28, 28)))[:30] + b"garbage" * 50)
    (root / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_header((10,)) + bytes(10)))
    with gzip.open(tmp_path / "bomb.gz", "wb", compresslevel=1) as f:  # 23 kB that expand to 1 GiB
        f.write(_idx_header((1 << 20, 32, 32)))
        block = bytes(1 << 20)
        for _ in range(1024):
            f.write(block)
    code = f"""
import sys
from archsearch.errors import ConfigError
from archsearch.proxy.data import read_idx
for path in ({str(root / 'train-images-idx3-ubyte.gz')!r}, {str(tmp_path / 'bomb.gz')!r}):
    try:
        read_idx(path)
    except ConfigError as e:
        print(str(e).splitlines()[0])
# The peak of this address space (VmHWM): ru_maxrss would carry the forking parent's size across exec.
print(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    damaged, bomb, rss_kb = proc.stdout.strip().splitlines()
    assert "damaged gzip" in damaged and "train-images" in damaged
    assert "more than 256 MiB" in bomb and "header declares" in bomb
    assert int(rss_kb) < 900_000, "memory stays bounded: the body is never decompressed (torch's import is ~530 MB)"


# --- output directories ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["file", "/proc/self/archsearch-x", "/sys/archsearch-x", "users-dir"])
def test_proxy_fidelity_out_is_checked(capsys, tmp_path, target):
    if target == "file":
        out = tmp_path / "a-file"
        out.write_text("mine")
    elif target == "users-dir":
        out = tmp_path / "mine"
        out.mkdir()
        (out / "report.md").write_text("my report")
        (out / "fidelity.json").write_text("{}")
    else:
        out = Path(target)
    _fails(capsys, ["proxy-fidelity", str(ROOT / "search_spaces" / "fastvithd.yaml"), "--out", str(out), "-n", "4",
                    "--holdout", "0", "--kinds", "zero_cost"], "--out")
    if target == "users-dir":
        assert (out / "report.md").read_text() == "my report" and (out / "fidelity.json").read_text() == "{}"
    if target == "file":
        assert out.read_text() == "mine"


def _ablation_dir(tmp_path: Path, meta: str, csv: str) -> Path:
    d = tmp_path / "abl"
    d.mkdir()
    (d / "ablation.json").write_text(meta)
    (d / "results.csv").write_text(csv)
    return d


GOOD_META = json.dumps({"name": "x", "variants": [{"name": "a", "arch": "R1/s8"}], "measure": {}})
GOOD_CSV = "variant,arch,resolution,tokens,macs\na,R1/s8,64,16,1000\na,R1/s8,128,64,4000\n"


@pytest.mark.parametrize("meta, csv, needles", [
    (GOOD_META, "variant,arch,resolution,tokens,macs\na,R1/s8,64,16,lots\n", ("results.csv, row 2, field macs",)),
    (GOOD_META, "variant,arch,resolution,tokens\na,R1/s8,,16\n", ("row 2, field resolution",)),
    (GOOD_META, "variant,arch,resolution,tokens\na,R1/s8,-64,16\n", ("row 2, field resolution",)),
    (GOOD_META, "variant,arch,resolution,tokens\na,R1/s8,64,16,99,1\n", ("row 2", "number of fields")),
    (GOOD_META, "variant,arch,resolution,tokens\n", ("no rows",)),
    (GOOD_META, "variant,arch,resolution,latency_ms\na,R1/s8,64,nan\n", ("field latency_ms",)),
    ('{"name": "x", "variants": ', GOOD_CSV, ("ablation.json: not JSON",)),
    ('{"name": "x", "variants": {"a": 1}}', GOOD_CSV, ("field variants",)),
    ('["x"]', GOOD_CSV, ("ablation.json",)),
    ('{"name": "x", "variants": [], "measure": []}', GOOD_CSV, ("field measure",)),
])
def test_report_on_hand_edited_results_names_file_row_and_field(capsys, tmp_path, meta, csv, needles):
    d = _ablation_dir(tmp_path, meta, csv)
    _fails(capsys, ["report", str(d), "--out", str(d)], *needles)


def test_report_on_good_results_still_works(capsys, tmp_path):
    d = _ablation_dir(tmp_path, GOOD_META, GOOD_CSV)
    assert main(["report", str(d), "--out", str(d)]) == 0
    assert (d / "report.md").read_text().startswith("# Ablation x")


@pytest.mark.slow
def test_overwrite_keeps_the_users_own_files_and_names_are_escaped(capsys, tmp_path):
    db = f"sqlite:///{tmp_path}/s.db"
    name = "evil\n<b>name</b>"
    assert main(["search", *Q, "n_trials=3", "--storage", db, f"study_name={json.dumps(name)}"]) == 0
    out = tmp_path / "p"
    assert main(["pareto", name, "--storage", db, "--out", str(out)]) == 0
    written = {p.name for p in out.glob("pareto_trial*.yaml")}
    assert written
    mine = out / "pareto_trial9999_mine.yaml"
    mine.write_text("# my own notes\n")
    stale = out / sorted(written)[0]
    assert main(["pareto", name, "--storage", db, "--out", str(out), "--overwrite"]) == 0
    assert mine.read_text() == "# my own notes\n", "--overwrite removes only what an earlier run wrote"
    assert stale.exists(), "the same front was written again"
    md = (out / "pareto.md").read_text()
    heading = md.splitlines()[0]
    assert heading == "# Pareto front of evil &lt;b&gt;name&lt;/b&gt;", heading
    assert "<b>" not in md


# --- a study is one set of conditions; resuming never replays it ------------------------------------------------

LAT = [QUICKSTART, "tracking.enabled=false", "enqueue=[]", "objectives=[{name: params}, {name: latency_ms}]",
       'space_overrides=["resolution=[64]"]', "measure.latency.repeats=2", "measure.latency.warmup=0"]


@pytest.mark.parametrize("change, key", [
    ("measure.latency.threads=2", "measure.latency.threads"),
    ("measure.latency.channels_last=true", "measure.latency.channels_last"),
    ("constraints=[{metric: tokens, max: 16}]", "constraints"),
    ("sampler.seed=7", "sampler.seed"),  # two searches' trials would mix in one study
    ("sampler.name=random", "sampler.name"),
])
@pytest.mark.slow
def test_a_study_resumed_under_other_conditions_is_refused(capsys, tmp_path, change, key):
    db = f"sqlite:///{tmp_path}/c.db"
    assert main(["search", *LAT, "measure.latency.threads=1", "n_trials=2", "--storage", db, "-q"]) == 0
    capsys.readouterr()
    import optuna

    before = len(optuna.load_study(study_name="quickstart", storage=db).trials)
    line = _fails(capsys, ["search", *LAT, "measure.latency.threads=1", change, "n_trials=4", "--storage", db], key,
                  "would not compare")
    assert "another study_name" in line
    assert len(optuna.load_study(study_name="quickstart", storage=db).trials) == before, "nothing ran"
    # Precision is not meaning: more repeats resume the same study.
    assert main(["search", *LAT, "measure.latency.threads=1", "measure.latency.repeats=3", "n_trials=3", "--storage", db,
                 "-q"]) == 0


@pytest.mark.slow
def test_resuming_does_not_replay_the_seeded_sampler(tmp_path):
    import optuna

    db = f"sqlite:///{tmp_path}/r.db"
    for n in (2, 5, 8):
        assert main(["search", *Q, f"n_trials={n}", "--storage", db, "-q"]) == 0
    trials = optuna.load_study(study_name="quickstart", storage=db).trials
    specs = {(t.user_attrs.get("spec_hash"), t.user_attrs.get("resolution")) for t in trials if "spec_hash" in t.user_attrs}
    assert len(trials) == 8 and len(specs) >= 7, [t.params for t in trials]


# --- full disks and unreachable trackers -------------------------------------------------------------------------

def test_a_full_cache_is_named_once_and_measuring_goes_on(capsys, tmp_path, monkeypatch):
    import sqlite3

    from archsearch.measure.cache import MeasureCache

    def full(self, op):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setenv("ARCHSEARCH_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setattr(MeasureCache, "_recovering", full)
    assert main(["measure", "fastvit_t8", "fastvit_s12", "-r", "64", "-m", "params", "--json"]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)) == 2
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "measurement cache" in lines[0] and "disk is full" in lines[0] and str(tmp_path) in lines[0]


def test_a_full_disk_for_outputs_is_one_line_and_leaves_no_cut_file(capsys, tmp_path, monkeypatch):
    import errno

    db = f"sqlite:///{tmp_path}/s.db"
    assert main(["search", *Q, "n_trials=2", "--storage", db, "-q"]) == 0
    capsys.readouterr()
    real = Path.write_text

    def no_space(self, *a, **k):
        if self.name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", no_space)
    line = _fails(capsys, ["pareto", "quickstart", "--storage", db, "--out", str(tmp_path / "p")], "No space left on device")
    assert str(tmp_path / "p") in line
    assert not [p for p in (tmp_path / "p").iterdir() if p.suffix in (".md", ".csv") and p.stat().st_size == 0]


@pytest.mark.slow
def test_an_unreachable_mlflow_database_costs_seconds_and_one_warning(tmp_path):
    import time

    start = time.monotonic()
    args = ["search", *Q, "n_trials=2", "tracking.enabled=true", "tracking.uri=postgresql://nobody@127.0.0.1:1/mlflow",
            "--storage", f"sqlite:///{tmp_path}/m.db", "-q"]
    proc = run_cli(args, tmp_path, {"ARCHSEARCH_CACHE_DIR": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr
    warnings = [l for l in proc.stderr.splitlines() if l.startswith("warning:")]
    assert len(warnings) == 1 and "MLflow tracking" in warnings[0] and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 90


# --- fuzz: data files and report inputs -------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def _idx_bytes(draw):
    """IDX files that are almost right: a real header with lies in it, cut or padded bodies, some gzipped."""
    ndim = draw(st.integers(0, 4))
    shape = draw(st.lists(st.integers(0, 1 << 31), min_size=ndim, max_size=ndim))
    dtype = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07, 0xFF]))
    head = bytes([0, draw(st.sampled_from([0, 0, 1])), dtype, ndim]) + b"".join(struct.pack(">I", d) for d in shape)
    body = draw(st.binary(max_size=512))
    raw = head[: draw(st.integers(0, len(head)))] + body if draw(st.booleans()) else head + body
    if draw(st.booleans()):
        raw = gzip.compress(raw)
        if draw(st.booleans()):
            raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=_idx_bytes())
def test_fuzz_idx_files_read_or_refuse_in_one_line(tmp_path, raw):
    from archsearch.errors import ConfigError
    from archsearch.proxy.data import read_idx

    path = tmp_path / "f.idx.gz"
    path.write_bytes(raw)
    try:
        arr = read_idx(path)
    except ConfigError as e:
        assert "\n" not in str(e) and str(path) in str(e)
    else:
        assert arr.size * arr.itemsize <= 512


_CSV_CELLS = st.sampled_from(["", "a", "64", "-1", "1e9", "nan", "inf", "1,2", '"x', "0x10", "１２", "\u0000", "ok ok"])


_HEADER = ["variant", "arch", "resolution", "tokens", "macs", "latency_ms", "ttft_ms", "naswot"]
_GOOD_CELLS = st.sampled_from(["a", "b", "64", "128", "1.5", "2e3", "7"])


@settings(max_examples=160, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.one_of(st.just(_HEADER), st.lists(st.sampled_from(_HEADER + ["x"]), min_size=0, max_size=6)),
       rows=st.one_of(st.lists(st.lists(_GOOD_CELLS, min_size=8, max_size=8), min_size=1, max_size=4),
                      st.lists(st.lists(st.one_of(_CSV_CELLS, _GOOD_CELLS), min_size=0, max_size=9), max_size=4)),
       meta=st.sampled_from(['{"name": "x", "variants": [{"name": "a"}]}', '{"name": 1}', "[]", "{", "",
                             '{"name": "x", "variants": [{"name": "a"}], "measure": {"latency": 3}}',
                             '{"name": "x", "variants": [{"name": "a"}], "measure": {"proxy": [1], "train": {}}}',
                             '{"name": "<b>", "variants": [{"name": "a|b", "arch": 3}], "measure": {"latency": {}}}']))
def test_fuzz_report_inputs_give_a_report_or_one_line(tmp_path_factory, capsys, header, rows, meta):
    d = tmp_path_factory.mktemp("abl")
    (d / "ablation.json").write_text(meta)
    (d / "results.csv").write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    code = main(["report", str(d), "--out", str(d)])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err
    if code == 2:
        assert len([l for l in err.splitlines() if l.strip()]) == 1


def test_a_nan_result_is_never_cached_or_stored(tmp_path):
    from archsearch.errors import MeasurementError
    from archsearch.measure.cache import MeasureCache
    from archsearch.metrics import Measurer

    cache = MeasureCache(tmp_path / "m.sqlite")
    m = Measurer(cache=cache)
    with pytest.raises(MeasurementError, match="loss_sum came out NaN"):
        m._cached(MeasureCache.key(metric="train", spec="x"), lambda: {"val_top1": 0.1, "loss_sum": float("nan")})
    assert len(cache) == 0


_IMAGE_HEADS = st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b""])


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=_IMAGE_HEADS, body=st.binary(max_size=2048), cut=st.integers(0, 4000), size=st.sampled_from([8, 100_000]))
def test_fuzz_images_load_or_refuse_in_one_line(tmp_path, head, body, cut, size):
    from archsearch.errors import ConfigError
    from archsearch.proxy.data import _load_image

    raw = (_png(size, size) if head == b"\x89PNG\r\n\x1a\n" and not body else head + body)[:cut or None]
    path = tmp_path / "x.img"
    path.write_bytes(raw)
    try:
        img = _load_image(str(path))
    except ConfigError as e:
        assert "\n" not in str(e) and str(path) in str(e)
    else:
        assert img.size[0] * img.size[1] <= 64 << 20
