"""The sentence-transformers modules after the Transformer, in paddle: Pooling, Dense, Normalize.

Each computes what sentence-transformers 5.1 computes, in float32: `pool` the token states `[batch, seq, hidden]`
over the attention mask `[batch, seq]` into `[batch, dim]` (`paddle_qwen2.pooling`, shared with
`Qwen2SentenceEmbedding`); `Dense` a linear layer plus activation; `normalize` L2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle.nn.functional as F
from paddle import Tensor, nn

from ..pooling import pool
from .folder import DenseSpec, EmbeddingError

__all__ = ["pool", "Dense", "normalize", "read_dense_weights"]

_ACTIVATIONS = {
    "Identity": nn.Identity,
    "Tanh": nn.Tanh,
    "ReLU": nn.ReLU,
    "GELU": nn.GELU,
    "Sigmoid": nn.Sigmoid,
    "SiLU": nn.Silu,
    "LeakyReLU": nn.LeakyReLU,
    "Softplus": nn.Softplus,
    "ELU": nn.ELU,
}


def normalize(embeddings: Tensor) -> Tensor:
    """L2 normalisation over the last axis (eps 1e-12, as torch's `F.normalize`)."""
    return F.normalize(embeddings, p=2, axis=-1, epsilon=1e-12)


def read_dense_weights(folder: Path) -> dict[str, np.ndarray]:
    """`linear.weight` `[out, in]` and `linear.bias` of a Dense module folder as float32 numpy arrays, from
    `model.safetensors` or `pytorch_model.bin` (read without torch)."""
    from ..conversion.dtypes import cast_array
    from ..conversion.safetensors_reader import _safetensors_entries
    from ..conversion.torch_reader import _torch_entries

    if (folder / "model.safetensors").is_file():
        entries = _safetensors_entries(folder / "model.safetensors", "hf")
    elif (folder / "pytorch_model.bin").is_file():
        entries = _torch_entries(folder / "pytorch_model.bin")
    else:
        raise EmbeddingError(
            f"{folder}: Dense module without weights (expected model.safetensors or pytorch_model.bin)"
        )
    return {e.name: cast_array(e.read(), e.dtype, "F32") for e in entries}


class Dense(nn.Layer):
    """sentence-transformers' Dense: `activation(x @ W + b)`, `[batch, in_features] -> [batch, out_features]`."""

    def __init__(self, spec: DenseSpec):
        super().__init__()
        self.spec = spec
        self.linear = nn.Linear(spec.in_features, spec.out_features, bias_attr=None if spec.bias else False)
        self.activation = _ACTIVATIONS[spec.activation]()

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.linear(x))

    def load_weights(self) -> None:
        """Fill the layer from its folder; a weight of the wrong shape is an error naming the file."""
        weights = read_dense_weights(self.spec.path)
        where = f"{self.spec.path} (Dense {self.spec.in_features} -> {self.spec.out_features})"
        expected = {"linear.weight": (self.spec.out_features, self.spec.in_features)}
        if self.spec.bias:
            expected["linear.bias"] = (self.spec.out_features,)
        for name, shape in expected.items():
            if name not in weights:
                raise EmbeddingError(f"{where}: missing tensor {name!r} (has {sorted(weights)})")
            if tuple(weights[name].shape) != shape:
                raise EmbeddingError(
                    f"{where}: tensor {name!r} has shape {list(weights[name].shape)}, expected {list(shape)}"
                )
        self.linear.weight.set_value(np.ascontiguousarray(weights["linear.weight"].T))
        if self.spec.bias:
            self.linear.bias.set_value(weights["linear.bias"])

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The weights in sentence-transformers' names and layout (`linear.weight` `[out, in]`)."""
        arrays = {"linear.weight": np.ascontiguousarray(self.linear.weight.numpy().T)}
        if self.spec.bias:
            arrays["linear.bias"] = self.linear.bias.numpy()
        return arrays
