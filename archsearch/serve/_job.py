"""One timing job, run by the device server in a child process with a wall-clock and memory limit.

``python -m archsearch.serve._job`` reads ``{"paths": [...], "protocol": {...}}`` on standard input and
writes one JSON object on standard output: ``{"times_ms": [[...]], "ratios": [...]}`` or
``{"error": "one line", "status": 422}``. A model is checked before ONNX Runtime sees it: it must parse
as ONNX, keep every tensor inside the file (external data could name any file on the device), and take
one float input. No torch here.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Dict, List

from .. import _timing

_FLOAT = 1  # onnx.TensorProto.FLOAT


def _check_model(i: int, path: str) -> None:
    import onnx
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    try:
        model = onnx.load_model(path, load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        why = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        raise ValueError(f"models[{i}]: not an ONNX model ({why})") from None
    if model.ir_version <= 0 or not model.graph.node:
        raise ValueError(f"models[{i}]: not an ONNX model (no graph)")
    if any(uses_external_data(t) for t in _get_all_tensors(model)):
        raise ValueError(f"models[{i}]: references external data files; only self-contained models are timed")
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"models[{i}]: must take exactly one input, takes {len(inputs)}")
    if inputs[0].type.tensor_type.elem_type != _FLOAT:
        raise ValueError(f"models[{i}]: its input must be float32")


def run(paths: List[str], protocol: Dict[str, Any]) -> Dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    if protocol["provider"] not in ort.get_available_providers():
        raise ValueError(f"provider: {protocol['provider']} is not available here ({', '.join(ort.get_available_providers())})")
    forwards = []
    for i, (path, shape) in enumerate(zip(paths, protocol["shapes"])):
        _check_model(i, path)
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        with open(path, "rb") as f:
            onnx_bytes = f.read()
        try:
            forward = _timing.ort_forward(onnx_bytes, x, threads=protocol["threads"], provider=protocol["provider"])
            forward.run()  # a wrong shape fails here, as one line, not in the middle of the timing
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own exception types for any model it rejects
            why = str(e).splitlines()[0][:120]
            raise ValueError(f"models[{i}]: ONNX Runtime cannot run it on shape {list(shape)}: {why}") from None
        forwards.append(forward)
    warmup, repeats, budget = protocol["warmup"], protocol["repeats"], protocol["time_budget_s"]
    if protocol["mode"] == "interleave":
        ta, tb, ratios = _timing.interleave(forwards[0], forwards[1], warmup, repeats, budget, max_burst=protocol["max_burst"])
        return {"times_ms": [ta, tb], "ratios": ratios}
    return {"times_ms": _timing.round_robin(forwards, warmup, repeats, budget)}


def _limit(limits: Dict[str, Any]) -> None:
    """The memory limit (address space) and a last-resort alarm, set by the child on itself before any
    model is read: the server's own wall-clock limit kills it first."""
    import math
    import resource
    import signal

    memory = int(limits["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    signal.alarm(int(math.ceil(float(limits["timeout_s"]))) + 5)


def main() -> int:
    request = json.loads(sys.stdin.read())
    _limit(request["limits"])
    try:
        answer = run(request["paths"], request["protocol"])
    except MemoryError:
        answer = {"error": "the run exceeded this server's memory limit", "status": 422}
    except ValueError as e:
        answer = {"error": str(e), "status": 422}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
