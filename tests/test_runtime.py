"""paddle_qwen2.runtime: `configure_cpu_threads` and the promise that it can run before paddle loads.

Every case runs in a fresh interpreter whose environment has neither OMP_NUM_THREADS nor MKL_DEBUG_CPU_TYPE (the
Makefile exports both for the test run) unless the case sets them, since the function reads and writes the process
environment and looks at `sys.modules`.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Optional

import pytest

from paddle_qwen2.runtime import bfloat16_missing, cpu_flags, mkl_cpu_type

REPO = Path(__file__).resolve().parents[1]
KEYS = ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")
WARNING = "paddle was imported before configure_cpu_threads()"
CPUS = len(os.sched_getaffinity(0))
MKL = mkl_cpu_type()  # what this machine's CPU gets when MKL_DEBUG_CPU_TYPE is unset ("7" on the CI's AMD EPYC)


def in_effect(environ: dict) -> dict:
    """The variables of `environ` that are set: what configure_cpu_threads returns."""
    return {k: v for k, v in environ.items() if v is not None}


def run_child(body: str, env: Optional[dict[str, str]] = None, timeout: int = 120) -> tuple[dict, str]:
    """Run `body` in a new interpreter with `env` (default: none of KEYS) on top of this process's environment
    minus KEYS. `body` sets `result`; returns (result, stderr)."""
    child_env = {k: v for k, v in os.environ.items() if k not in KEYS}
    child_env.update(env or {})
    code = "import json, os, sys\n" + textwrap.dedent(body) + "\nprint(json.dumps(result))\n"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=child_env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


CALL = """
from paddle_qwen2.runtime import configure_cpu_threads
returned = configure_cpu_threads({arg})
result = {{"returned": returned, "environ": {{k: os.environ.get(k) for k in {keys}}},
          "cpus": len(os.sched_getaffinity(0)), "paddle_loaded": "paddle" in sys.modules}}
