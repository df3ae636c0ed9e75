"""Corpus-scale `embed` (paddle_qwen2.embedding.corpus through the command line): shards of every format against
`EmbeddingModel.encode` on the concatenated texts, the manifest, resuming after SIGKILL, one vs two ranks
(paddle.distributed.launch and --processes) byte for byte, mismatched reruns and bad shards."""

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import EMBED_TEXTS
from paddle_qwen2.cli import main
from paddle_qwen2.embedding.corpus import Rank, Target, plan_corpus, shares
from paddle_qwen2.embedding.errors import EmbedInputError
from paddle_qwen2.embedding.shards import Shard

REPO = Path(__file__).resolve().parents[1]
WORDS = " ".join(t for t in EMBED_TEXTS if "\n" not in t).split()


def texts(n: int, seed: int) -> list[str]:
    """`n` texts of 1-20 words, deterministic."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, 21))) for _ in range(n)]


def write_corpus(root: Path) -> dict[str, list[str]]:
    """Four shards of every input format (a parquet file of two row groups, a sub-folder); their texts by name."""
    shards = {"a": texts(7, 1), "b": texts(5, 2), "sub/c": texts(6, 3), "d": texts(4, 4)}
    root.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": list(range(7)), "text": shards["a"]})
    pq.write_table(table, root / "a.parquet", row_group_size=4)
    (root / "b.jsonl").write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(shards["b"])))
    (root / "sub").mkdir()
    (root / "sub" / "c.txt").write_text("".join(t + "\n" for t in shards["sub/c"]))
    with gzip.open(root / "d.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(t) + "\n" for t in shards["d"])
    return shards


MANIFEST_INPUTS = ["a.parquet", "b.jsonl", "d.jsonl.gz", "sub/c.txt"]  # write_corpus's shards in name order


def read_vectors(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".jsonl":
        return np.array([json.loads(line)["embedding"] for line in path.read_text().splitlines()], dtype=np.float32)
    return np.array(pq.read_table(path).column("embedding").to_pylist(), dtype=np.float32)


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every visible file under `folder` (outputs and manifest)."""
    files = [p.relative_to(folder) for p in folder.rglob("*") if p.is_file()]
    visible = [p for p in files if not any(part.startswith(".") for part in p.parts)]
    return {p.as_posix(): hashlib.sha256((folder / p).read_bytes()).hexdigest() for p in visible}


@pytest.fixture(scope="module")
def model_dir(st_folder):
    return st_folder("last")


@pytest.fixture(scope="module")
def encoder(model_dir):
    from paddle_qwen2.embedding.model import EmbeddingModel

    return EmbeddingModel.from_pretrained(model_dir)


def embed(model_dir, inputs, output, *extra) -> int:
    argv = ["embed", "--model", str(model_dir), "--input", *map(str, inputs), "--output", str(output)]
    return main([*argv, "--chunk-size", "3", "--max-batch-tokens", "40", "--quiet", *extra])


# ---------------------------------------------------------------------------------------------------- one rank


@pytest.mark.parametrize("fmt", ["parquet", "npy", "jsonl"])
def test_corpus_equals_encode_of_the_concatenated_texts(model_dir, encoder, tmp_path, fmt):
    shards = write_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    assert embed(model_dir, [tmp_path / "corpus"], out, "--output-format", fmt, "--prompt-name", "query") == 0
    names = sorted(shards)
    expected = encoder.encode([t for n in names for t in shards[n]], prompt_name="query", batch_size=5)
    actual = np.concatenate([read_vectors(out / f"{n}.{fmt}") for n in names])
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-6
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["texts"] == 22 and manifest["dimension"] == 64
    assert manifest["options"]["prompt_name"] == "query" and manifest["options"]["format"] == fmt
    for record in manifest["shards"]:
        data = (out / record["output"]).read_bytes()
        assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["bytes"] == len(data)
    assert [r["rows"] for r in manifest["shards"]] == [len(shards[n]) for n in names]
    assert not list(out.rglob(".*.parts")), "parts left behind"


