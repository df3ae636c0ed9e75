"""The single table of HF <-> Paddle names: tensor names and which are transposed (`HF_ARCHITECTURES`,
`name_rows`), their shapes from the config (`ModelDims`, `expected_hf_shape`), the architecture of a checkpoint,
and the file names of a checkpoint folder.

`Qwen2PretrainedModel._get_name_mappings` (modeling.py) is built from `HF_ARCHITECTURES` and `name_rows`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from .errors import ConversionError

Row = tuple[str, str, Optional[str]]  # (hf_name, paddle_name, action: "transpose" or None)
TRANSPOSE = "transpose"

# File names of a checkpoint folder (the same in both layouts; the PyTorch pickles are HF only).
CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
TORCH_WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
# The tokenizer files a Qwen2 checkpoint folder may carry (copied along wherever a model folder is written).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)


@dataclass(frozen=True)
class HeadSpec:
    """How an HF architecture names its tensors: the attribute holding the base model (`hf_prefix`, "" for
    the bare base model) and the head's own rows `(hf_name, paddle_name, action)`."""

    hf_prefix: str
    head_mappings: tuple[Row, ...] = ()


HF_ARCHITECTURES: dict[str, HeadSpec] = {
    "Qwen2Model": HeadSpec(""),
    "Qwen2ForCausalLM": HeadSpec("model", (("lm_head.weight", "lm_head.weight", TRANSPOSE),)),
    "Qwen2ForSequenceClassification": HeadSpec("model", (("score.weight", "score.weight", TRANSPOSE),)),
    "Qwen2ForTokenClassification": HeadSpec(
        "model", (("score.weight", "score.weight", TRANSPOSE), ("score.bias", "score.bias", None))
    ),
    # transformers keeps the `transformer` attribute on its QA head for backward compatibility.
    "Qwen2ForQuestionAnswering": HeadSpec(
        "transformer",
        (("qa_outputs.weight", "qa_outputs.weight", TRANSPOSE), ("qa_outputs.bias", "qa_outputs.bias", None)),
    ),
}
# Paddle-only models and the HF architecture their weights are written as.
PADDLE_ONLY_ARCHITECTURES = {"Qwen2SentenceEmbedding": "Qwen2Model"}
PADDLE_BASE_PREFIX = "qwen2"


def _base_rows(num_hidden_layers: int) -> list[tuple[str, str | None]]:
    """Base-model tensor names (no prefix) and whether each is an nn.Linear weight (transposed)."""
    rows: list[tuple[str, str | None]] = [("embed_tokens.weight", None), ("norm.weight", None)]
    for i in range(num_hidden_layers):
        prefix = f"layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj"):
            rows.append((f"{prefix}self_attn.{proj}.weight", TRANSPOSE))
            rows.append((f"{prefix}self_attn.{proj}.bias", None))
        rows.append((f"{prefix}self_attn.o_proj.weight", TRANSPOSE))
        for proj in ("gate_proj", "up_proj", "down_proj"):
            rows.append((f"{prefix}mlp.{proj}.weight", TRANSPOSE))
        rows.append((f"{prefix}input_layernorm.weight", None))
        rows.append((f"{prefix}post_attention_layernorm.weight", None))
    return rows


def name_rows(
    num_hidden_layers: int, tie_word_embeddings: bool, hf_prefix: str | None, head_mappings: Sequence[Row] = ()
) -> list[Row]:
    """HF name -> Paddle name rows `(hf_name, paddle_name, action)`; action "transpose" marks nn.Linear weights
    (HF `[out, in]`, Paddle `[in, out]`).

    `hf_prefix=None` is the bare base model (same names on both sides, no prefix); otherwise HF names get
    `{hf_prefix}.` and Paddle names `qwen2.`, followed by the head's rows (`lm_head.weight` is left out when the
    embeddings are tied: neither side stores it then).
    """
    base = _base_rows(num_hidden_layers)
    if hf_prefix is None:
        return [(name, name, action) for name, action in base]
    hf = f"{hf_prefix}." if hf_prefix else ""
    rows = [(f"{hf}{name}", f"{PADDLE_BASE_PREFIX}.{name}", action) for name, action in base]
    rows += [tuple(row) for row in head_mappings if not (tie_word_embeddings and row[0] == "lm_head.weight")]
    return rows


