"""The readers of paddle_qwen2.conversion: PyTorch zip archives read without torch (conversion/torch_reader.py).
The safetensors reader and the restricted unpickler are checked end to end in test_conversion.py (bad inputs,
refused pickle globals)."""

import numpy as np
import torch

from paddle_qwen2.conversion.torch_reader import _torch_entries


def test_bin_reader_matches_torch_for_views_and_dtypes(tmp_path):
    base = torch.randn(6, 8)
    state = {
        "transposed": base.t(),
        "offset_slice": base[2:5],
        "shared_a": base,
        "bf16": torch.randn(3, 4).to(torch.bfloat16),
        "fp16_column": torch.randn(5, 4).half()[:, 1],
        "scalar": torch.tensor(3.5),
    }
    torch.save(state, tmp_path / "x.bin")
    entries = {e.name: e for e in _torch_entries(tmp_path / "x.bin")}
    for name, tensor in state.items():
        got = entries[name].read()
        expected = tensor.contiguous().view(torch.int16).numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
        assert got.shape == tuple(tensor.shape) and np.array_equal(got.view(expected.dtype), expected), name
