"""masks.py: causal, padding and sliding-window masks and PaddleNLP's mask helpers (re-exported by modeling)."""

import numpy as np
import paddle

from paddle_qwen2 import masks, modeling
from paddle_qwen2.masks import (
    _expand_2d_mask,
    _make_causal_mask,
    get_triangle_upper_mask,
    is_casual_mask,
    masked_fill,
)
from paddle_qwen2.modeling import Qwen2Model


def test_modeling_re_exports_the_mask_helpers():
    for name in ("_make_causal_mask", "_expand_2d_mask", "masked_fill", "get_triangle_upper_mask", "is_casual_mask"):
        assert getattr(modeling, name) is getattr(masks, name), name
    assert Qwen2Model._prepare_decoder_attention_mask is masks.decoder_attention_mask


def test_make_causal_mask_with_cache_offset_and_window():
    mask = _make_causal_mask([2, 3], past_key_values_length=4).numpy()
    assert mask.shape == (2, 1, 3, 7)
    expected = np.array([[j <= 4 + i for j in range(7)] for i in range(3)])
    np.testing.assert_array_equal(mask[1, 0], expected)
    windowed = _make_causal_mask([1, 3], past_key_values_length=4, sliding_window=2).numpy()[0, 0]
    expected_w = np.array([[(j <= 4 + i) and (j > 4 + i - 2) for j in range(7)] for i in range(3)])
    np.testing.assert_array_equal(windowed, expected_w)


def test_expand_2d_mask_and_masked_fill():
    pad = paddle.to_tensor([[1, 1, 0], [0, 1, 1]])
    expanded = _expand_2d_mask(pad, tgt_length=2).numpy()
    assert expanded.shape == (2, 1, 2, 3) and expanded.dtype == np.bool_
    np.testing.assert_array_equal(expanded[0, 0, 1], [True, True, False])
    np.testing.assert_array_equal(expanded[1, 0, 0], [False, True, True])
    x = paddle.to_tensor([[1.0, 2.0], [3.0, 4.0]])
    out = masked_fill(x, paddle.to_tensor([[True, False], [False, True]]), -7.0).numpy()
    np.testing.assert_array_equal(out, [[-7.0, 2.0], [3.0, -7.0]])
    half = masked_fill(x.astype("bfloat16"), paddle.to_tensor([True, False]), 5.0)
    assert half.dtype == paddle.bfloat16
    np.testing.assert_array_equal(half.astype("float32").numpy(), [[5.0, 2.0], [5.0, 4.0]])


def test_triangle_upper_mask_and_is_casual_mask():
    scores = paddle.zeros([1, 2, 3, 5])
    upper = get_triangle_upper_mask(scores).numpy()
    assert upper.shape == (3, 5)
    np.testing.assert_array_equal(upper == 0, _make_causal_mask([1, 3], 2).numpy()[0, 0])
    assert upper.min() == np.finfo(np.float32).min
    given = paddle.ones([1, 1, 3, 5])
    assert get_triangle_upper_mask(scores, given) is given

    causal = Qwen2Model._prepare_decoder_attention_mask(None, [2, 4], 0, paddle.float32)
    padded = Qwen2Model._prepare_decoder_attention_mask(
        paddle.to_tensor([[1, 1, 1, 1], [0, 1, 1, 1]]), [2, 4], 0, paddle.float32
    )
    windowed = Qwen2Model._prepare_decoder_attention_mask(None, [2, 4], 0, paddle.float32, sliding_window=2)
    assert is_casual_mask(causal) and is_casual_mask(_make_causal_mask([1, 4], 0)) and is_casual_mask(None)
    assert not is_casual_mask(padded) and not is_casual_mask(windowed)


def test_prepare_decoder_attention_mask_accepts_4d_masks():
    allowed = _make_causal_mask([1, 3], 0)
    additive = Qwen2Model._prepare_decoder_attention_mask(allowed, [1, 3], 0, paddle.float32).numpy()
    assert additive[0, 0, 0, 1] == np.finfo(np.float32).min and additive[0, 0, 2, 0] == 0
    custom = paddle.zeros([1, 1, 3, 3])
    assert np.array_equal(
        Qwen2Model._prepare_decoder_attention_mask(custom, [1, 3], 0, paddle.float32).numpy(), custom.numpy()
    )
