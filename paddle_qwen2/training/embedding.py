"""Sentence-embedding fine-tuning (`paddle-qwen2 finetune --task embedding`): retrieval triples, their dataset and
collator, and the InfoNCE training wrapper around an `EmbeddingModel`.

Training rows (JSON lines, blank lines ignored):
    {"query": str, "pos": str | [str, ...], "neg": str | [str, ...]}      ("neg" optional)
PaddleNLP's `pos_passage` / `neg_passage` are accepted for `pos` / `neg`. A malformed row is a `DataError` naming
FILE:LINE.

Each example gives one query, one positive (a seeded choice among several, new each epoch) and up to
`num_negatives` hard negatives (likewise). Texts are tokenized exactly as `EmbeddingModel.encode` does: the prompt
prepended, stripped, the tokenizer's post-processor, truncation to the model's max length. A batch holds `B`
queries and the `P` distinct passages of its examples (positives and hard negatives; a passage that appears twice
is one column), and the loss is

    InfoNCE = mean_i  cross_entropy( cos(q_i, p_j) / temperature  over j < P,  target = column of q_i's positive )

so every other passage of the batch is a negative (in-batch + hard negatives). With Matryoshka dimensions the loss
is averaged over the full embedding and each truncated, re-normalised prefix.

The data order and each example's choices depend on `(seed, epoch, index)` only (`EmbeddingTrainer`,
`EpochCallback`), so a run resumed at any step continues on the uninterrupted run's loss curve.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import Tensor, nn
from paddlenlp.trainer import Trainer, TrainerCallback

from .data import DataError, read_jsonl

__all__ = [
    "ContrastiveEmbeddingModel",
    "EmbeddingCollator",
    "EmbeddingTrainer",
    "EpochCallback",
    "EpochShuffleSampler",
    "RetrievalDataset",
    "RetrievalExample",
    "evaluate_retrieval",
    "info_nce_loss",
    "load_embedding_model",
    "load_retrieval_examples",
    "matryoshka_dims",
    "prompt_length",
    "resolve_prompts",
]

# The key of each field and its PaddleNLP spelling.
_KEYS = {"pos": ("pos", "pos_passage"), "neg": ("neg", "neg_passage")}


@dataclass
class RetrievalExample:
    """One training row: a query, its relevant passages (at least one) and hard negatives (maybe none)."""

    query: str
    positives: list[str]
    negatives: list[str]


# ------------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------------


def _texts(record: dict, field: str, where: str, required: bool) -> list[str]:
    """`record[field]` (or its PaddleNLP name) as a list of non-empty strings."""
    keys = [key for key in _KEYS[field] if key in record]
    if len(keys) > 1:
        raise DataError(f"{where}: give '{keys[0]}' or '{keys[1]}', not both")
    if not keys:
        if required:
            raise DataError(f"{where}: missing '{field}' (a string or a list of strings; or '{field}_passage')")
        return []
    key, value = keys[0], record[keys[0]]
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise DataError(f"{where}: '{key}' must be a string or a list of strings, got {value!r:.80}")
    if required and not values:
        raise DataError(f"{where}: '{key}' is an empty list (a row needs at least one positive passage)")
    if any(not v.strip() for v in values):
        raise DataError(f"{where}: '{key}' holds an empty passage")
    return list(values)


def _example(record: Any, where: str) -> RetrievalExample:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with 'query', 'pos' and 'neg', got {type(record).__name__}")
    query = record.get("query")
    if not isinstance(query, str) or not query.strip():
        got = "missing" if "query" not in record else f"got {query!r:.80}"
        raise DataError(f"{where}: 'query' must be a non-empty string ({got})")
    return RetrievalExample(query, _texts(record, "pos", where, True), _texts(record, "neg", where, False))


def load_retrieval_examples(path: str | os.PathLike) -> list[RetrievalExample]:
    """The rows of a retrieval JSONL file (see the module docstring); errors name FILE:LINE."""
    examples = [_example(record, f"{path}:{lineno}") for lineno, record in read_jsonl(path)]
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


# ------------------------------------------------------------------------------------------------------------------
# The model, its prompts, held-out retrieval
# ------------------------------------------------------------------------------------------------------------------


def load_embedding_model(
    path: str | os.PathLike, pooling: str | None = None, max_length: int | None = None, bidirectional: bool = False
):
    """The `EmbeddingModel` to train: a sentence-transformers folder (its modules; `pooling` overrides its
    Pooling mode) or a plain Qwen2 folder (`pooling`, default "last"). A Normalize module is appended when the
    folder has none (the loss trains cosine similarity). `bidirectional`: `is_causal` False (saved in config.json)."""
    from ..embedding.folder import NormalizeSpec
    from ..embedding.model import EmbeddingModel

    plain = not (Path(path) / "modules.json").is_file()
    model = EmbeddingModel.from_pretrained(
        path,
        pooling=pooling or ("last" if plain else None),
        normalize=True,
        max_length=max_length,
        is_causal=False if bidirectional else None,
    )
    if not model.spec.normalizes:
        model.spec.modules.append(NormalizeSpec())
    return model


def resolve_prompts(model, query_prompt: str | None, passage_prompt: str | None) -> tuple[str, str]:
    """The query and passage prompts (given, else the folder's "query" / "document" prompts, else ""); they become
    the model's "query" and "document" prompts (what `save_pretrained` writes)."""
    query = model.prompts.get("query", "") if query_prompt is None else query_prompt
    passage = model.prompts.get("document", "") if passage_prompt is None else passage_prompt
    model.spec.prompts.update(query=query, document=passage)
    return query, passage


def evaluate_retrieval(
    model, pairs: tuple[list[str], list[str], list[int]], query_prompt: str, passage_prompt: str, batch_size: int = 32
) -> dict[str, float]:
    """recall@1, recall@10, mrr@10 of `model` on `(queries, passages, relevant)` (`load_retrieval_pairs`): every
    query ranks all the passages."""
    from ..embedding.evaluation import retrieval_metrics

    queries, passages, relevant = pairs
    q = model.encode(queries, prompt=query_prompt, batch_size=batch_size, show_progress_bar=False)
    p = model.encode(passages, prompt=passage_prompt, batch_size=batch_size, show_progress_bar=False)
    return retrieval_metrics(q, p, relevant)


# ------------------------------------------------------------------------------------------------------------------
# Dataset and collator
# ------------------------------------------------------------------------------------------------------------------


def prompt_length(model, prompt: str | None) -> int:
    """Positions the Pooling leaves out for `prompt` (`include_prompt=False`), as `EmbeddingModel.encode` counts."""
    if not prompt or model.spec.pooling.include_prompt:
        return 0
    return model.tokenizer.prompt_length(prompt)


class RetrievalDataset(paddle.io.Dataset):
    """Tokenized retrieval examples. Item `i` is `{"query": ids, "passages": [(key, ids), ...]}`: the positive
    first, then up to `num_negatives` hard negatives; `key` identifies the passage text. Which positive and
    negatives an example gives depends on `(seed, epoch, i)` only (`set_epoch`), so a resumed run sees what an
    uninterrupted one does."""

    def __init__(
        self,
        examples: Sequence[RetrievalExample],
        tokenizer,
        query_prompt: str | None,
        passage_prompt: str | None,
        num_negatives: int,
        seed: int,
    ):
        super().__init__()
        self.examples, self.num_negatives, self.seed, self.epoch = list(examples), num_negatives, seed, 0
        self.queries = tokenizer.encode_ids([(query_prompt or "") + e.query for e in self.examples])
        texts = list(dict.fromkeys(t for e in self.examples for t in e.positives + e.negatives))
        self.key = {text: i for i, text in enumerate(texts)}
        self.passages = tokenizer.encode_ids([(passage_prompt or "") + t for t in texts])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        positive = example.positives[int(rng.integers(len(example.positives)))]
        negatives = example.negatives
        if len(negatives) > self.num_negatives:
            negatives = [negatives[i] for i in sorted(rng.choice(len(negatives), self.num_negatives, replace=False))]
        keys = [self.key[positive]] + [self.key[t] for t in negatives]
        return {"query": self.queries[index], "passages": [(k, self.passages[k]) for k in keys]}


@dataclass
class EmbeddingCollator:
    """Features of `RetrievalDataset` -> `query_ids`, `query_mask` `[B, Lq]`, `passage_ids`, `passage_mask`
    `[P, Lp]` (the batch's distinct passages, padded as the tokenizer pads) and `labels` `[B]` (the passage row
    of each query's positive)."""

    tokenizer: Any  # EmbeddingTokenizer

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Tensor]:
        column: dict[int, int] = {}
        passages: list[list[int]] = []
        for feature in features:
            for key, ids in feature["passages"]:
                if key not in column:
                    column[key] = len(passages)
                    passages.append(ids)
        query_ids, query_mask = self.tokenizer.pad([f["query"] for f in features])
        passage_ids, passage_mask = self.tokenizer.pad(passages)
        labels = np.array([column[f["passages"][0][0]] for f in features], dtype="int64")
        arrays = {"query_ids": query_ids, "query_mask": query_mask, "passage_ids": passage_ids}
        arrays.update(passage_mask=passage_mask, labels=labels)
        return {name: paddle.to_tensor(value) for name, value in arrays.items()}


