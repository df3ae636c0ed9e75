"""paddle_qwen2.trace_state: a `to_static` trace that fails leaves no dy2static state behind for a later program to
inherit (Paddle 3.x crashed in `get_value_name` when one did)."""

import zlib  # noqa: F401

import numpy as np
import paddle
import pytest
from paddle.static import InputSpec

from paddle_qwen2.trace_state import _tables, forget_failed_traces, forget_unfinished_traces

SPEC = [InputSpec([None, 4], "float32", "x")]


class Refusing(paddle.nn.Layer):
    """A linear layer whose trace raises after its parameters are recorded while `refuse` is set."""

    def __init__(self):
        super().__init__()
        self.linear = paddle.nn.Linear(4, 3)
        self.refuse = True

    def forward(self, x):
        y = self.linear(x)
        if self.refuse:
            raise ValueError("refused")
        return y


def entries() -> list[set]:
    return [set(table) for table in _tables()]


def trace(layer: Refusing) -> paddle.Tensor:
    return paddle.jit.to_static(layer, input_spec=SPEC, full_graph=True)(paddle.ones([2, 4]))


def test_paddle_keeps_the_state_of_a_failed_trace_until_it_is_forgotten():
    """The reason for the module: Paddle 3.3.1 leaves the entry (if this fails, Paddle cleans up by itself)."""
    before = entries()
    with pytest.raises(ValueError, match="refused"):
        trace(Refusing())
    assert entries() != before
    forget_unfinished_traces()
    assert all(not keys for keys in entries())


def test_forget_failed_traces_drops_only_what_the_failed_trace_left():
    layer = Refusing()
    before = entries()
    with pytest.raises(ValueError, match="refused"), forget_failed_traces():
        trace(layer)
    assert entries() == before
    layer.refuse = False  # the same parameters traced again, into a new program
    with forget_failed_traces():
        got = trace(layer)
    np.testing.assert_allclose(got.numpy(), layer(paddle.ones([2, 4])).numpy(), rtol=1e-6, atol=1e-6)
    assert entries() == before
