"""paddle_qwen2.embedding.evaluation: retrieval metrics on hand-computed cases, the JSONL loader and its errors,
and the bundled retrieval pairs (examples/data/retrieval_*.jsonl)."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from paddle_qwen2.embedding.evaluation import load_retrieval_pairs, retrieval_metrics

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"


def ray(degrees: float, length: float = 1.0):
    """A 2-D vector at `degrees` from the x axis: its cosine with [1, 0] falls as the angle grows."""
    return [length * math.cos(math.radians(degrees)), length * math.sin(math.radians(degrees))]


FAN = [ray(10 * k) for k in range(12)]  # 12 passages, ranked by index for the query [1, 0]

# (queries, passages, relevant, recall@1, recall@10, mrr@10), each worked out by hand
METRIC_CASES = {
    "perfect": ([[1, 0], [0, 1]], [[1, 0], [0, 1]], [0, 1], 1.0, 1.0, 1.0),
    "both second": ([[1, 0], [0, 1]], [[1, 0], [0, 1]], [1, 0], 0.0, 1.0, 0.5),
    # cosine, not dot product: the dot product would prefer the long passage [5, 5]
    "cosine not dot": ([[10, 0]], [[0.1, 0], [5, 5]], [0], 1.0, 1.0, 1.0),
    # ranks 1, 3 and 12: recall@1 1/3, recall@10 2/3, mrr (1 + 1/3 + 0) / 3
    "ranks 1 3 12": ([[1, 0]] * 3, FAN, [0, 2, 11], 1 / 3, 2 / 3, 4 / 9),
    # ranks 10 and 11: the 10th still counts (1/10), the 11th does not
    "rank 10 boundary": ([[1, 0]] * 2, FAN[:11], [9, 10], 0.0, 0.5, 0.05),
    # the same direction scores the same whatever the length: the tie counts against the relevant passage
    "tie counts against": ([[1, 0]], [[1, 0], [2, 0]], [1], 0.0, 1.0, 0.5),
    "tie, relevant first": ([[1, 0]], [[1, 0], [2, 0]], [0], 0.0, 1.0, 0.5),
    # an encoder that maps everything to one vector ranks the relevant passage last (5 of 5)
    "constant encoder": ([[1, 1]] * 3, [[2, 2]] * 5, [0, 1, 4], 0.0, 1.0, 0.2),
    # a zero query has cosine 0 with everything: a tie with both passages
    "zero query": ([[0, 0]], [[1, 0], [0, 1]], [0], 0.0, 1.0, 0.5),
    "opposite below orthogonal": ([[1, 0]], [[-1, 0], [0, 1]], [0], 0.0, 1.0, 0.5),
    # per-query ranks 1, 2, 1, 4 over 4 passages (3-D): mrr (1 + 1/2 + 1 + 1/4) / 4
    "three dims": (
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]],
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0.9, 0]],
        [0, 3, 2, 2],
        0.5,
        1.0,
        0.6875,
    ),
}


@pytest.mark.parametrize("name", sorted(METRIC_CASES))
def test_retrieval_metrics_hand_computed(name):
    queries, passages, relevant, r1, r10, mrr = METRIC_CASES[name]
    metrics = retrieval_metrics(np.array(queries, dtype=np.float32), np.array(passages, dtype=np.float32), relevant)
    assert set(metrics) == {"recall@1", "recall@10", "mrr@10"}
    assert all(type(v) is float for v in metrics.values())
    assert metrics["recall@1"] == pytest.approx(r1)
    assert metrics["recall@10"] == pytest.approx(r10)
    assert metrics["mrr@10"] == pytest.approx(mrr)


def test_retrieval_metrics_accepts_numpy_relevant_and_ignores_passage_order():
    rng = np.random.default_rng(0)
    q, p = rng.normal(size=(6, 8)), rng.normal(size=(9, 8))
    relevant = np.array([0, 3, 3, 8, 1, 5])
    perm = rng.permutation(9)
    inverse = np.argsort(perm)
    assert retrieval_metrics(q, p, relevant) == retrieval_metrics(q, p[perm], inverse[relevant].tolist())


BAD_METRIC_INPUTS = {
    "1-D queries": (np.ones(3), np.ones((2, 3)), [0], "2-D"),
    "no queries": (np.ones((0, 3)), np.ones((2, 3)), [], "no queries"),
    "no passages": (np.ones((1, 3)), np.ones((0, 3)), [0], "no passages"),
    "dimension mismatch": (np.ones((1, 3)), np.ones((2, 4)), [0], "dimension: 3 vs 4"),
    "too few relevant": (np.ones((2, 3)), np.ones((2, 3)), [0], r"one passage index per query \(2\)"),
    "relevant out of range": (np.ones((2, 3)), np.ones((2, 3)), [0, 2], r"relevant\[1\] = 2 is not a passage index"),
    "negative relevant": (np.ones((1, 3)), np.ones((2, 3)), [-1], r"relevant\[0\] = -1"),
    "float relevant": (np.ones((1, 3)), np.ones((2, 3)), [0.0], "integer"),
    "nan": (np.array([[np.nan, 1.0]]), np.ones((2, 2)), [0], "NaN"),
    "strings": (np.array([["a", "b"]]), np.ones((2, 2)), [0], "numeric"),
}


@pytest.mark.parametrize("name", sorted(BAD_METRIC_INPUTS))
def test_retrieval_metrics_refuses_bad_input(name):
    queries, passages, relevant, message = BAD_METRIC_INPUTS[name]
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(queries, passages, relevant)


# -------------------------------------------------------------------------------------------------- the loader


def test_load_retrieval_pairs_dedups_passages_in_first_seen_order(tmp_path):
    rows = [
        {"query": "What is the capital of Norway?", "pos": "Oslo is the capital of Norway."},
        {"query": "挪威的首都是哪里？", "pos": "奥斯陆是挪威的首都。", "neg": ["斯德哥尔摩是瑞典的首都。"]},
        {"query": "Which city is the capital of Norway?", "pos": "Oslo is the capital of Norway."},
        {"query": "Where is Norway?", "pos": "Norway is a country in Europe."},
    ]
    path = tmp_path / "pairs.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n   \n", encoding="utf-8")  # blank lines skipped
    queries, passages, relevant = load_retrieval_pairs(path)
    assert queries == [r["query"] for r in rows]
    assert passages == ["Oslo is the capital of Norway.", "奥斯陆是挪威的首都。", "Norway is a country in Europe."]
    assert relevant == [0, 1, 0, 2]
    assert load_retrieval_pairs(str(path)) == (queries, passages, relevant)


GOOD = '{"query": "q", "pos": "p"}'

# (file content, line named in the error, message)
BAD_FILES = {
    "invalid json": (GOOD + "\n" + '{"query": "q", "pos": }\n', 2, "not valid JSON (Expecting value at column 23)"),
    "not an object": (GOOD + "\n" + '["q", "p"]\n', 2, "expected a JSON object"),
    "missing pos": ('{"query": "q"}\n', 1, "missing key 'pos'"),
    "missing query": ("\n" + GOOD + "\n" + '{"pos": "p"}\n', 3, "missing key 'query'"),
    "pos not a string": ('{"query": "q", "pos": ["p"]}\n', 1, "'pos' must be a string, got list"),
    "empty query": (GOOD + "\n" + '{"query": "  ", "pos": "p"}\n', 2, "'query' is empty"),
    "not utf-8": (GOOD.encode() + b'\n{"query": "\xff"}\n', 2, "not valid UTF-8 (invalid start byte at byte 12)"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_load_retrieval_pairs_names_file_and_line(tmp_path, name):
    content, line, message = BAD_FILES[name]
    path = tmp_path / "bad.jsonl"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with pytest.raises(ValueError, match=re.escape(f"{path}:{line}: ") + re.escape(message)):
        load_retrieval_pairs(path)


def test_load_retrieval_pairs_refuses_an_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}: no retrieval pairs")):
        load_retrieval_pairs(path)


# ------------------------------------------------------------------------------------ the bundled retrieval pairs


def test_bundled_retrieval_pairs_are_held_out_and_well_formed():
    train = [json.loads(line) for line in (DATA / "retrieval_train.jsonl").read_text(encoding="utf-8").splitlines()]
    queries, passages, relevant = load_retrieval_pairs(DATA / "retrieval_eval.jsonl")
    assert 300 <= len(train) <= 600 and 60 <= len(queries) <= 120
    assert len(passages) >= 40 and sorted(set(relevant)) == list(range(len(passages)))
    for row in train:
        assert set(row) == {"query", "pos", "neg"} and 1 <= len(row["neg"]) <= 3 and row["pos"] not in row["neg"]
    seen = {r["query"] for r in train} | {p for r in train for p in [r["pos"], *r["neg"]]}
    assert not seen & set(queries) and not seen & set(passages)  # held out: no eval query or passage in training
    # both languages in both files
    assert any(q.isascii() for q in queries) and not all(q.isascii() for q in queries)
    assert any(r["query"].isascii() for r in train) and not all(r["query"].isascii() for r in train)