"""


def call(arg: str = "", env: Optional[dict[str, str]] = None, before: str = "") -> tuple[dict, str]:
    """`configure_cpu_threads(<arg>)` in a child, after the statements `before`."""
    return run_child(before + CALL.format(arg=arg, keys=KEYS), env)


# ------------------------------------------------------------------------------------------------ defaults


@pytest.mark.parametrize(
    "affinity",
    [
        pytest.param("", id="all-usable-cpus"),
        pytest.param("os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n", id="pinned-to-one-cpu"),
    ],
)
def test_unset_variables_get_usable_cpu_count_and_the_cpus_mkl_type(affinity):
    result, stderr = call(before=affinity)
    expected = {"OMP_NUM_THREADS": str(result["cpus"]), "MKL_DEBUG_CPU_TYPE": MKL}
    assert result["environ"] == expected
    assert result["returned"] == in_effect(expected)
    if affinity:
        assert result["cpus"] == 1
    else:
        assert result["cpus"] == CPUS
    assert WARNING not in stderr  # called before paddle: no warning
    assert not result["paddle_loaded"]


# ------------------------------------------------------------------------------------------------ mkl type

ZEN5_FLAGS = "fpu sse2 avx fma avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16"
# (/proc/cpuinfo text, MKL_DEBUG_CPU_TYPE wanted): only the first processor's block counts
CPUINFO = [
    (f"vendor_id\t: AuthenticAMD\nflags\t\t: {ZEN5_FLAGS}\n\nprocessor\t: 1\n", "7"),
    ("vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx fma avx2\n", "5"),  # Zen 2 / 3: AVX2 only
    ("vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 avx512f\n", None),  # no FMA, partial AVX-512
    ("vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx\n", None),
    (f"vendor_id\t: GenuineIntel\nflags\t\t: {ZEN5_FLAGS}\n", None),  # MKL dispatches by itself on Intel
    ("processor\t: 0\nflags\t\t: avx2 fma\n", None),  # no vendor line (e.g. ARM)
    ("", None),
]


@pytest.mark.parametrize("cpuinfo, wanted", CPUINFO)
def test_mkl_cpu_type_follows_the_vendor_and_instruction_sets(cpuinfo, wanted):
    assert mkl_cpu_type(cpuinfo) == wanted


# ------------------------------------------------------------------------------------------------ bf16 probe

# (/proc/cpuinfo text, what bfloat16_missing says without asking paddle): None = bf16 runs fast
BF16_CPUINFO = [
    (f"vendor_id\t: AuthenticAMD\nflags\t\t: {ZEN5_FLAGS}\n\nprocessor\t: 1\nflags\t\t: fpu\n", None),
    ("vendor_id\t: GenuineIntel\nflags\t\t: avx512f avx512bw amx_tile amx_bf16\n", None),  # AMX only
    ("vendor_id\t: GenuineIntel\nflags\t\t: avx2 avx512f avx512_vnni\n", "neither avx512_bf16 nor amx_bf16"),
    ("flags\t\t: fpu\n\nprocessor\t: 1\nflags\t\t: avx512_bf16\n", "neither avx512_bf16 nor amx_bf16"),
    ("processor\t: 0\n", "neither avx512_bf16 nor amx_bf16"),  # no flags line
]


@pytest.mark.parametrize("cpuinfo, wanted", BF16_CPUINFO)
def test_bfloat16_missing_names_the_cpu_feature(cpuinfo, wanted):
    got = bfloat16_missing(cpuinfo, check_paddle=False)
    assert got is None if wanted is None else wanted in got, got


def test_bfloat16_probe_agrees_with_paddle():
    """On this machine: the probe says bf16 runs fast exactly when the CPU lists the feature and Paddle agrees."""
    import paddle

    fast = paddle.base.core.supports_bfloat16_fast_performance()
    flags = cpu_flags()
    has_feature = flags is None or bool(flags & {"avx512_bf16", "amx_bf16"})
    got = bfloat16_missing()
    assert (got is None) == (has_feature and fast), got
    if not has_feature:
        assert "neither avx512_bf16 nor amx_bf16" in got


# ------------------------------------------------------------------------------------------------ precedence

# (preset environment, argument, expected OMP_NUM_THREADS, expected MKL_DEBUG_CPU_TYPE); None = the CPU count
PRECEDENCE = [
    ({"OMP_NUM_THREADS": "3"}, "", "3", MKL),
    ({"MKL_DEBUG_CPU_TYPE": "4"}, "", None, "4"),
    ({"OMP_NUM_THREADS": "1", "MKL_DEBUG_CPU_TYPE": "2"}, "", "1", "2"),
    ({"OMP_NUM_THREADS": "3"}, "7", "3", MKL),  # a value already set beats the argument
    ({"OMP_NUM_THREADS": "not-a-number"}, "", "not-a-number", MKL),  # kept as given, not validated
    ({"MKL_DEBUG_CPU_TYPE": ""}, "", None, ""),  # set to empty counts as set
    ({}, "7", "7", MKL),  # the argument wins over the CPU count when unset
    ({}, "1", "1", MKL),
    ({}, "64", "64", MKL),  # more threads than CPUs is the caller's choice
    ({}, "num_threads=3", "3", MKL),
    ({}, "None", None, MKL),
]


@pytest.mark.parametrize("env, arg, omp, mkl", PRECEDENCE)
def test_existing_values_are_kept_and_the_argument_wins_when_unset(env, arg, omp, mkl):
    result, stderr = call(arg, env)
    expected = {"OMP_NUM_THREADS": omp if omp is not None else str(result["cpus"]), "MKL_DEBUG_CPU_TYPE": mkl}
    assert result["environ"] == expected
    assert result["returned"] == in_effect(expected)
    assert WARNING not in stderr


# (argument, OMP_NUM_THREADS it sets): coerced with int() and clamped to at least 1
COERCED = [("0", "1"), ("-4", "1"), ("2.7", "2"), ("'3'", "3"), ("True", "1")]


@pytest.mark.parametrize("arg, omp", COERCED)
def test_num_threads_is_coerced_to_a_positive_int(arg, omp):
    result, _ = call(arg)
    assert result["environ"]["OMP_NUM_THREADS"] == result["returned"]["OMP_NUM_THREADS"] == omp


@pytest.mark.parametrize("arg, error", [("'many'", "ValueError"), ("[2]", "TypeError"), ("object()", "TypeError")])
def test_bad_num_threads_raises_and_leaves_threads_unset(arg, error):
    body = f"""
    from paddle_qwen2.runtime import configure_cpu_threads
    try:
        configure_cpu_threads({arg})
        raised = None
    except Exception as exc:
        raised = type(exc).__name__
    result = {{"raised": raised, "omp": os.environ.get("OMP_NUM_THREADS")}}
    """
    result, _ = run_child(body)
    assert result == {"raised": error, "omp": None}


# ------------------------------------------------------------------------------------------------ paddle order


@pytest.mark.parametrize(
    "env, warns",
    [
        # `import paddle` sets OMP_NUM_THREADS=1 itself, so only MKL_DEBUG_CPU_TYPE can come too late
        pytest.param({}, MKL is not None, id="unset-warns"),
        pytest.param({"OMP_NUM_THREADS": "2", "MKL_DEBUG_CPU_TYPE": "5"}, False, id="all-set-nothing-to-do"),
    ],
)
def test_warns_on_stderr_only_when_it_sets_something_after_paddle(env, warns):
    # zlib first: paddle 2.6 ships its own zlib symbols (paddle_qwen2 does the same in its __init__)
    result, stderr = call(env=env, before="import zlib\nimport paddle\n")
    assert result["paddle_loaded"]
    assert (WARNING in stderr) is warns, stderr
    assert result["environ"]["MKL_DEBUG_CPU_TYPE"] == env.get("MKL_DEBUG_CPU_TYPE", MKL)


@pytest.mark.parametrize(
    "statement",
    [
        "import paddle_qwen2.runtime",
        "import paddle_qwen2",
        "from paddle_qwen2 import runtime",
        "from paddle_qwen2.runtime import configure_cpu_threads; configure_cpu_threads()",
    ],
)
def test_importing_the_package_and_runtime_does_not_load_paddle(statement):
    result, stderr = run_child(f"{statement}\nresult = sorted(m for m in sys.modules if m.split('.')[0] == 'paddle')")
    assert result == [], result
    assert WARNING not in stderr


HEAP_CHECK = """
from paddle_qwen2.runtime import configure_cpu_threads, keep_freed_memory
configure_cpu_threads()
{call}
import numpy as np
block = np.ones(100 * 2**20, np.uint8)  # over glibc's mmap threshold: an mmap of its own unless it is switched off
address = block.ctypes.data
heap = [line.split()[0].split("-") for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
result = {{"in_heap": any(int(lo, 16) <= address < int(hi, 16) for lo, hi in heap)}}
"""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("call, in_heap", [("keep_freed_memory()", True), ("", False)])
def test_large_allocations_come_from_the_reusable_heap(call, in_heap):
    """keep_freed_memory() switches glibc's per-allocation mmap off, so a 100 MB block is served from the heap,
    whose freed memory is reused without fresh page faults; configure_cpu_threads() alone leaves malloc as it is."""
    result, _ = run_child(HEAP_CHECK.format(call=call))
    assert result["in_heap"] is in_heap
