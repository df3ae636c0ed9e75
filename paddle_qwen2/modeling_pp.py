"""Pipeline-parallel Qwen2 causal LM on fleet's `PipelineLayer`.

`Qwen2ForCausalLMPipe` lays the model out as a flat list of layers: the embedding, one entry per decoder layer,
the final norm and the LM head. fleet cuts the list into `pipeline_parallel_degree` stages along decoder layers
(the first stage also holds the embedding, the last the norm, the head and the loss). A tied LM head is the
embedding shared between the first and last stage (`SharedLayerDesc`): fleet broadcasts it at start and
all-reduces its gradient. The layers are the ones of `modeling.py`, so tensor and sequence parallelism and the
recompute options work inside every stage, and parameter names are those of `Qwen2ForCausalLM`.

Between stages the activations travel as `(hidden_states, attention_mask, position_ids)`: hidden states
`[batch, seq, hidden]` (`[seq / tp * batch, hidden]` under sequence parallelism), the 2D padding mask
`[batch, seq]` (int64, 1 = token) and position ids `[batch, seq]` (int64).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import paddle
from paddle import Tensor, nn
from paddle.distributed import fleet
from paddle.distributed.fleet.meta_parallel import LayerDesc, PipelineLayer, SharedLayerDesc
from paddlenlp.transformers.model_utils import PipelinePretrainedModel

from .configuration import Qwen2Config
from .conversion import detect_layout
from .loading import load_pretrained
from .losses import Qwen2PretrainingCriterion
from .modeling import (
    Qwen2DecoderLayer,
    Qwen2ForCausalLM,
    Qwen2LMHead,
    Qwen2Model,
    Qwen2PretrainedModel,
    Qwen2RMSNorm,
    Qwen2RotaryEmbedding,
    _maybe_recompute,
    _padding_mask,
)
from .parallel import gather_sequence, parallel_matmul, scatter_sequence

__all__ = ["Qwen2ForCausalLMPipe", "pipeline_boundaries"]

StageArgs = tuple[Tensor, Tensor, Tensor]


def pipeline_boundaries(num_hidden_layers: int, num_stages: int) -> list[int]:
    """Start index of every stage in the layer list `[embedding, layer_0 .. layer_{n-1}, norm, head]`, plus its
    length: decoder layers are spread as evenly as possible (earlier stages take the remainder)."""
    if num_stages > num_hidden_layers:
        raise ValueError(
            f"pipeline_parallel_degree ({num_stages}) must not exceed num_hidden_layers ({num_hidden_layers}): "
            "every pipeline stage needs at least one decoder layer"
        )
    boundaries, layer = [0], 0
    for stage in range(num_stages - 1):
        layer += num_hidden_layers // num_stages + (1 if stage < num_hidden_layers % num_stages else 0)
        boundaries.append(1 + layer)  # +1: the embedding comes first
    return boundaries + [num_hidden_layers + 3]


class Qwen2EmbeddingPipe(nn.Layer):
    """First stage: `input_ids` or `(input_ids, attention_mask, position_ids)` (either may be None) ->
    `(hidden_states, attention_mask [batch, seq], position_ids [batch, seq])`."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        # Same layer (and parameter name, `embed_tokens.weight`) as Qwen2Model's.
        self.embed_tokens = Qwen2Model._embedding(config)

    @property
    def embedding_weight(self) -> Tensor:
        """The `[vocab(/tp), hidden]` matrix the tied LM head shares."""
        return self.embed_tokens.weight

    def forward(self, args) -> StageArgs:
        input_ids, attention_mask, position_ids = args if isinstance(args, tuple) else (args, None, None)
        batch, seq_len = input_ids.shape
        if attention_mask is None:
            attention_mask = paddle.ones([batch, seq_len], dtype="int64")
        if attention_mask.ndim != 2:
            raise ValueError(
                f"Qwen2ForCausalLMPipe takes a 2D attention_mask [batch, seq]; got shape {attention_mask.shape}"
            )
        if position_ids is None:
            position_ids = paddle.arange(seq_len, dtype="int64").unsqueeze(0).expand([batch, seq_len])
        hidden_states = self.embed_tokens(input_ids)
        if self.config.sequence_parallel:
            hidden_states = scatter_sequence(hidden_states)
        attention_mask, position_ids = attention_mask.astype("int64"), position_ids.astype("int64")
        attention_mask.stop_gradient = position_ids.stop_gradient = True
        return hidden_states, attention_mask, position_ids