@dataclass(frozen=True)
class ModelDims:
    """The config values that fix tensor names and shapes."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    num_labels: int = 2

    @classmethod
    def from_config(cls, config: Mapping | object, where: str = CONFIG_NAME) -> ModelDims:
        """From a config.json dict or a config object (attributes)."""
        get = config.get if isinstance(config, Mapping) else (lambda key, default=None: getattr(config, key, default))
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        values = {}
        for key in required:
            value = get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConversionError(f"{where}: {key!r} must be a positive integer, got {value!r}")
            values[key] = value
        heads = values["num_attention_heads"]
        num_labels = get("num_labels")
        if num_labels is None:
            id2label = get("id2label")
            num_labels = len(id2label) if id2label else 2
        return cls(
            num_key_value_heads=get("num_key_value_heads") or heads,
            head_dim=get("head_dim") or values["hidden_size"] // heads,
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
            num_labels=int(num_labels),
            **values,
        )


def expected_hf_shape(hf_name: str, dims: ModelDims) -> tuple[int, ...]:
    """Shape of `hf_name` in an HF checkpoint of `dims` (Linear weights `[out, in]`)."""
    h, v, i = dims.hidden_size, dims.vocab_size, dims.intermediate_size
    q, kv = dims.num_attention_heads * dims.head_dim, dims.num_key_value_heads * dims.head_dim
    shapes = {
        "embed_tokens.weight": (v, h),
        "lm_head.weight": (v, h),
        "norm.weight": (h,),
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "q_proj.weight": (q, h),
        "q_proj.bias": (q,),
        "k_proj.weight": (kv, h),
        "k_proj.bias": (kv,),
        "v_proj.weight": (kv, h),
        "v_proj.bias": (kv,),
        "o_proj.weight": (h, q),
        "gate_proj.weight": (i, h),
        "up_proj.weight": (i, h),
        "down_proj.weight": (h, i),
        "score.weight": (dims.num_labels, h),
        "score.bias": (dims.num_labels,),
        "qa_outputs.weight": (2, h),
        "qa_outputs.bias": (2,),
    }
    return shapes[".".join(hf_name.split(".")[-2:])]


def conversion_rows(architecture: str, dims: ModelDims) -> list[Row]:
    """Rows for the weights of a checkpoint of `architecture` (HF or Paddle class name)."""
    if architecture in PADDLE_ONLY_ARCHITECTURES:  # Paddle `qwen2.*` <-> HF bare base model
        return [(hf, f"{PADDLE_BASE_PREFIX}.{pd}", a) for hf, pd, a in name_rows(dims.num_hidden_layers, False, None)]
    spec = HF_ARCHITECTURES[architecture]
    hf_prefix = None if architecture == "Qwen2Model" else spec.hf_prefix
    return name_rows(dims.num_hidden_layers, dims.tie_word_embeddings, hf_prefix, spec.head_mappings)


def _infer_architecture(names: Sequence[str], layout: str) -> str:
    """The architecture whose head tensors appear in `names` (tied causal LM when only the base is there)."""
    names = set(names)
    if any(n.startswith("transformer.") or n.startswith("qa_outputs.") for n in names):
        return "Qwen2ForQuestionAnswering"
    if "score.bias" in names:
        return "Qwen2ForTokenClassification"
    if "score.weight" in names:
        return "Qwen2ForSequenceClassification"
    if "lm_head.weight" in names:
        return "Qwen2ForCausalLM"
    prefix = "model." if layout == "hf" else f"{PADDLE_BASE_PREFIX}."
    if any(n.startswith(prefix) for n in names):
        return "Qwen2ForCausalLM"
    return "Qwen2Model"


def _architecture(config: Mapping, names: Sequence[str], layout: str) -> str:
    declared = (config.get("architectures") or [None])[0]
    known = set(HF_ARCHITECTURES) | (set(PADDLE_ONLY_ARCHITECTURES) if layout == "paddle" else set())
    return declared if declared in known else _infer_architecture(names, layout)
