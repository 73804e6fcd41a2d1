"""Short-training proxy: offline data, Lightning training that learns, fidelity report."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from archsearch.errors import ConfigError
from archsearch.proxy.data import DigitCanvas
from archsearch.proxy.train import TrainProxyConfig, train_proxy
from archsearch.references import get_reference



def test_digit_canvas_is_deterministic_and_sized():
    a, b = DigitCanvas(8, canvas=48, seed=3), DigitCanvas(8, canvas=48, seed=3)
    x, y = a[5]
    assert x.shape == (3, 48, 48) and 0 <= y < 10
    assert torch.equal(x, b[5][0]) and y == b[5][1]
    assert not torch.equal(x, DigitCanvas(8, canvas=48, seed=4)[5][0])
    assert DigitCanvas(2, canvas=100, digit_px=12)[0][0].shape == (3, 100, 100)
    # Validation uses other scans than training (unseen writers), not re-placed training digits.
    train, val = DigitCanvas(1, split="train"), DigitCanvas(1, split="val")
    assert len(train.images) + len(val.images) == 1797
    assert not any(np.array_equal(v, t) for v in val.images[:20] for t in train.images)
    with pytest.raises(ConfigError, match="^digit_px: "):
        DigitCanvas(1, canvas=32, digit_px=40)


@pytest.mark.slow
def test_training_reduces_the_loss():
    # A tiny budget on a small fixed training set: the optimisation itself must work (the loss falls).
    # Generalising to unseen canvases takes far longer (see the closing note of issue 4).
    spec = get_reference("fastvit_t8").spec
    cfg = TrainProxyConfig(width_mult=0.25, max_depth=1, resolution=48, steps=60, batch_size=32, val_every=30,
                           train_size=128, val_size=64, digit_px=16, data="digits")
    result = train_proxy(spec, cfg)
    assert result.train_loss < 0.8 * result.first_train_loss, (result.first_train_loss, result.train_loss)
    assert result.history[-1]["step"] == 60 and len(result.history) >= 2
    assert result.config["steps"] == 60 and math.isfinite(result.val_loss)
    # The training-speed estimator is the sum of every step's training loss.
    assert result.first_train_loss <= result.loss_sum < 60 * result.first_train_loss * 1.5


def test_image_folder_data(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("cats", "dogs"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / split / label / f"{i}.png")
    cfg = TrainProxyConfig(width_mult=0.125, max_depth=1, resolution=32, steps=4, batch_size=4, val_every=4,
                           data=str(tmp_path))
    result = train_proxy(get_reference("fastvit_t8").spec, cfg)
    assert 0.0 <= result.val_top1 <= 1.0
    with pytest.raises(ConfigError, match="not a directory"):
        train_proxy(get_reference("fastvit_t8").spec, TrainProxyConfig(data=str(tmp_path / "nope"), steps=1))


def _rung_cfg(steps: int = 8) -> TrainProxyConfig:
    return TrainProxyConfig(data="digits", width_mult=0.125, max_depth=1, resolution=32, steps=steps, batch_size=16,
                            train_size=128, val_size=64)


def test_a_rung_run_stops_where_it_is_told_without_a_full_validation():
    from archsearch.proxy.train import RungHook

    seen = []

    def stop_at_1(i, signals):
        seen.append((i, signals))
        return i < 1

    r = train_proxy(get_reference("fastvit_t8").spec, _rung_cfg(), rungs=RungHook([2, 4, 8], stop_at_1, val_subset=16))
    assert [i for i, _ in seen] == [0, 1] and r.stopped_at == 1 and len(r.boundaries) == 2
    assert [s["step"] for _, s in seen] == [2.0, 4.0] and seen[1][1]["val_images"] == 16
    assert r.val_top1 == seen[1][1]["val_top1"] and r.loss_sum == seen[1][1]["loss_sum"]
    assert r.history == [], "a stopped run never validated on the full set"


def test_a_crashed_rung_run_resumes_from_its_last_boundary(tmp_path):
    from archsearch.proxy.train import RungHook

    ckpt, seen = tmp_path / "run.ckpt", []

    def crash_at_1(i, signals):
        seen.append(signals)
        if i == 1:
            raise RuntimeError("the worker died")
        return True

    spec = get_reference("fastvit_t8").spec
    with pytest.raises(RuntimeError):
        train_proxy(spec, _rung_cfg(), rungs=RungHook([2, 4, 8], crash_at_1, val_subset=16, checkpoint=ckpt))
    assert ckpt.exists(), "the checkpoint of boundary 1 was written before its decision"
    replayed = []
    r = train_proxy(spec, _rung_cfg(), rungs=RungHook([2, 4, 8], lambda i, s: replayed.append(s) or True, 16, ckpt))
    def signals(xs):  # boundary_s: what the boundary took in that run (the checkpoint holds it without)
        return [{k: v for k, v in x.items() if k != "boundary_s"} for x in xs]

    assert signals(replayed) == signals(seen), "the boundaries passed before the crash are decided again, from the checkpoint"
    assert r.stopped_at is None and r.history[-1]["step"] == 8 and len(r.boundaries) == 2