class EpochCallback(TrainerCallback):
    """Tells the dataset which epoch begins (also after `--resume`: the Trainer's `state.epoch` is restored)."""

    def __init__(self, dataset: RetrievalDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor(state.epoch or 0))


class EpochShuffleSampler(paddle.io.Sampler):
    """The dataset's indices in an order drawn from `(dataset.seed, dataset.epoch)` alone. paddle's RandomSampler
    draws from the global numpy state when an epoch starts, which a run resumed in the middle of a later epoch
    does not have yet (the Trainer restores it after skipping the trained batches): its order would differ."""

    def __init__(self, dataset: RetrievalDataset):
        super().__init__()
        self.dataset = dataset

    def __iter__(self):
        rng = np.random.default_rng([self.dataset.seed, self.dataset.epoch])
        yield from rng.permutation(len(self.dataset)).tolist()

    def __len__(self) -> int:
        return len(self.dataset)


class EmbeddingTrainer(Trainer):
    """paddlenlp's Trainer with the data order of `EpochShuffleSampler` (single process; the distributed sampler
    of the Trainer has its own `set_epoch`), so `--resume` continues on the uninterrupted run's loss curve from any
    step. Needs `EpochCallback(train_dataset)` among the callbacks."""

    def _get_train_sampler(self):
        if self.args.world_size > 1:
            return super()._get_train_sampler()
        return paddle.io.BatchSampler(
            sampler=EpochShuffleSampler(self.train_dataset),
            batch_size=self.args.per_device_train_batch_size,
            drop_last=self.args.dataloader_drop_last,
        )


