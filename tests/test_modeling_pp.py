"""modeling_pp: how the pipeline model cuts the layer list into stages and what its first stage takes from a
Trainer batch (multi-process pipeline runs are in tests/distributed/test_pipeline_parallel.py)."""

import paddle
import pytest

from paddle_qwen2.modeling_pp import Qwen2ForCausalLMPipe, pipeline_boundaries


def test_pipeline_stages_split_by_decoder_layer():
    # layer list: [embedding, layer_0 .. layer_{n-1}, norm, head]
    assert pipeline_boundaries(2, 2) == [0, 2, 5]
    assert pipeline_boundaries(3, 2) == [0, 3, 6]  # stage 0: embedding + 2 layers; stage 1: 1 layer, norm, head
    assert pipeline_boundaries(5, 3) == [0, 3, 5, 8]
    assert pipeline_boundaries(4, 1) == [0, 7]
    with pytest.raises(ValueError, match=r"pipeline_parallel_degree \(3\) must not exceed num_hidden_layers \(2\)"):
        pipeline_boundaries(2, 3)


def test_pipeline_inputs_from_a_trainer_batch():
    """paddlenlp's Trainer hands the pipeline model a batch dict; the first stage gets (ids, mask, positions)."""
    ids, labels = paddle.to_tensor([[5, 6, 7]]), paddle.to_tensor([[5, 6, -100]])
    inputs, target = Qwen2ForCausalLMPipe._prepare_pipeline_inputs_func(None, {"input_ids": ids, "labels": labels})
    assert inputs == (ids, None, None) and target is labels
    batch = [{"input_ids": ids, "attention_mask": ids, "labels": labels}] * 2
    inputs, target = Qwen2ForCausalLMPipe._prepare_pipeline_inputs_func(None, batch)
    assert inputs == ([ids, ids], [ids, ids], None) and target == [labels, labels]