@pytest.mark.paddle26
def test_corpus_on_the_inference_engine(model_dir, encoder, tmp_path):
    """`--engine inference`: the exported program embeds the shards (float32: within 1e-5 of dygraph's encode)."""
    shards = write_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    assert embed(model_dir, [tmp_path / "corpus"], out, "--engine", "inference", "--output-format", "npy") == 0
    names = sorted(shards)
    expected = encoder.encode([t for n in names for t in shards[n]])
    actual = np.concatenate([np.load(out / f"{n}.npy") for n in names])
    assert np.abs(actual - expected).max() <= 1e-5
    assert json.loads((out / "manifest.json").read_text())["model"]["engine"] == "inference"


def test_parquet_and_jsonl_outputs_keep_the_input_columns(model_dir, tmp_path):
    write_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    assert embed(model_dir, [tmp_path / "corpus" / "a.parquet", tmp_path / "corpus" / "b.jsonl"], out) == 0
    table = pq.read_table(out / "a.parquet")
    assert table.column_names == ["id", "text", "embedding"] and table.column("id").to_pylist() == list(range(7))
    assert pq.ParquetFile(out / "a.parquet").metadata.num_row_groups == 3  # one per committed chunk of 3
    assert pq.read_table(out / "b.parquet").column_names == ["text", "n", "embedding"]


