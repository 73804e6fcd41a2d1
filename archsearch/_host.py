"""Plain facts about the machine this process runs on, without torch (the device server has none)."""
from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Optional

__all__ = ["cpu_model", "governor", "power_mode"]


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _first_line(path: str) -> Optional[str]:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[0].strip()[:64] or None
    except (OSError, IndexError):
        return None


def governor() -> Optional[str]:
    """The CPU frequency governor (``performance``, ``powersave``...) where Linux shows it."""
    return _first_line("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")


def power_mode() -> Optional[str]:
    """The platform power profile (``balanced``, ``performance``...) where the firmware shows it."""
    return _first_line("/sys/firmware/acpi/platform_profile")