# ------------------------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------------------------


def matryoshka_dims(dims: Sequence[int], dimension: int) -> list[int]:
    """The dimensions the loss is averaged over: `dimension` (the full embedding) first, then each of `dims`
    (smaller than it, positive) once."""
    bad = [d for d in dims if not 0 < d <= dimension]
    if bad:
        raise ValueError(f"--matryoshka-dims {bad}: each must be in [1, {dimension}] (the embedding dimension)")
    return list(dict.fromkeys([dimension, *dims]))


def info_nce_loss(
    queries: Tensor, passages: Tensor, labels: Tensor, temperature: float, dims: Sequence[int] = ()
) -> Tensor:
    """InfoNCE of queries `[B, d]` against passages `[P, d]` (cosine similarity / `temperature`, cross-entropy to
    `labels` `[B]`), averaged over `dims` (each a prefix of the embedding, re-normalised; default: all of it).
    Returns a scalar."""
    losses = []
    for dim in dims or [queries.shape[-1]]:
        q = F.normalize(queries[:, :dim], axis=-1)
        p = F.normalize(passages[:, :dim], axis=-1)
        losses.append(F.cross_entropy(paddle.matmul(q, p, transpose_y=True) / temperature, labels))
    return paddle.add_n(losses) / len(losses)


class ContrastiveEmbeddingModel(nn.Layer):
    """The training wrapper the Trainer runs: `forward(**batch)` embeds the batch's queries and passages with
    `embedder` (an `EmbeddingModel`; prompt tokens left out of the pooling as `encode` does) and returns the
    InfoNCE loss (a scalar)."""

    def __init__(
        self,
        embedder: nn.Layer,
        temperature: float,
        dims: Sequence[int],
        query_prompt_length: int = 0,
        passage_prompt_length: int = 0,
    ):
        super().__init__()
        self.embedder = embedder
        self.temperature, self.dims = float(temperature), list(dims)
        self.query_prompt_length, self.passage_prompt_length = query_prompt_length, passage_prompt_length

    def forward(
        self, query_ids: Tensor, query_mask: Tensor, passage_ids: Tensor, passage_mask: Tensor, labels: Tensor
    ) -> Tensor:
        """query_ids, query_mask `[B, Lq]`; passage_ids, passage_mask `[P, Lp]`; labels `[B]` -> loss `[]`."""
        queries = self.embedder(query_ids, query_mask, self.query_prompt_length, normalize_embeddings=True)
        passages = self.embedder(passage_ids, passage_mask, self.passage_prompt_length, normalize_embeddings=True)
        return info_nce_loss(queries, passages, labels, self.temperature, self.dims)
