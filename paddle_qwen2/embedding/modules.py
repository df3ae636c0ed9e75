"""The sentence-transformers modules after the Transformer, in paddle: Pooling, Dense, Normalize.

Each computes what sentence-transformers 5.1 computes, in float32: `pool` the token states `[batch, seq, hidden]`
over the attention mask `[batch, seq]` into `[batch, dim]`; `Dense` a linear layer plus activation; `normalize` L2.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import Tensor, nn

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


def _last_token(hidden: Tensor, mask: Tensor) -> Tensor:
    """The state of the last attended token (any padding side); zeros for a row with no token."""
    seq_len = hidden.shape[1]
    positions = paddle.arange(seq_len, dtype="int64").unsqueeze(0)
    last = (positions * (mask > 0).astype("int64")).argmax(axis=-1, keepdim=True)  # [batch, 1]
    index = last.unsqueeze(-1).expand([hidden.shape[0], 1, hidden.shape[2]])
    return paddle.take_along_axis(hidden * mask.unsqueeze(-1), index, axis=1).squeeze(1)


def _masked_mean(hidden: Tensor, weights: Tensor, sqrt: bool = False) -> Tensor:
    summed = (hidden * weights.unsqueeze(-1)).sum(axis=1)
    count = paddle.clip(weights.sum(axis=1, keepdim=True), min=1e-9)
    return summed / (paddle.sqrt(count) if sqrt else count)


def pool(hidden: Tensor, attention_mask: Tensor, modes: Sequence[str], prompt_length: int = 0) -> Tensor:
    """hidden `[batch, seq, hidden]`, attention_mask `[batch, seq]` (1 = token) -> `[batch, hidden * len(modes)]`
    float32. `prompt_length > 0` leaves the first `prompt_length` positions out (sentence-transformers'
    `include_prompt=False`, which counts from the start of the row whatever the padding side)."""
    hidden = hidden.astype("float32")
    mask = attention_mask.astype("float32")
    if prompt_length:
        keep = (paddle.arange(mask.shape[1], dtype="int64") >= prompt_length).astype("float32")
        mask = mask * keep.unsqueeze(0)
    outputs = []
    for mode in modes:
        if mode == "cls":
            outputs.append(hidden[:, 0])
        elif mode == "max":
            outputs.append(paddle.where(mask.unsqueeze(-1) > 0, hidden, paddle.full([], -1e9, "float32")).max(axis=1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            outputs.append(_masked_mean(hidden, mask, sqrt=mode == "mean_sqrt_len_tokens"))
        elif mode == "weightedmean":
            weights = paddle.arange(1, mask.shape[1] + 1, dtype="float32").unsqueeze(0) * mask
            outputs.append(_masked_mean(hidden, weights))
        elif mode == "lasttoken":
            outputs.append(_last_token(hidden, mask))
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return outputs[0] if len(outputs) == 1 else paddle.concat(outputs, axis=-1)


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
