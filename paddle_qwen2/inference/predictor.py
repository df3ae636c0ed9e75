"""Export folders and their Paddle Inference predictors.

`resolve_export(path, task)` gives an export folder for `path`: `path` itself when it is one (of that task), else a
folder in the export cache (`$PADDLE_QWEN2_CACHE`, default `~/.cache/paddle_qwen2/exports`), exported on first use
and found again by the checkpoint's path, file sizes and times, the task, the Paddle version and paddle_qwen2's source.

`Predictor` runs an export folder with `paddle.inference` on CPU (oneDNN as the folder's `export_meta.json`
runs it correctly, unless told) or on the GPU when Paddle has one; each thread that calls it gets its own
`predictor.clone()` (clones share the weights). A folder exported with `--weights bfloat16` holds float32 weights
and runs on the CPU with oneDNN and its bf16 passes (`enable_onednn_bfloat16`), which convert the weights and run
the matmuls in bf16 when the predictor loads; where that cannot run fast (`runtime.bfloat16_missing`: no
avx512_bf16 / amx_bf16) or oneDNN cannot run the program (Paddle 2.6), the predictor is refused (ExportError).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import hashlib
import json
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from ..export import META_FILE, ExportError, export_model, read_meta

__all__ = ["Predictor", "resolve_export", "export_cache_dir"]


def export_cache_dir() -> Path:
    """Where checkpoints exported on the fly go: `$PADDLE_QWEN2_CACHE` or `~/.cache/paddle_qwen2/exports`."""
    root = os.environ.get("PADDLE_QWEN2_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "paddle_qwen2" / "exports"


def _fingerprint(folder: Path, task: str) -> str:
    """A key that changes when any file of `folder` (and its sentence-transformers submodules) changes, or the
    Paddle version, or the source of paddle_qwen2 (which traces the program: an edited checkout is not a stale
    export's version bump)."""
    import paddle

    from .. import __version__

    digest = hashlib.sha256(f"{folder.resolve()}|{task}|{paddle.__version__}|{__version__}".encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"|{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    package = Path(__file__).resolve().parent.parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def resolve_export(
    path: str | os.PathLike,
    task: str,
    cache_dir: str | os.PathLike | None = None,
    weights: str | None = None,
    format: str | None = None,
) -> Path:
    """An export folder of `task` for `path` (an export folder, or a checkpoint exported into the cache) whose
    weights are `weights` (None: an export folder's own, float32 for a checkpoint), in `format` (None: any export
    folder's; for a checkpoint the first format that holds the weights, `export.WEIGHT_FORMATS`: `--format onnx`
    for int8 / int4, `--format paddle` for float32 and bfloat16)."""
    from ..export.meta import WEIGHT_FORMATS, check_weights

    path = Path(path)
    if (path / META_FILE).is_file():
        meta = read_meta(path)
        own = meta.get("weights", "float32")
        if meta.get("task") != task:
            raise ExportError(
                f"{path}: an export of task {meta.get('task')!r} ({meta.get('format')}); this needs "
                f"task {task!r} (paddle-qwen2 export --task {task})"
            )
        if weights is not None and weights != own:
            raise ExportError(
                f"{path}: an export with {own} weights, not {weights} (paddle-qwen2 export --weights {weights})"
            )
        if format is not None and meta.get("format", "paddle") != format:
            raise ExportError(f"{path}: a --format {meta.get('format', 'paddle')} export; this needs --format {format}")
        return path
    if not path.is_dir():
        raise ExportError(f"{path}: no such model folder")
    weights = weights or "float32"
    default = WEIGHT_FORMATS.get(weights, ("paddle",))[0]
    format = format or default
    check_weights(weights, format, "float32")
    key = "-".join([task] + [weights] * (weights != "float32") + [format] * (format != default))
    out = Path(cache_dir or export_cache_dir()) / f"{path.name}-{key}-{_fingerprint(path, key)}"
    if not (out / META_FILE).is_file():
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise ExportError(f"{path}: not a Qwen2 model (no config.json)")
        runtime = "onnxruntime" if format == "onnx" else "Paddle Inference"
        print(f"paddle_qwen2: exporting {path} ({task}, {weights} weights) for {runtime} into {out}", file=sys.stderr)
        export_model(path, out, task, format=format, force=True, weights=weights)
    return out


@contextlib.contextmanager
def _stdout_silenced():
    """File descriptor 1 to /dev/null: Paddle's oneDNN kernels print "ReduceMeanCheckIfOneDNNSupport" on stdout when
    they first see a shape, which would end up in `paddle-qwen2 generate`'s answer."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        ctypes.CDLL(None).fflush(None)  # what C++ wrote, before fd 1 is restored
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _mkl_local_threads():
    """`mkl_set_num_threads_local` of the MKL that paddle bundles (None when there is none): the MKL thread count
    of the calling thread alone, which takes precedence over the count a predictor sets for the process."""
    import paddle

    path = Path(paddle.__file__).parent / "libs" / "libmklml_intel.so"
    try:
        function = ctypes.CDLL(str(path)).MKL_Set_Num_Threads_Local
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return function


def _check_bfloat16(folder: Path, settings: dict, onednn: bool | None) -> bool:
    """`onednn` for a bfloat16 export (True), or ExportError saying why this process cannot run it fast."""
    import paddle

    from ..runtime import bfloat16_missing

    if not settings.get("onednn", False):
        raise ExportError(
            f"{folder}: bfloat16 weights run on Paddle Inference's oneDNN bf16 passes, and oneDNN does not run these "
            f"programs on Paddle {paddle.__version__}; use float32 weights (export --weights float32) or Paddle 3"
        )
    if onednn is False:
        raise ExportError(f"{folder}: bfloat16 weights run on oneDNN; onednn=False cannot run them")
    missing = bfloat16_missing()
    if missing is not None:
        raise ExportError(f"{folder}: bfloat16 weights: {missing}; use float32 weights (--weights float32)")
    return True


def _one_masked_position(inputs: Sequence, past_axis: int) -> list:
    """Decode program inputs `(input_ids, attention_mask, *cache)` with an empty cache -> the same with a cache of
    one zero position, masked out in front of `attention_mask` (positions count only unmasked tokens)."""
    import paddle

    ids, mask, cache = inputs[0], inputs[1], inputs[2:]
    shape = list(cache[0].shape)
    shape[past_axis] = 1
    zeros = paddle.zeros(shape, dtype=cache[0].dtype)
    masked = paddle.concat([paddle.zeros([mask.shape[0], 1], dtype=mask.dtype), mask], axis=1)
    return [ids, masked, *(zeros for _ in cache)]


def _drop_first(x, axis: int):
    """`x` without its first position along `axis`."""
    import paddle

    return paddle.slice(x, axes=[axis], starts=[1], ends=[int(x.shape[axis])])


# oneDNN passes a bf16 program runs without: `fc_onednn_enable_pass` turns the projections into oneDNN `fc` ops, whose
# bf16 kernel takes several times the time of the bf16 `matmul` ops it replaces, and `self_attention_fuse_pass` adds
# to that (benchmarks/bf16_probe.py: a Qwen2.5-0.5B decode step and prefill with and without them)
BF16_DELETED_PASSES = ("fc_onednn_enable_pass", "self_attention_fuse_pass")


def _set_onednn(config, onednn: bool, bfloat16: bool) -> None:
    """oneDNN on or off in `config` (the `onednn` API names where Paddle has them, else `mkldnn`), with its bf16
    passes when `bfloat16` (without `BF16_DELETED_PASSES`)."""

    def call(name: str) -> None:
        method = getattr(config, name.replace("mkldnn", "onednn"), None) or getattr(config, name)
        method()

    call("enable_mkldnn" if onednn else "disable_mkldnn")
    if bfloat16:
        call("enable_mkldnn_bfloat16")
        for name in BF16_DELETED_PASSES:
            config.delete_pass(name)


class Predictor:
    """A Paddle Inference predictor of an export folder; `run(tensors) -> tensors` in the program's input and
    output order, on a clone of the predictor per calling thread."""

    def __init__(self, folder: str | os.PathLike, onednn: bool | None = None, threads: int | None = None):
        import paddle
        from paddle import inference

        self.folder = Path(folder)
        self.meta = read_meta(self.folder)
        self.weights = str(self.meta.get("weights", "float32"))
        settings = self.meta.get("paddle_inference", {})
        if self.weights == "bfloat16":
            onednn = _check_bfloat16(self.folder, settings, onednn)
        elif self.weights != "float32":
            raise ExportError(
                f"{self.folder}: an export with {self.weights} weights ({self.meta.get('format')}); Paddle Inference "
                "runs float32 and bfloat16 exports (onnxruntime runs this one: inference.onnx_predictor)"
            )
        if onednn and not settings.get("onednn", False):
            raise ExportError(f"{self.folder}: oneDNN does not run this program on Paddle {paddle.__version__}")
        self.onednn = settings.get("onednn", False) if onednn is None else bool(onednn)
        files = self.meta["files"]
        config = inference.Config(str(self.folder / files["program"]), str(self.folder / files["params"]))
        has_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
        self.device = "gpu" if has_gpu and self.weights == "float32" else "cpu"  # bf16 runs on oneDNN (CPU)
        if self.device == "gpu":
            config.enable_use_gpu(256, 0)
        else:
            config.disable_gpu()
            self.threads = threads or int(os.environ.get("OMP_NUM_THREADS", "1"))
            config.set_cpu_math_library_num_threads(self.threads)
            _set_onednn(config, self.onednn, self.weights == "bfloat16")
        config.disable_glog_info()
        self._main = inference.create_predictor(config)
        self._threads = None if self.device == "gpu" else int(os.environ.get("OMP_NUM_THREADS", "1"))
        self._mkl_local = None if self.device == "gpu" else _mkl_local_threads()
        self._core = paddle.base.core
        self._tensor_api = int(paddle.__version__.split(".")[0]) >= 3
        self._main_thread = threading.get_ident()
        self._local = threading.local()
        self.input_names = self._main.get_input_names()
        decode = self.meta.get("decode") if self.weights == "bfloat16" else None
        self._past_axis = list(decode["cache_layout"]).index("past") if decode else None

    def twin(self) -> Predictor:
        """Another predictor of the same program sharing this one's weights (a `clone()`), with buffers of its
        own: its runs leave this one's outputs alone."""
        other = copy.copy(self)
        other._main = self._main.clone()
        other._local = threading.local()
        return other

    def _predictor(self):
        if threading.get_ident() == self._main_thread:
            return self._main
        if not hasattr(self._local, "predictor"):
            self._local.predictor = self._main.clone()
        return self._local.predictor

    @property
    def can_widen_matmuls(self) -> bool:
        """Whether `run(..., matmul_threads=n)` takes effect (CPU, with paddle's MKL)."""
        return self._mkl_local is not None

    def run(self, inputs: Sequence, matmul_threads: int | None = None) -> list:
        """`paddle.Tensor`s in the program's input order -> its outputs as `paddle.Tensor`s. `matmul_threads`: MKL's
        threads for this run (on CPU), whatever the predictor's own count; its other kernels keep theirs."""
        predictor = self._predictor()
        padded = self._pads_empty_cache(inputs)
        if padded:
            inputs = _one_masked_position(inputs, self._past_axis)
        widen = matmul_threads is not None and self._mkl_local is not None
        previous = self._mkl_local(matmul_threads) if widen else None
        try:
            with _stdout_silenced() if self.onednn else contextlib.nullcontext():
                if self._tensor_api:
                    outputs = predictor.run(list(inputs))
                else:  # Paddle 2.6's run(tensors) crashes on empty tensors (the prefill's cache): copy through numpy
                    outputs = self._run_handles(predictor, inputs)
        finally:
            if widen:
                self._mkl_local(previous)
        if self._threads is not None:
            # a CPU run leaves MKL at one thread: dygraph paddle in this process would then compute (and round)
            # differently, and slower
            self._core.set_num_threads(self._threads)
        if padded:  # the present cache without the masked position
            outputs = [outputs[0], *(_drop_first(x, self._past_axis) for x in outputs[1:])]
        return outputs

    def _pads_empty_cache(self, inputs: Sequence) -> bool:
        """Whether this run is a bf16 decode program's prefill (an empty cache), which oneDNN's bf16 kernels cannot
        run (they raise `std::exception` on the empty tensors): it then runs with one masked cache position in
        front, which no query attends to, and the present cache is returned without it."""
        return self._past_axis is not None and len(inputs) > 2 and int(inputs[2].shape[self._past_axis]) == 0

    def _run_handles(self, predictor, inputs: Sequence) -> list:
        import paddle

        for name, value in zip(self.input_names, inputs):
            predictor.get_input_handle(name).copy_from_cpu(value.numpy())
        predictor.run()
        return [paddle.to_tensor(predictor.get_output_handle(n).copy_to_cpu()) for n in predictor.get_output_names()]

    def describe(self) -> str:
        return json.dumps(
            {"folder": str(self.folder), "device": self.device, "onednn": self.onednn, "weights": self.weights}
        )
