"""Process setup that must happen before `paddle` is imported.

Kept free of paddle imports (and so is `paddle_qwen2/__init__.py` up to the point it imports modeling), so a
script can do `from paddle_qwen2.runtime import configure_cpu_threads; configure_cpu_threads()` as its first
line. The variables only take effect if set before paddle (and its MKL / OpenMP runtime) loads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["bfloat16_missing", "configure_cpu_threads", "cpu_flags", "keep_freed_memory", "mkl_cpu_type"]

# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_kept_freed_memory = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve every allocation from its heap and keep freed memory for reuse (mallopt
    `M_MMAP_MAX=0`, `M_TRIM_THRESHOLD` high). By default each allocation over 32 MB is a fresh `mmap` whose pages
    the kernel zero-fills on first touch, and paddle's CPU allocator asks malloc anew for every tensor: an op on a
    large tensor (such as the attention scores of an encode batch) then costs more in page faults than in
    arithmetic, and reusing the heap avoids them. The costs: memory freed by the process is kept by it, not
    returned to the system, and PyTorch in the same process gets slower, so this is for processes that compute with
    paddle only: the `paddle-qwen2 embed` command calls it. Returns False where there is no glibc."""
    global _kept_freed_memory
    if _kept_freed_memory:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt, Windows)
        return False
    if mallopt is None:
        return False
    _kept_freed_memory = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _kept_freed_memory


# MKL picks its kernels by CPU vendor and runs generic SSE code on AMD CPUs unless MKL_DEBUG_CPU_TYPE names an
# instruction set (the MKL that paddle bundles honours it): 5 = AVX2, 7 = AVX-512 (the Skylake-SP set below).
_AVX2 = ("avx2", "fma")
_AVX512 = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")


def _read_cpuinfo() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _first_cpu(cpuinfo: str) -> dict[str, str]:
    first_cpu = cpuinfo.strip().split("\n\n")[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first_cpu.splitlines())}


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The instruction-set flags of the first CPU in /proc/cpuinfo (`cpuinfo`: its text, read when None); None
    where there is no /proc/cpuinfo (nothing is known)."""
    cpuinfo = _read_cpuinfo() if cpuinfo is None else cpuinfo
    if cpuinfo is None:
        return None
    return set(_first_cpu(cpuinfo).get("flags", "").split())


# CPU features with bf16 dot-product instructions: oneDNN's bf16 matmuls are fast only with one of them (without,
# oneDNN emulates bf16 and runs slower than float32)
BF16_FEATURES = ("avx512_bf16", "amx_bf16")


def bfloat16_missing(cpuinfo: str | None = None, check_paddle: bool = True) -> str | None:
    """Why this machine cannot run bf16 matmuls fast, None when it can: the CPU must list `avx512_bf16` or
    `amx_bf16` in /proc/cpuinfo (`cpuinfo`: its text, read when None; unknown without it), and with
    `check_paddle`, Paddle's oneDNN build must agree (`paddle.base.core.supports_bfloat16_fast_performance()`;
    this imports paddle)."""
    flags = cpu_flags(cpuinfo)
    if flags is not None and not flags.intersection(BF16_FEATURES):
        return (
            "this CPU has neither avx512_bf16 nor amx_bf16 (/proc/cpuinfo flags), which bf16 matmuls need to run fast"
        )
    if check_paddle:
        import paddle

        core = paddle.base.core
        if not (hasattr(core, "supports_bfloat16_fast_performance") and core.supports_bfloat16_fast_performance()):
            return (
                f"Paddle {paddle.__version__} reports no fast bf16 on this CPU "
                "(paddle.base.core.supports_bfloat16_fast_performance() is False: it needs avx512_bf16 or amx_bf16)"
            )
    return None


def mkl_cpu_type(cpuinfo: str | None = None) -> str | None:
    """The `MKL_DEBUG_CPU_TYPE` for this CPU (`cpuinfo`: the text of /proc/cpuinfo, read when None): "7" on AMD
    CPUs with AVX-512 (Zen 4 and later), "5" on AMD CPUs with AVX2 and FMA, None otherwise (Intel CPUs get MKL's
    own dispatch; without /proc/cpuinfo nothing is known). Without it MKL runs its generic SSE kernels on AMD
    CPUs, several times slower for fp32 matmuls."""
    cpuinfo = _read_cpuinfo() if cpuinfo is None else cpuinfo
    if cpuinfo is None:
        return None
    fields = _first_cpu(cpuinfo)
    if fields.get("vendor_id") != "AuthenticAMD":
        return None
    flags = set(fields.get("flags", "").split())
    if flags.issuperset(_AVX512):
        return "7"
    if flags.issuperset(_AVX2):
        return "5"
    return None


def configure_cpu_threads(num_threads: int | None = None) -> dict[str, str]:
    """Set `OMP_NUM_THREADS` (default: all usable cores, at least 1) and `MKL_DEBUG_CPU_TYPE` (see `mkl_cpu_type`:
    lets MKL use its AVX2 / AVX-512 kernels on AMD CPUs; left unset elsewhere), keeping any value already in the
    environment. Returns the values in effect (a variable that stays unset is left out).

    Warns on stderr if it sets a variable after paddle was imported, since the setting then comes too late.
    """
    if num_threads is None:
        try:
            num_threads = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            num_threads = os.cpu_count() or 1
    wanted = {"OMP_NUM_THREADS": str(max(1, int(num_threads))), "MKL_DEBUG_CPU_TYPE": mkl_cpu_type()}
    missing = [key for key, value in wanted.items() if value is not None and key not in os.environ]
    for key in missing:
        os.environ[key] = wanted[key]
    if missing and "paddle" in sys.modules:
        print(
            "paddle_qwen2.runtime: paddle was imported before configure_cpu_threads(); thread settings may not apply",
            file=sys.stderr,
        )
    return {key: os.environ[key] for key in wanted if key in os.environ}