class Qwen2DecoderLayerPipe(Qwen2DecoderLayer):
    """One decoder layer on `(hidden_states, attention_mask, position_ids)`. It builds its own additive mask
    (with its sliding window, if any) and rotary tables. With `recompute` at granularity "full" and
    `pp_recompute_interval == 1` the layer is recomputed unless listed in `no_recompute_layers` (larger intervals
    are fleet's own recompute, see `Qwen2ForCausalLMPipe`)."""

    def __init__(self, config: Qwen2Config, layer_idx: int = 0):
        super().__init__(config, layer_idx)
        self.rotary_emb = Qwen2RotaryEmbedding(config)

    def forward(self, args: StageArgs) -> StageArgs:
        hidden_states, attention_mask, position_ids = args
        batch, seq_len = position_ids.shape
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        mask = Qwen2Model._prepare_decoder_attention_mask(
            _padding_mask(attention_mask), [batch, seq_len], 0, hidden_states.dtype, self.sliding_window
        )
        layer_args = (hidden_states, position_embeddings, mask, None, False, False, (batch, seq_len))
        if self.config.pp_recompute_interval == 1:
            hidden_states = _maybe_recompute(self, "full", super().forward, *layer_args)[0]
        else:
            hidden_states = super().forward(*layer_args)[0]
        return hidden_states, attention_mask, position_ids


