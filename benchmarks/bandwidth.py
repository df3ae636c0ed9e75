"""The machine's memory read bandwidth, for the decode limit of bench_inference.py.

A decode step of one stream reads every weight once, so its speed is bounded by the bytes it reads over the rate
the machine can read memory. That rate is measured here as read-only passes over a large float32 array (larger
than any cache; its pages touched beforehand), by two kernels: `numpy` (`np.maximum.reduce` over one contiguous
slice per thread, the slices run at the same time on Python threads; numpy releases the GIL inside the reduction)
and `torch` (`torch.sum` with torch's intra-op thread count set to the threads; when torch is importable).
Reported for one thread and for the engine's thread count; the figure is the best pass of either kernel (a
ceiling: a busy machine only makes passes slower, and the faster kernel is the closer to what memory delivers).

A copy (`np.copyto`) is not a measure of this: it reads and writes each byte, on one thread.

    python benchmarks/bandwidth.py               # one-thread and all-core read GB/s of a 1 GiB array, as JSON
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import threading
import time

import numpy as np

GIB = 1 << 30


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


class ReadProbe:
    """A float32 array of `nbytes` (pages touched) and timed read passes over it split across threads."""

    def __init__(self, nbytes: int = GIB, kernels: tuple[str, ...] | None = None) -> None:
        if nbytes < 4:
            raise ValueError(f"read probe: nbytes must be >= 4 (one float32), got {nbytes}")
        self.kernels = kernels or (("numpy", "torch") if torch_available() else ("numpy",))
        unknown = set(self.kernels) - set(KERNELS)
        if unknown:
            raise ValueError(f"read probe: unknown kernel(s) {sorted(unknown)}; known: {list(KERNELS)}")
        self.array = np.ones(nbytes // 4, dtype=np.float32)
        self.nbytes = self.array.nbytes

    def pass_seconds(self, threads: int, kernel: str = "numpy") -> float:
        """Wall seconds of one read of the whole array by `threads` threads with `kernel`."""
        if threads < 1:
            raise ValueError(f"read probe: threads must be >= 1, got {threads}")
        return KERNELS[kernel](self.array, threads)

    def gb_per_s(self, threads: int, repeats: int = 5, kernel: str = "numpy") -> list[float]:
        """GB/s (1e9 bytes) of `repeats` read passes by `threads` threads with `kernel`, after one untimed pass."""
        self.pass_seconds(threads, kernel)
        return [self.nbytes / self.pass_seconds(threads, kernel) / 1e9 for _ in range(repeats)]


def numpy_pass(array: np.ndarray, threads: int) -> float:
    """Seconds of `np.maximum.reduce` over `threads` contiguous slices of `array`, one Python thread each."""
    bounds = np.linspace(0, len(array), threads + 1).astype(int)
    workers = [threading.Thread(target=np.maximum.reduce, args=(array[a:b],)) for a, b in zip(bounds, bounds[1:])]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - start


def torch_pass(array: np.ndarray, threads: int) -> float:
    """Seconds of `torch.sum` of `array` (shared memory, no copy) on `threads` intra-op threads; torch's thread
    count is restored afterwards."""
    import torch

    tensor, saved = torch.from_numpy(array), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        tensor.sum()
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(saved)


KERNELS = {"numpy": numpy_pass, "torch": torch_pass}


def summary(runs: list[float]) -> dict:
    """Best (the figure used), median, worst and every run's GB/s."""
    return {"best": max(runs), "median": statistics.median(runs), "min": min(runs), "runs": runs}


def read_bandwidth(threads: int, nbytes: int = GIB, repeats: int = 5, probe: ReadProbe | None = None) -> dict:
    """Read GB/s of one thread and of `threads` threads over `nbytes` (or `probe`'s array), each of the probe's
    kernels, alternated `repeats` times: {"bytes", "threads", "kernels", "one_thread": summary, "all_threads":
    summary, "by_kernel": {kernel: {"one_thread": best GB/s, "all_threads": best GB/s}}}."""
    probe = probe or ReadProbe(nbytes)
    runs = {(kernel, n): [] for kernel in probe.kernels for n in (1, threads)}
    for _ in range(repeats):
        for kernel, n in runs:
            runs[kernel, n] += probe.gb_per_s(n, 1, kernel)
    one = [gb for (_, n), values in runs.items() if n == 1 for gb in values]
    many = [gb for (_, n), values in runs.items() if n == threads for gb in values]
    by_kernel = {k: {"one_thread": max(runs[k, 1]), "all_threads": max(runs[k, threads])} for k in probe.kernels}
    return {
        "bytes": probe.nbytes,
        "threads": threads,
        "kernels": list(probe.kernels),
        "one_thread": summary(one),
        "all_threads": summary(many),
        "by_kernel": by_kernel,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="default: every usable core")
    p.add_argument("--mib", type=int, default=1024, help="array size in MiB (default 1024)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    print(json.dumps(read_bandwidth(args.threads, args.mib << 20, args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
