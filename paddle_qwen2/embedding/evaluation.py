"""Retrieval metrics for sentence embeddings (numpy only, no paddle).

`load_retrieval_pairs` reads a JSONL file of `{"query": str, "pos": str, ...}` rows (other keys, such as the
`neg` list of a training file, are ignored) into the queries, the corpus (the distinct `pos` passages in
first-seen order) and the index of each query's relevant passage in that corpus. `retrieval_metrics` ranks the
whole corpus for every query by cosine similarity and reports recall@1, recall@10 and MRR@10.

Ties count against the model: a passage that scores exactly as high as the relevant one is ranked before it, so
an encoder that maps everything to the same vector scores recall@1 = 0 (with more than one passage), not 1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..jsonl import JSONLError, read_jsonl

__all__ = ["load_retrieval_pairs", "retrieval_metrics"]


def _as_matrix(name: str, x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, dim], got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must be a numeric array, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)  # a zero vector stays zero: cosine 0 with everything


def retrieval_metrics(
    query_embeddings: np.ndarray, passage_embeddings: np.ndarray, relevant: Sequence[int]
) -> dict[str, float]:
    """recall@1, recall@10 and mrr@10 of ranking all passages for each query by cosine similarity.

    query_embeddings: [q, d]; passage_embeddings: [p, d]; relevant[i]: index (into the passages) of query i's one
    relevant passage. The rank of the relevant passage is 1 + the number of OTHER passages scoring at least as
    high (ties count against it). recall@k: fraction of queries with rank <= k; mrr@10: mean of 1/rank, counting
    0 for rank > 10.
    """
    q = _as_matrix("query_embeddings", query_embeddings)
    p = _as_matrix("passage_embeddings", passage_embeddings)
    if q.shape[0] == 0:
        raise ValueError("query_embeddings is empty: no queries to evaluate")
    if p.shape[0] == 0:
        raise ValueError("passage_embeddings is empty: no passages to rank")
    if q.shape[1] != p.shape[1]:
        raise ValueError(f"query and passage embeddings differ in dimension: {q.shape[1]} vs {p.shape[1]}")
    rel = np.asarray(relevant)
    if rel.ndim != 1 or rel.shape[0] != q.shape[0]:
        raise ValueError(f"relevant must hold one passage index per query ({q.shape[0]}), got shape {rel.shape}")
    if rel.size and not np.issubdtype(rel.dtype, np.integer):
        raise ValueError(f"relevant must hold integer passage indices, got dtype {rel.dtype}")
    rel = rel.astype(np.int64)
    bad = np.flatnonzero((rel < 0) | (rel >= p.shape[0]))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"relevant[{i}] = {int(rel[i])} is not a passage index (there are {p.shape[0]} passages)")

    scores = _normalise(q) @ _normalise(p).T  # [q, p]
    target = scores[np.arange(q.shape[0]), rel][:, None]
    ranks = (scores >= target).sum(axis=1)  # counts the relevant passage itself, so rank 1 = nothing else as high
    reciprocal = np.where(ranks <= 10, 1.0 / ranks, 0.0)
    return {
        "recall@1": float(np.mean(ranks <= 1)),
        "recall@10": float(np.mean(ranks <= 10)),
        "mrr@10": float(np.mean(reciprocal)),
    }


def load_retrieval_pairs(path: str | os.PathLike) -> tuple[list[str], list[str], list[int]]:
    """(queries, passages, relevant) from a JSONL file of {"query": str, "pos": str} rows.

    passages are the distinct `pos` strings in first-seen order; relevant[i] is the index of query i's `pos` in
    them. Blank lines are skipped; a missing file, a line that is not valid JSON or a row without non-empty string
    `query` and `pos` raises `JSONLError` naming FILE:LINE; so does a file with no rows.
    """
    path = os.fspath(path)
    queries: list[str] = []
    passages: list[str] = []
    index: dict[str, int] = {}
    relevant: list[int] = []
    for number, row in read_jsonl(path):
        where = f"{path}:{number}"
        if not isinstance(row, dict):
            raise JSONLError(f"{where}: expected a JSON object with 'query' and 'pos', got {type(row).__name__}")
        for key in ("query", "pos"):
            if key not in row:
                raise JSONLError(f"{where}: missing key {key!r} (a row needs 'query' and 'pos')")
            value = row[key]
            if not isinstance(value, str):
                raise JSONLError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
            if not value.strip():
                raise JSONLError(f"{where}: {key!r} is empty")
        pos = row["pos"]
        if pos not in index:
            index[pos] = len(passages)
            passages.append(pos)
        queries.append(row["query"])
        relevant.append(index[pos])
    if not queries:
        raise JSONLError(f"{path}: no retrieval pairs (the file is empty)")
    return queries, passages, relevant
