"""Losses, with HF's semantics: `Qwen2PretrainingCriterion` (next-token cross entropy of the causal LM, also under
tensor parallelism) and the task heads' losses. Every mean is over the labels that are not ignored (Paddle's
`F.cross_entropy(..., ignore_index=...)` mean divides by all labels, so it is written out); sequence
classification follows HF's `problem_type` rules."""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import Tensor, nn
from paddle.distributed import fleet

from .configuration import Qwen2Config

__all__ = ["Qwen2PretrainingCriterion", "cross_entropy_mean", "classification_loss"]


class Qwen2PretrainingCriterion(nn.Layer):
    """Next-token cross entropy. `prediction_scores` `[batch, seq, vocab(/tp)]` and `masked_lm_labels`
    `[batch, seq]` are aligned with the inputs (HF convention: labels = input_ids); the criterion shifts
    them. The loss is the mean over label tokens that are not `ignore_index` (-100), computed in float32;
    with no such token it is 0. Vocabulary-split logits use fleet's `ParallelCrossEntropy`."""

    def __init__(self, config: Qwen2Config, ignore_index: int = -100):
        super().__init__()
        self.config = config
        self.ignore_index = ignore_index
        tp = config.tensor_parallel_degree
        # Logits are vocabulary-split only when the vocabulary divides (see Qwen2LMHead).
        self.enable_parallel_cross_entropy = tp > 1 and config.tensor_parallel_output and config.vocab_size % tp == 0
        if self.enable_parallel_cross_entropy:
            self.loss_func = fleet.meta_parallel.ParallelCrossEntropy(ignore_index=ignore_index)
        else:
            self.loss_func = nn.CrossEntropyLoss(reduction="none", ignore_index=ignore_index)

    def forward(self, prediction_scores: Tensor, masked_lm_labels: Tensor) -> Tensor:
        # Shift the labels, not the logits: slicing the logits costs a full-size copy in the backward pass.
        labels = masked_lm_labels.astype("int64")
        labels = paddle.concat([labels[:, 1:], paddle.full([labels.shape[0], 1], self.ignore_index, "int64")], axis=1)
        logits = prediction_scores if prediction_scores.dtype == paddle.float32 else prediction_scores.astype("float32")
        token_loss = self.loss_func(logits, labels.unsqueeze(-1)).squeeze(-1)
        valid = (labels != self.ignore_index).astype("float32")
        count = valid.sum()
        return (token_loss * valid).sum() / paddle.maximum(count, paddle.ones_like(count))


def cross_entropy_mean(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Cross entropy `[n, classes]` x `[n]` averaged over the labels that are not `ignore_index` (0 if none).

    Written out because Paddle's `F.cross_entropy(..., ignore_index=...)` mean divides by all labels."""
    labels = labels.astype("int64")
    valid = labels != ignore_index
    safe_labels = paddle.where(valid, labels, paddle.zeros_like(labels))
    token_loss = F.cross_entropy(logits.astype("float32"), safe_labels, reduction="none").reshape([-1])
    weights = valid.astype("float32").reshape([-1])
    count = weights.sum()
    return (token_loss * weights).sum() / paddle.maximum(count, paddle.ones_like(count))


def classification_loss(config: Qwen2Config, logits: Tensor, labels: Tensor) -> Tensor:
    """HF's problem types: regression (num_labels == 1, MSE), single-label (integer labels, cross entropy),
    multi-label (float labels `[batch, num_labels]`, BCE with logits)."""
    num_labels = config.num_labels
    problem_type = config.problem_type
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (paddle.int32, paddle.int64):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    logits = logits.astype("float32")
    if problem_type == "regression":
        labels = labels.astype("float32")
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(-1), labels.reshape(logits.shape[:1]))
        return F.mse_loss(logits, labels)
    if problem_type == "single_label_classification":
        labels = labels.reshape([-1]).astype("int64")
        if paddle.in_dynamic_mode():  # the range check reads the labels: dygraph only (not in a traced program)
            valid = labels[labels != -100] if labels.numel() > 0 else labels
            if valid.numel() > 0 and (int(valid.min().item()) < 0 or int(valid.max().item()) >= num_labels):
                raise ValueError(
                    f"labels must lie in [0, num_labels={num_labels}) (or be -100); got {labels.numpy().tolist()}"
                )
        return cross_entropy_mean(logits.reshape([-1, num_labels]), labels)
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.astype("float32"))
    raise ValueError(f"unknown problem_type {problem_type!r}")