def test_rerun_skips_finished_shards_and_refuses_other_settings(model_dir, tmp_path, capsys):
    write_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    assert embed(model_dir, [tmp_path / "corpus"], out) == 0
    before = digests(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    argv = ["embed", "--model", str(model_dir), "--input", str(tmp_path / "corpus"), "--output", str(out)]
    assert main([*argv, "--chunk-size", "3", "--max-batch-tokens", "40"]) == 0
    assert "22 were done before" in capsys.readouterr().out
    assert digests(out) == before and {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    moved = shutil.copytree(model_dir, tmp_path / "moved")  # the same model at another path (another node)
    assert embed(moved, [tmp_path / "corpus"], out) == 0
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # resumed: nothing embedded again
    (moved / "config.json").write_text(
        (moved / "config.json").read_text().replace('"rms_norm_eps"', '"x": 1, "rms_norm_eps"')
    )
    assert embed(moved, [tmp_path / "corpus"], out) == 1
    assert "(model.fingerprint: " in capsys.readouterr().err
    before = digests(out)  # the manifest names the moved folder now
    assert embed(model_dir, [tmp_path / "corpus"], out, "--prompt-name", "query") == 1
    err = capsys.readouterr().err
    assert re.search(r"was embedded with other settings \(options\.prompt_name: None -> 'query'\)", err), err
    assert "--overwrite" in err and digests(out) == before
    assert embed(model_dir, [tmp_path / "corpus"], out, "--prompt-name", "query", "--overwrite") == 0
    assert json.loads((out / "manifest.json").read_text())["options"]["prompt_name"] == "query"
    assert digests(out) != before


def _missing_field(root: Path):
    (root / "b.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n\n{"body": "three"}\n{"text": "four"}\n')
    return r"b\.jsonl:4: no \"text\" field"


def _unreadable_parquet(root: Path):
    (root / "b.parquet").write_bytes(b"PAR1 this is not a parquet file")
    return r"b\.parquet: not a readable parquet file"


def _not_utf8(root: Path):
    (root / "b.txt").write_bytes(b"fine\nnot \xff utf-8\n")
    return r"b\.txt:2: "


@pytest.mark.parametrize("make_bad", [_missing_field, _unreadable_parquet, _not_utf8])
def test_a_bad_shard_is_named_and_finished_shards_stay(model_dir, tmp_path, capsys, make_bad):
    """A shard added to a finished corpus: the rerun names its file and line, exits 1 and leaves the rest."""
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.txt").write_text("".join(t + "\n" for t in texts(5, 0)))
    out = tmp_path / "out"
    assert embed(model_dir, [root], out) == 0
    before = digests(out)
    message = make_bad(root)
    assert embed(model_dir, [root], out) == 1
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1, err
    assert digests(out) == {k: v for k, v in before.items() if k != "manifest.json"}  # the corpus is incomplete


PLANS = [
    # (inputs, output, --output-format, expected: (folder, fmt, output names) or an error regex)
    (["a.jsonl"], "v.npy", None, (False, "npy", ["v.npy"])),
    (["a.jsonl"], "v.parquet", "parquet", (False, "parquet", ["v.parquet"])),
    (["a.jsonl"], "vectors", None, (True, "parquet", ["vectors/a.parquet"])),
    (["a.jsonl", "sub"], "vectors", "jsonl", (True, "jsonl", ["vectors/a.jsonl", "vectors/c.jsonl"])),
    (["*.jsonl"], "vectors", "npy", (True, "npy", ["vectors/a.npy"])),
    (["."], "sub", None, (True, "parquet", ["sub/a.parquet"])),  # sub/c.txt is inside the output folder
    (["sub"], "sub", None, r"sub: no input shard outside the output folder sub"),
    (["a.jsonl"], "v.csv", None, r"v\.csv: unsupported output format '\.csv'"),
    (["a.jsonl"], "v.npy", "jsonl", r"v\.npy: the file name says npy, --output-format says jsonl"),
    (["a.jsonl", "sub"], "v.npy", None, r"v\.npy: with 2 input shard\(s\) .* --output is a folder"),
    (["a.jsonl"], "nodir/v.npy", None, r"nodir/v\.npy: no such directory"),
    (["a.jsonl"], "v", "csv", r"--output-format csv: expected one of npy, jsonl, parquet"),
]  # fmt: skip


@pytest.mark.parametrize("inputs, output, fmt, expected", PLANS)
def test_plan(tmp_path, monkeypatch, inputs, output, fmt, expected):
    monkeypatch.chdir(tmp_path)
    Path("a.jsonl").write_text('"x"\n')
    Path("sub").mkdir()
    Path("sub/c.txt").write_text("y\n")
    if isinstance(expected, str):
        with pytest.raises(EmbedInputError, match=expected):
            plan_corpus(inputs, output, fmt)
        return
    plan = plan_corpus(inputs, output, fmt)
    assert (plan.folder, plan.fmt, [t.output.as_posix() for t in plan.targets]) == expected


def test_shares_balance_bytes_deterministically():
    sizes = [50, 10, 40, 30, 20, 5]
    targets = [Target(Shard(Path(f"{i}.txt"), str(i), ".txt", size), Path(f"o/{i}")) for i, size in enumerate(sizes)]
    split = shares(targets, 2)
    assert [[t.shard.name for t in share] for share in split] == [["0", "1", "4"], ["2", "3", "5"]]
    assert shares(targets, 1) == [targets] and sum(map(len, shares(targets, 8))) == 6


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, (0, 1)),
        ({"PADDLE_TRAINER_ID": "1", "PADDLE_TRAINERS_NUM": "4"}, (1, 4)),
        ({"PADDLE_TRAINER_ID": "4", "PADDLE_TRAINERS_NUM": "4"}, r"PADDLE_TRAINER_ID=4 is not in \[0, "),
        ({"PADDLE_TRAINER_ID": "x", "PADDLE_TRAINERS_NUM": "2"}, r"expected integers"),
    ],
)
def test_rank_from_the_launchers_environment(env, expected):
    if isinstance(expected, str):
        with pytest.raises(EmbedInputError, match=expected):
            Rank.from_env(env)
    else:
        assert (Rank.from_env(env).rank, Rank.from_env(env).world) == expected


# ---------------------------------------------------------------------------------------------------- processes


def command(model_dir, corpus: Path, out: Path, *extra) -> list[str]:
    return [
        sys.executable, "-m", "paddle_qwen2", "embed", "--model", str(model_dir), "--input", str(corpus),
        "--output", str(out), "--chunk-size", "3", "--max-batch-tokens", "40", *extra,
    ]  # fmt: skip


def one_thread_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