class Qwen2RMSNormPipe(nn.Layer):
    """Final norm; gathers the sequence back under sequence parallelism. Returns `[batch, seq, hidden]`."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        self.norm = Qwen2RMSNorm(config)

    def forward(self, args: StageArgs) -> Tensor:
        hidden_states, _, position_ids = args
        hidden_states = self.norm(hidden_states)
        if self.config.sequence_parallel:
            hidden_states = gather_sequence(hidden_states, *position_ids.shape)
        return hidden_states


class Qwen2LMHeadPipe(Qwen2LMHead):
    """Untied LM head, `[batch, seq, hidden] -> [batch, seq, vocab(/tp)]` (vocabulary split kept for the loss
    when `tensor_parallel_output`)."""


def _tied_lm_head(embedding: Qwen2EmbeddingPipe, hidden_states: Tensor) -> Tensor:
    """Tied LM head on the last stage: the shared embedding matrix, transposed."""
    config = embedding.config
    return parallel_matmul(hidden_states, embedding.embedding_weight, True, config.tensor_parallel_output)


class Qwen2ForCausalLMPipe(PipelinePretrainedModel, PipelineLayer):
    """`Qwen2ForCausalLM` for fleet's pipeline parallelism (`fleet.distributed_model` wraps it in
    `PipelineParallel`; paddlenlp's Trainer does this with `--pipeline_parallel_degree`).

    Input `(input_ids, attention_mask, position_ids)` (the last two may be None), labels `[batch, seq]` aligned
    with the inputs (the criterion shifts them, -100 ignored): the same loss as `Qwen2ForCausalLM`. State-dict
    names are those of `Qwen2ForCausalLM`, so its checkpoints load as they are.

    Recompute at granularity "full": with `pp_recompute_interval` 1 (the default) every decoder layer not in
    `no_recompute_layers` is recomputed; with `pp_recompute_interval` k > 1 fleet recomputes each run of k
    consecutive layers of a stage (fleet's hybrid recompute, GPU only); 0 turns whole-layer recompute off.
    "full_attn" and "core_attn" act inside the layers as in `Qwen2ForCausalLM`.
    """

    config_class = Qwen2Config
    # No base_model_prefix: the stages' state dicts already use the full `qwen2.` names, and paddlenlp's loader
    # would strip that prefix from the checkpoint for a model without a `qwen2` attribute.
    _get_name_mappings = Qwen2ForCausalLM._get_name_mappings  # HF names -> the same Paddle names
    _get_tensor_parallel_mappings = Qwen2PretrainedModel._get_tensor_parallel_mappings
    _get_fuse_or_split_param_mappings = Qwen2PretrainedModel._get_fuse_or_split_param_mappings
    _init_weights = Qwen2PretrainedModel._init_weights
    _keys_to_ignore_on_load_unexpected = Qwen2PretrainedModel._keys_to_ignore_on_load_unexpected

    def __init__(self, config: Qwen2Config):
        config.validate()
        self.config = config
        hcg = fleet.get_hybrid_communicate_group()
        num_stages = hcg.get_pipe_parallel_world_size()
        if config.virtual_pp_degree > 1:
            raise ValueError("Qwen2ForCausalLMPipe does not support virtual pipeline stages (virtual_pp_degree > 1)")
        boundaries = pipeline_boundaries(config.num_hidden_layers, num_stages)
        full_recompute = config.recompute and config.recompute_granularity == "full"
        recompute_interval = config.pp_recompute_interval if full_recompute and config.pp_recompute_interval > 1 else 0
        shared = "qwen2_shared_embedding"
        if config.tie_word_embeddings:
            embedding = SharedLayerDesc(
                shared, Qwen2EmbeddingPipe, shared_weight_attr="embedding_weight", config=config
            )
        else:
            embedding = LayerDesc(Qwen2EmbeddingPipe, config=config)
        self.add_sequential_layer(embedding, "qwen2")
        for i in range(config.num_hidden_layers):
            self.add_sequential_layer(LayerDesc(Qwen2DecoderLayerPipe, config=config, layer_idx=i), f"qwen2.layers.{i}")
        self.add_sequential_layer(LayerDesc(Qwen2RMSNormPipe, config=config), "qwen2")
        if config.tie_word_embeddings:
            head = SharedLayerDesc(
                shared,
                Qwen2EmbeddingPipe,
                forward_func=_tied_lm_head,
                shared_weight_attr="embedding_weight",
                config=config,
            )
            self.add_sequential_layer(head, "qwen2")
        else:
            self.add_sequential_layer(LayerDesc(Qwen2LMHeadPipe, config=config), "lm_head")

        PipelineLayer.__init__(
            self,
            layers=self.get_sequential_layers(),
            loss_fn=Qwen2PretrainingCriterion(config),
            topology=hcg.topology(),
            seg_method=boundaries,
            recompute_interval=recompute_interval,
            recompute_ctx={"mp_group": hcg.get_model_parallel_group(), "offload": False, "partition": False},
        )
        # paddlenlp's PretrainedModel runs `init_weights()` after __init__ (skipped under `no_init_weights`, as
        # when `from_pretrained` fills the model from a checkpoint) and synchronises the shared embedding.

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As `Qwen2PretrainedModel.from_pretrained`: a checkpoint folder fills the stage's parameters straight from
        the files (names as `Qwen2ForCausalLM`'s), then the tied embedding is synchronised between stages."""
        path = pretrained_model_name_or_path
        if "dtype" not in kwargs and paddle.get_device() == "cpu":
            kwargs["dtype"] = "float32"
        if not (isinstance(path, (str, os.PathLike)) and os.path.isdir(path) and detect_layout(path) is not None):
            return super().from_pretrained(path, *args, **kwargs)
        model = load_pretrained(cls, path, *args, **kwargs)
        model._synchronize_shared_weights()
        return model

    def _prepare_pipeline_inputs_func(self, inputs):
        """A batch dict (or list of dicts) -> `[(input_ids, attention_mask, position_ids), labels]` as
        `PipelineParallel` takes it (paddlenlp's Trainer calls this)."""
        first_stage, last_stage = ("input_ids", "attention_mask", "position_ids"), ("labels",)
        if not isinstance(inputs, (dict, OrderedDict)):
            inputs = {key: [item[key] for item in inputs] for key in inputs[0]}
        return [tuple(inputs.get(k) for k in first_stage), inputs.get(last_stage[0])]
