"""Process setup that must happen before `paddle` is imported.

Kept free of paddle imports (and so is `paddle_qwen2/__init__.py` up to the point it imports modeling), so a
script can do `from paddle_qwen2.runtime import configure_cpu_threads; configure_cpu_threads()` as its first
line. The variables only take effect if set before paddle (and its MKL / OpenMP runtime) loads.
"""

from __future__ import annotations

import os
import sys

__all__ = ["configure_cpu_threads"]


def configure_cpu_threads(num_threads: int | None = None) -> dict[str, str]:
    """Set `OMP_NUM_THREADS` (default: all usable cores, at least 1) and `MKL_DEBUG_CPU_TYPE=5` (lets MKL use
    its AVX2 kernels on AMD CPUs), keeping any value already in the environment. Returns the values in effect.

    Warns on stderr if it sets a variable after paddle was imported, since the setting then comes too late.
    """
    if num_threads is None:
        try:
            num_threads = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            num_threads = os.cpu_count() or 1
    missing = [key for key in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE") if key not in os.environ]
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, int(num_threads))))
    os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    if missing and "paddle" in sys.modules:
        print(
            "paddle_qwen2.runtime: paddle was imported before configure_cpu_threads(); thread settings may not apply",
            file=sys.stderr,
        )
    return {key: os.environ[key] for key in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
