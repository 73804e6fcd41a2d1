"""Keep freed heap memory mapped while timing, so a forward does not pay page faults.

glibc gives memory freed at the top of its heap back to the kernel once more than 128 KiB is free,
and serves big blocks with fresh ``mmap``s; a CNN frees its activations every forward, so the next
forward faults them in again. Measured here (FastViT-SA12, 256 px, 1 thread): 2,000-6,000 minor
faults per forward, which cost ~25% of its latency (146 ms -> 110 ms with the heap retained), and
fresh processes disagreed by up to 1.36x in their medians (1.03-1.12x with it retained), as the
price of a fault depends on what the host is doing. Deployed runtimes keep an arena (PyTorch's CPU
tuning guide recommends jemalloc or tcmalloc for that reason), so while timing we tell glibc to keep
what it frees. Elsewhere (macOS, musl) this is a no-op, and the conditions say so.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
from typing import Iterator, Optional

__all__ = ["heap_mode", "retained_heap"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: glibc's documented defaults, restored on exit (their dynamic adjustment stays off afterwards).
_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
_RETAIN = {_M_TRIM_THRESHOLD: 1 << 30, _M_MMAP_MAX: 0}

_depth = 0


@functools.lru_cache(maxsize=None)
def _glibc() -> Optional[ctypes.CDLL]:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def _set(libc: ctypes.CDLL, values: dict) -> None:
    for option, value in values.items():
        libc.mallopt(option, value)


def heap_mode(enabled: bool) -> str:
    """What a measurement's conditions record: ``"retained"`` where :func:`retained_heap` applies."""
    return "retained" if enabled and _glibc() is not None else "default"


@contextlib.contextmanager
def retained_heap(enabled: bool = True) -> Iterator[None]:
    """Within the block glibc neither trims its heap nor mmaps big blocks (re-entrant)."""
    global _depth
    libc = _glibc() if enabled else None
    if libc is None or _depth > 0:  # nothing to do, or an enclosing block already retains it
        yield
        return
    _set(libc, _RETAIN)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        _set(libc, _DEFAULTS)
