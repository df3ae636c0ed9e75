"""dtypes: safetensors codes, their numpy storage and itemsizes, and exact casts between the float codes.

bfloat16 travels as its raw uint16 bit pattern (numpy has no bfloat16). numpy itself is imported lazily, here
and in every module of the package that uses it (`_LazyNumpy`).
"""

from __future__ import annotations


class _LazyNumpy:
    """`numpy`, imported on first use: converting a safetensors checkpoint with the C transpose kernel never
    needs it, and importing it is a noticeable share of a conversion's time.

    A module that uses numpy binds `np = _LazyNumpy(globals())`; the first attribute lookup imports numpy and
    rebinds that module's `np` to numpy itself."""

    def __init__(self, namespace: dict) -> None:
        self._namespace = namespace

    def __getattr__(self, name: str):
        import numpy

        self._namespace["np"] = numpy  # later lookups find the module itself
        return getattr(numpy, name)


np = _LazyNumpy(globals())

_STORAGE = {  # code -> (numpy dtype name, itemsize)
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("uint16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U64": ("uint64", 8),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
FLOAT_CODES = ("F64", "F32", "F16", "BF16")
DTYPE_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
CODE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _itemsize(code: str) -> int:
    return _STORAGE[code][1]


def _np_dtype(code: str) -> str:
    return _STORAGE[code][0]


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bits; NaN -> 0x7FC0 (what torch does)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    rounded = ((bits + (((bits >> 16) & 1) + np.uint32(0x7FFF))) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)


def cast_array(array: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Cast between float codes ("F64", "F32", "F16", "BF16"; BF16 as uint16 bits) with round-to-nearest-even,
    bit-identical to torch's `.to(dtype)` (values beyond the target's range become inf, as there)."""
    if src == dst:
        return array
    with np.errstate(over="ignore"):  # float64 goes through float32, as torch's scalar conversions do
        as_f32 = _bf16_to_f32(array) if src == "BF16" else array.astype(np.float32, copy=False)
    if dst == "BF16":
        return _f32_to_bf16(as_f32)
    with np.errstate(over="ignore"):
        return as_f32.astype(_np_dtype(dst))
