"""The writer of paddle_qwen2.conversion (conversion/writer.py) and the casts it uses (conversion/dtypes.py):
casts bit-identical to torch, the C transpose kernel and its numpy fallback, output bytes independent of chunking,
threads and kernel, and no numpy import on the plain safetensors path."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from paddle_qwen2.conversion import cast_array, convert_checkpoint, writer
from paddle_qwen2.conversion import loading as source_loading

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------- casts


@pytest.mark.parametrize(
    "src,dst", [("F32", "BF16"), ("F32", "F16"), ("BF16", "F32"), ("BF16", "F16"), ("F16", "BF16")]
)
def test_cast_matches_torch_bit_for_bit(src, dst):
    codes = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
    rng = np.random.RandomState(0)
    values = np.concatenate(
        [
            rng.standard_normal(4000) * np.exp(rng.uniform(-30, 30, 4000)),
            [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, 3.4e38, 65504.0, 65520.0, 1.00390625, 1.01171875, 6e-8],
        ]
    ).astype(np.float32)
    source = torch.from_numpy(values).to(codes[src])
    as_numpy = source.view(torch.int16).numpy().view(np.uint16) if src == "BF16" else source.numpy()
    ours = cast_array(as_numpy, src, dst)
    theirs = source.to(codes[dst])
    theirs = theirs.view(torch.int16).numpy().view(np.uint16) if dst == "BF16" else theirs.numpy()
    assert ours.dtype == theirs.dtype
    finite = ~np.isnan(values)  # NaN stays NaN; torch's NaN bit pattern depends on its CPU kernel
    assert np.array_equal(ours[finite], theirs[finite])
    as_float = (lambda x: cast_array(x, "BF16", "F32")) if dst == "BF16" else (lambda x: x)
    assert np.isnan(as_float(ours[~finite])).all() and np.isnan(as_float(theirs[~finite])).all()


# ---------------------------------------------------------------------------------------------------- transposes


@pytest.mark.parametrize("kernel", ["simd", "numpy"])
def test_chunked_transpose_is_exact(monkeypatch, kernel):
    """The chunked transpose that loading uses (C kernel, or numpy's blocked path), plain and fused with the
    bfloat16 -> float32 cast (one C pass, or transpose then numpy's shift), on shapes that are and are not
    multiples of the blocks."""
    if kernel == "numpy":
        monkeypatch.setattr(writer, "_simd_transpose", None)
    monkeypatch.setattr(writer, "_CHUNK_BYTES", 4096)  # several chunks per tensor
    monkeypatch.setattr(source_loading, "_CHUNK_BYTES", 4096)
    for shape in [(256, 128), (192, 640), (64, 64), (100, 37), (128, 96)]:
        for dtype in (np.uint16, np.float32):
            array = np.random.RandomState(1).randint(0, 60000, size=shape).astype(dtype)
            out = np.empty(shape[::-1], dtype)
            code = "F32" if dtype == np.float32 else "BF16"
            source_loading._transpose_into(array, out, code, code)
            assert np.array_equal(out, array.T), (shape, dtype)
        bits = np.random.RandomState(2).randint(0, 60000, size=shape).astype(np.uint16)
        widened = np.empty(shape[::-1], np.float32)
        source_loading._transpose_into(bits, widened, "BF16", "F32")  # the C kernel's fused path, or numpy's
        assert np.array_equal(widened.view(np.uint32), cast_array(bits.T, "BF16", "F32").view(np.uint32)), shape


def test_transpose_kernel_is_built():
    """`make` installs the package with `pip install -e .`, which compiles the SIMD kernel (it is optional for
    installs without a compiler; the numpy path is tested below)."""
    assert writer._simd_transpose is not None
    assert writer._simd_transpose.SIMD == int(os.uname().machine in ("x86_64", "AMD64"))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_transpose_kernel_matches_numpy(dtype):
    kernel = writer._simd_transpose
    rng = np.random.RandomState(0)
    # register-tile multiples, ragged rims on both sides, single rows / columns, more than one cache band
    for rows, cols in [(64, 64), (13, 7), (100, 37), (9, 130), (1, 5), (5, 1), (0, 3), (40, 600), (600, 40)]:
        array = (rng.rand(rows, cols) * 200).astype(dtype)
        for start, stop in [(0, cols), (cols // 3, cols), (cols // 3, cols // 3 + 1), (cols, cols)]:
            out = np.full((stop - start, rows), 7, dtype)
            kernel.transpose_columns(out, array, rows, cols, start, stop, array.itemsize)
            assert np.array_equal(out, array[:, start:stop].T), (dtype, rows, cols, start, stop)


def test_transpose_kernel_refuses_bad_arguments():
    kernel, array = writer._simd_transpose, np.zeros((4, 6), np.uint16)
    out = np.zeros((6, 4), np.uint16)
    for args, message in [
        ((out, array, 4, 6, 0, 7, 2), "start <= stop <= cols"),
        ((out, array, 4, 6, 3, 2, 2), "start <= stop <= cols"),
        ((out, array, 4, 6, 0, 6, 3), "itemsize must be 1, 2, 4 or 8"),
        ((out, array, 5, 6, 0, 6, 2), "src is smaller"),
        ((out[:5], array, 4, 6, 0, 6, 2), "out is smaller"),
    ]:
        with pytest.raises(ValueError, match=message):
            kernel.transpose_columns(*args)
    with pytest.raises(TypeError):  # a read-only output
        kernel.transpose_columns(bytes(48), array, 4, 6, 0, 6, 2)
    widened = np.zeros((6, 4), np.float32)
    for args, message in [
        ((widened, array, 4, 6, 0, 7), "start <= stop <= cols"),
        ((widened, array, 5, 6, 0, 6), "src is smaller"),
        ((widened[:5], array, 4, 6, 0, 6), "out is smaller"),
        ((out, array, 4, 6, 0, 6), "out is smaller"),  # a bfloat16-sized output: half the bytes needed
    ]:
        with pytest.raises(ValueError, match=message):
            kernel.transpose_columns_bf16_to_f32(*args)


# ---------------------------------------------------------------------------------------------------- writing


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_chunks_threads_and_numpy_fallback_write_the_same_bytes(hf_checkpoint, tmp_path, monkeypatch, dtype):
    """The output does not depend on how tensors are cut into pieces, on the C kernel or numpy doing the
    transposes, or on the number of worker threads (pieces of 1000 bytes: every tensor in many pieces)."""
    src = hf_checkpoint("gqa")
    convert_checkpoint(src, tmp_path / "reference", dtype=dtype, progress=False)
    reference = (tmp_path / "reference" / "model.safetensors").read_bytes()
    monkeypatch.setattr(writer, "_CHUNK_BYTES", 1000)
    for kernel, workers in [(writer._simd_transpose, 3), (None, 2), (None, 1)]:
        monkeypatch.setattr(writer, "_simd_transpose", kernel)
        monkeypatch.setattr(writer, "_workers", lambda workers=workers: workers)
        out = tmp_path / f"out-{kernel is not None}-{workers}"
        convert_checkpoint(src, out, dtype=dtype, progress=False)
        assert (out / "model.safetensors").read_bytes() == reference, (kernel, workers)


def test_safetensors_conversion_does_not_import_numpy(hf_checkpoint, tmp_path):
    """numpy's import is a sixth of the time of a 1 GB conversion: plain safetensors conversions (kernel
    copies + the C transpose) run without it."""
    script = (
        "import sys; from paddle_qwen2.cli import main; code = main(sys.argv[1:]); "
        "assert 'numpy' not in sys.modules, 'numpy was imported'; sys.exit(code)"
    )
    args = ["convert", "--from-hf", str(hf_checkpoint("gqa")), "--out", str(tmp_path / "pd"), "--quiet"]
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "pd" / "model.safetensors").exists()
