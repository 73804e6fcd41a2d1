"""Which machine a measurement was taken on: the part of every latency's cache key and conditions."""
from __future__ import annotations

import hashlib
import json
import os
import platform
from typing import Dict

import torch

from .._host import cpu_model

__all__ = ["device_info", "device_fingerprint"]


def device_info(device: str = "cpu") -> Dict[str, object]:
    """Plain facts about ``device`` (``cpu`` or ``cuda[:i]``) and the software that drives it."""
    info: Dict[str, object] = {"torch": torch.__version__.split("+")[0], "machine": platform.machine()}
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        info.update(kind="cuda", name=torch.cuda.get_device_name(index), cuda=torch.version.cuda)
    else:
        info.update(kind="cpu", name=cpu_model(), logical_cpus=os.cpu_count())
    return info


def device_fingerprint(device: str = "cpu") -> str:
    """Short stable id of the device and software stack, e.g. ``cpu-3f2a9c1d``."""
    info = device_info(device)
    digest = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:8]
    return f"{info['kind']}-{digest}"
