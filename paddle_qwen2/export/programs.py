"""The layers `export` traces: `(input_ids, attention_mask)` -> output 0 of each task; `decode` also takes and
returns the KV cache. (Module level, not local
classes: Paddle 2.6's dy2static does not resolve names from an enclosing function.)"""

from __future__ import annotations

from paddle import nn

from ..modeling import masked_fill

__all__ = ["PROGRAMS", "CausalLMProgram", "SequenceClassificationProgram", "EmbeddingProgram", "DecodeProgram"]


def mask_positions(attention_mask):
    """Position ids `[batch, seq]` counted over the real tokens of `attention_mask` (pads at 1, as HF)."""
    return masked_fill(attention_mask.astype("int64").cumsum(-1) - 1, attention_mask == 0, 1)


class CausalLMProgram(nn.Layer):
    """logits `[batch, seq, vocab]` with position ids counted over the real tokens (pads at 1, as HF)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        positions = mask_positions(attention_mask)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=False,
            return_dict=True,
        )
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


class DecodeProgram(nn.Layer):
    """One generation step with the KV cache in and out, what the inference engine loops over.

    `(input_ids [batch, new], attention_mask [batch, past + new], cache)` -> `[logits [batch, vocab] float32 of the
    last position, *present cache]`, the cache as `[key_0, value_0, key_1, ...]`, each `[batch, kv_heads, past,
    head_dim]` (`CACHE_LAYOUT`) in the model's dtype (`past` = 0 for the prefill). Position ids come from the mask,
    so rows are left-padded; the present cache is the past with the new tokens appended. The cache is kept in the
    layout attention computes in, so a step transposes its new keys and values only, not the whole cache (exports
    before this layout wrote `[batch, past, kv_heads, head_dim]`; their meta says which)."""

    CACHE_LAYOUT = ("batch", "kv_heads", "past", "head_dim")

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, cache):
        past = tuple((cache[2 * i], cache[2 * i + 1]) for i in range(len(cache) // 2))
        positions = mask_positions(attention_mask)[:, -input_ids.shape[1] :]
        out = self.model.qwen2(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=past,
            use_cache=True,
            return_dict=True,
            heads_first_cache=self.CACHE_LAYOUT[1] == "kv_heads",
        )
        logits = self.model.lm_head(out.last_hidden_state[:, -1:])[:, 0]  # the head on the last position only
        return [logits.astype("float32"), *[t for kv in out.past_key_values for t in kv]]


PROGRAMS = {
    "causal-lm": CausalLMProgram,
    "sequence-classification": SequenceClassificationProgram,
    "embedding": EmbeddingProgram,
    "decode": DecodeProgram,
}
