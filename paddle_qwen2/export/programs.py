"""The layers `export` traces: `(input_ids, attention_mask)` -> output 0 of each task. (Module level, not local
classes: Paddle 2.6's dy2static does not resolve names from an enclosing function.)"""

from __future__ import annotations

from paddle import nn

from ..modeling import masked_fill

__all__ = ["PROGRAMS", "CausalLMProgram", "SequenceClassificationProgram", "EmbeddingProgram"]


class CausalLMProgram(nn.Layer):
    """logits `[batch, seq, vocab]` with position ids counted over the real tokens (pads at 1, as HF)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        position_ids = masked_fill(attention_mask.astype("int64").cumsum(-1) - 1, attention_mask == 0, 1)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=False, return_dict=True)  # fmt: skip
        return out.logits.astype("float32")


class SequenceClassificationProgram(nn.Layer):
    """logits `[batch, num_labels]` (the model's own pooling: the rightmost token that is not the pad token)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return out.logits.astype("float32")


class EmbeddingProgram(nn.Layer):
    """`EmbeddingModel` (Transformer -> Pooling -> Dense... -> Normalize): `[batch, dim]`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask)


PROGRAMS = {
    "causal-lm": CausalLMProgram,
    "sequence-classification": SequenceClassificationProgram,
    "embedding": EmbeddingProgram,
}