@pytest.fixture(scope="module")
def one_process_run(model_dir, encoder, tmp_path_factory):
    """The corpus embedded by one process with one thread (within 1e-6 of `encode`): the outputs every other run
    must equal byte for byte."""
    root = tmp_path_factory.mktemp("corpus-runs")
    shards = write_corpus(root / "corpus")
    out = root / "one"
    done = subprocess.run(
        command(model_dir, root / "corpus", out), env=one_thread_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"embedded 22 texts, dim 64, in [\d.]+ s \([\d.]+ texts/s, \d+ tokens/s\)", done.stdout)
    expected = encoder.encode([t for n in sorted(shards) for t in shards[n]])
    actual = np.concatenate([read_vectors(out / f"{n}.parquet") for n in sorted(shards)])
    assert np.abs(actual - expected).max() <= 1e-6
    return root, digests(out)


@pytest.mark.slow
def test_two_ranks_under_the_launcher_write_the_same_bytes(model_dir, one_process_run):
    root, expected = one_process_run
    out = root / "launch"
    launch = [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        "2",
        "--log_dir",
        str(root / "logs"),
    ]
    done = subprocess.run(
        [*launch, *command(model_dir, root / "corpus", out)],
        env=one_thread_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    logs = "\n".join(p.read_text() for p in sorted((root / "logs").glob("workerlog.*")))
    assert done.returncode == 0, done.stderr[-2000:] + logs[-3000:]
    assert digests(out) == expected
    progress = [json.loads((out / ".embed/progress" / f"rank-{r}.json").read_text()) for r in range(2)]
    assert all(p["texts"] > 0 for p in progress) and sum(p["texts"] for p in progress) == 22


@pytest.mark.slow
def test_processes_2_report_a_bad_shard_then_resume_to_the_same_bytes(model_dir, one_process_run, tmp_path):
    """`--processes 2`: a bad line fails the run (exit 1, the rank's error line), the fixed corpus resumes and
    ends equal byte for byte to one process's outputs."""
    root, expected = one_process_run
    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    good = (corpus / "b.jsonl").read_bytes()
    _missing_field(corpus)
    out = tmp_path / "processes"
    cmd = command(model_dir, corpus, out, "--processes", "2", "--threads-per-process", "1")
    done = subprocess.run(cmd, env=one_thread_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert re.search(r"^error: \S*b\.jsonl:4: no \"text\" field", done.stderr, re.M), done.stderr
    (corpus / "b.jsonl").write_bytes(good)
    done = subprocess.run(cmd, env=one_thread_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"embedded 22 texts, dim 64, in [\d.]+ s", done.stdout), done.stdout
    assert re.search(r"Embedding: 100%\|.*\| 22/22 \[.*text/s, [\d,]+ tokens/s\]", done.stderr), (
        done.stderr
    )  # both ranks
    outputs = {name: digest for name, digest in digests(out).items() if name != "manifest.json"}
    assert outputs == {name: digest for name, digest in expected.items() if name != "manifest.json"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["input"] for r in manifest["shards"]] == [str(corpus / n) for n in MANIFEST_INPUTS]
    assert [r["sha256"] for r in manifest["shards"]] == [outputs[r["output"]] for r in manifest["shards"]]
    assert sorted(p.name for p in (out / ".embed" / "logs").glob("workerlog.*")) == ["workerlog.0", "workerlog.1"]


@pytest.mark.slow
def test_sigkill_mid_shard_then_rerun_gives_the_same_bytes(model_dir, tmp_path):
    """One shard of 600 texts in chunks of 20: killed once some chunks are committed, resumed by the same
    command, equal byte for byte to an uninterrupted run (in this process: the same thread settings)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "big.txt").write_text("".join(t + "\n" for t in texts(600, 7)))
    (corpus / "small.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts(10, 8)))
    options = ["--chunk-size", "20", "--max-batch-tokens", "200"]
    argv = ["embed", "--model", str(model_dir), "--input", str(corpus), *options, "--output"]
    assert main([*argv, str(tmp_path / "whole"), "--quiet"]) == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "paddle_qwen2", *argv, str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([*cmd, "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / ".big.parquet.parts"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("*"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "big.parquet").exists() and not (out / "manifest.json").exists(), "killed too late"
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    done_before = int(re.search(r"; (\d+) were done before", resumed.stdout).group(1))
    assert 0 < done_before < 610
    assert digests(out) == digests(tmp_path / "whole")
