"""A deploy model as ONNX bytes: what the onnxruntime backend times here and the remote backend sends."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["export_onnx"]


def export_onnx(model: nn.Module, x: torch.Tensor) -> bytes:
    """The ONNX bytes of ``model`` on input ``x`` (input ``x``, output ``y``, weights inside the file)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        # The TorchScript exporter: the default (dynamo) one needs onnxscript, which we do not ship.
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
        return path.read_bytes()
