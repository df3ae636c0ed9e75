"""HF <-> Paddle checkpoint conversion end to end (paddle_qwen2.conversion, the `paddle-qwen2 convert` CLI, and
`from_pretrained` on HF folders), checked against HF transformers run live on checkpoints it wrote itself: every
input kind and head gives HF's logits, round trips are byte-identical, bad inputs fail clearly and write nothing,
interrupted runs leave no output. The readers and the writer have their own files (test_conversion_readers.py,
test_conversion_writer.py)."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import paddle
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file
from safetensors.torch import load_file as load_torch_file

from conftest import BASE, HEAD_CONFIG, HF_HEADS, PADDLE_HEADS, VARIANTS, assert_close, load_hf, redraw_weights
from paddle_qwen2 import Qwen2Config, Qwen2ForCausalLM
from paddle_qwen2.cli import main
from paddle_qwen2.conversion import (
    ConversionError,
    ModelDims,
    convert_checkpoint,
    expected_hf_shape,
    open_checkpoint,
    read_paddle_state_dict,
    writer,
)
from paddle_qwen2.conversion.names import conversion_rows

ROOT = Path(__file__).resolve().parent.parent
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def write_hf(
    path: Path, head: str = "causal_lm", variant: str = "gqa", dtype: str = "float32", seed: int = 0, **save_kwargs
) -> Path:
    """An HF checkpoint written by transformers' save_pretrained (re-drawn weights, cast to `dtype`)."""
    config = transformers.Qwen2Config(**{**BASE, **VARIANTS[variant], **HEAD_CONFIG.get(head, {})})
    torch.manual_seed(seed)
    model = getattr(transformers, HF_HEADS[head])(config)
    redraw_weights(model, seed)
    model.to(TORCH_DTYPES[dtype]).save_pretrained(path, **save_kwargs)
    return path


@pytest.fixture(scope="module")
def hf_kinds(tmp_path_factory):
    """One causal-LM checkpoint per input kind: the same weights as single / sharded safetensors and .bin."""
    root = tmp_path_factory.mktemp("kinds")
    return {
        "safetensors": write_hf(root / "safetensors"),
        "sharded_safetensors": write_hf(root / "sharded_safetensors", max_shard_size="200KB"),
        "bin": write_hf(root / "bin", safe_serialization=False),
        "sharded_bin": write_hf(root / "sharded_bin", safe_serialization=False, max_shard_size="200KB"),
    }


def ids_batch(seed: int = 3, vocab: int = 128):
    return np.random.RandomState(seed).randint(2, vocab, size=(2, 11)).astype("int64")


def hf_logits(model, ids, head: str):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids))
    if head == "qa":
        return np.stack([out.start_logits.float().numpy(), out.end_logits.float().numpy()])
    return out.logits.float().numpy()


def paddle_logits(model, ids, head: str):
    model.eval()  # (paddle 2.6's Layer.eval returns None, so no chaining)
    out = model(input_ids=paddle.to_tensor(ids), return_dict=True)
    if head == "qa":
        return np.stack([out.start_logits.numpy(), out.end_logits.numpy()])
    return out.logits.astype("float32").numpy()


def cli(*args) -> int:
    return main(["convert", *[str(a) for a in args], "--quiet"])


def tensors_by_name(folder: Path) -> dict:
    """Every tensor of a safetensors checkpoint as torch tensors (bf16 included), following the index."""
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    out = {}
    for name in files:
        out.update(load_torch_file(str(folder / name)))
    return out


def no_output(dst: Path) -> bool:
    """Neither DST nor a leftover temp folder beside it."""
    return not dst.exists() and not list(dst.parent.glob(f".{dst.name}.*"))


# ---------------------------------------------------------------------------------------------------- names


@pytest.mark.paddle26
@pytest.mark.parametrize("tied", [False, True])
def test_name_table_is_the_models_mapping_and_shapes_match(tied):
    """conversion's rows are what `_get_name_mappings` returns, and expected shapes are the models' own."""
    config = Qwen2Config(**{**BASE, "tie_word_embeddings": tied, "num_labels": 3})
    dims = ModelDims.from_config(config)
    for head, cls in PADDLE_HEADS.items():
        rows = [(m.source_name, m.target_name, m.action) for m in cls._get_name_mappings(config)]
        assert rows == conversion_rows(cls.__name__, dims), head
        params = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
        assert set(params) == {pd for _, pd, _ in rows}, head
        for hf, pd, action in rows:
            shape = expected_hf_shape(hf, dims)
            assert params[pd] == (shape[::-1] if action == "transpose" else shape), (head, hf)


# ---------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    "kind", [pytest.param("safetensors", marks=pytest.mark.paddle26), "sharded_safetensors", "bin", "sharded_bin"]
)
def test_each_input_kind_converts_and_gives_hf_logits(hf_kinds, tmp_path, kind):
    src, dst = hf_kinds[kind], tmp_path / "pd"
    assert cli("--from-hf", src, "--out", dst) == 0
    assert (dst / "model.safetensors").is_file() and (dst / "generation_config.json").is_file()
    ids = ids_batch()
    expected = hf_logits(load_hf(src), ids, "causal_lm")
    assert_close(paddle_logits(Qwen2ForCausalLM.from_pretrained(dst), ids, "causal_lm"), expected, what=kind)
    direct = Qwen2ForCausalLM.from_pretrained(src)  # the HF folder itself, converted in memory
    assert_close(paddle_logits(direct, ids, "causal_lm"), expected, what=f"{kind} direct")


@pytest.mark.paddle26
@pytest.mark.parametrize("head", ["seq_cls", "token_cls", "qa", "tied"])
def test_every_head_converts_and_gives_hf_logits(hf_checkpoint, tmp_path, head):
    variant, head = ("tied", "causal_lm") if head == "tied" else ("gqa", head)
    src, dst = hf_checkpoint(variant, head), tmp_path / "pd"
    assert cli("--from-hf", src, "--out", dst) == 0
    cls = PADDLE_HEADS[head]
    ids = ids_batch()
    expected = hf_logits(load_hf(src, head), ids, head)
    assert_close(paddle_logits(cls.from_pretrained(dst), ids, head), expected, what=f"{head} converted")
    assert_close(paddle_logits(cls.from_pretrained(src), ids, head), expected, what=f"{head} direct")
    if variant == "tied":
        assert "lm_head.weight" not in tensors_by_name(dst)


def test_causal_lm_checkpoint_initialises_other_heads_like_hf(hf_checkpoint):
    """An HF causal-LM folder loads into the base model and the sentence-embedding model (lm_head dropped)."""
    src = hf_checkpoint("gqa")
    ids = ids_batch()
    with torch.no_grad():
        expected = load_hf(src, "base")(input_ids=torch.tensor(ids)).last_hidden_state.numpy()
    base = PADDLE_HEADS["base"].from_pretrained(src)
    base.eval()
    assert_close(base(input_ids=paddle.to_tensor(ids), return_dict=True).last_hidden_state, expected)
    from paddle_qwen2 import Qwen2SentenceEmbedding

    embedder = Qwen2SentenceEmbedding.from_pretrained(src)
    embedder.eval()
    out = embedder(input_ids=paddle.to_tensor(ids), return_dict=True)
    assert_close(out.last_hidden_state, expected)


# ---------------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("dtype", [pytest.param("float32", marks=pytest.mark.paddle26), "bfloat16", "float16"])
def test_hf_paddle_hf_is_byte_identical_and_loads_in_transformers(tmp_path, dtype):
    src = write_hf(tmp_path / "hf", dtype=dtype, max_shard_size="200KB")
    pd, back = tmp_path / "pd", tmp_path / "back"
    assert cli("--from-hf", src, "--out", pd) == 0
    assert cli("--to-hf", pd, "--out", back) == 0
    original, returned = tensors_by_name(src), tensors_by_name(back)
    assert original.keys() == returned.keys()
    for name, tensor in original.items():
        assert returned[name].dtype == tensor.dtype, name
        assert returned[name].view(torch.uint8).equal(tensor.view(torch.uint8)), name
    # paddlenlp's own layout in between: bf16 as uint16 bits, Linear weights transposed, same bits
    paddle_side = open_checkpoint(pd, "paddle").entries
    q = paddle_side["qwen2.layers.0.self_attn.q_proj.weight"]
    assert q.dtype == {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[dtype]
    raw = original["model.layers.0.self_attn.q_proj.weight"].view(torch.int16 if dtype != "float32" else torch.int32)
    assert np.array_equal(q.read().view(raw.numpy().dtype), raw.numpy().T)
    assert json.loads((pd / "config.json").read_text())["dtype"] == dtype
    ids = ids_batch()
    reloaded, first = (transformers.Qwen2ForCausalLM.from_pretrained(p, dtype="auto").eval() for p in (back, src))
    assert next(reloaded.parameters()).dtype == TORCH_DTYPES[dtype]
    np.testing.assert_array_equal(hf_logits(reloaded, ids, "causal_lm"), hf_logits(first, ids, "causal_lm"))
    model = Qwen2ForCausalLM.from_pretrained(pd, dtype=dtype)  # kept in the checkpoint's dtype when asked
    assert str(model.qwen2.embed_tokens.weight.dtype).endswith(dtype)
    embed = model.qwen2.embed_tokens.weight
    embed_bits = embed.astype("float32").numpy() if dtype == "bfloat16" else embed.numpy()
    assert np.array_equal(embed_bits, original["model.embed_tokens.weight"].float().numpy())
    # the HF folder itself, upcast on load like transformers' default float32
    direct = Qwen2ForCausalLM.from_pretrained(src, dtype="float32")
    assert_close(paddle_logits(direct, ids, "causal_lm"), hf_logits(load_hf(src), ids, "causal_lm"))


@pytest.mark.parametrize("head", ["seq_cls", "token_cls", "qa", "tied", "base"])
def test_every_head_round_trips_byte_identical(hf_checkpoint, tmp_path, head):
    variant, head = ("tied", "causal_lm") if head == "tied" else ("gqa", head)
    src, pd, back = hf_checkpoint(variant, head), tmp_path / "pd", tmp_path / "back"
    assert cli("--from-hf", src, "--out", pd) == 0 and cli("--to-hf", pd, "--out", back) == 0
    original, returned = tensors_by_name(src), tensors_by_name(back)
    assert original.keys() == returned.keys() and all(returned[k].equal(original[k]) for k in original)
    config = json.loads((back / "config.json").read_text())
    assert config["architectures"] == json.loads((src / "config.json").read_text())["architectures"]


def test_paddle_save_pretrained_converts_to_hf(hf_checkpoint, tmp_path):
    """The way back after fine-tuning: paddlenlp's save_pretrained folder -> HF, which transformers loads."""
    converted = tmp_path / "pd"
    assert cli("--from-hf", hf_checkpoint("gqa"), "--out", converted) == 0
    model = Qwen2ForCausalLM.from_pretrained(converted)
    model.save_pretrained(tmp_path / "resaved", safe_serialization=True)  # paddlenlp writes what we wrote
    ours = load_file(str(converted / "model.safetensors"))
    paddlenlps = load_file(str(tmp_path / "resaved" / "model.safetensors"))
    assert ours.keys() == paddlenlps.keys() and all(np.array_equal(ours[k], paddlenlps[k]) for k in ours)
    with paddle.no_grad():
        model.qwen2.layers[0].mlp.up_proj.weight.set_value(model.qwen2.layers[0].mlp.up_proj.weight * 1.5)
    saved, hf = tmp_path / "saved", tmp_path / "hf"
    model.save_pretrained(saved, safe_serialization=True, max_shard_size="200KB")
    assert cli("--to-hf", saved, "--out", hf) == 0
    config = json.loads((hf / "config.json").read_text())
    assert "tensor_parallel_degree" not in config and config["architectures"] == ["Qwen2ForCausalLM"]
    ids = ids_batch()
    assert_close(hf_logits(load_hf(hf), ids, "causal_lm"), paddle_logits(model, ids, "causal_lm"))


def test_sentence_embedding_model_converts_to_hf_base_model(hf_checkpoint, tmp_path):
    from paddle_qwen2 import Qwen2SentenceEmbedding

    embedder = Qwen2SentenceEmbedding.from_pretrained(hf_checkpoint("gqa"))
    embedder.eval()
    embedder.save_pretrained(tmp_path / "saved", safe_serialization=True)
    assert cli("--to-hf", tmp_path / "saved", "--out", tmp_path / "hf") == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["Qwen2Model"]
    ids = ids_batch()
    with torch.no_grad():
        hidden = load_hf(tmp_path / "hf", "base")(input_ids=torch.tensor(ids)).last_hidden_state
    assert_close(embedder(input_ids=paddle.to_tensor(ids), return_dict=True).last_hidden_state, hidden)


def test_dtype_conversion_only_when_asked(hf_checkpoint, tmp_path):
    src = hf_checkpoint("gqa")
    assert cli("--from-hf", src, "--out", tmp_path / "same") == 0
    assert {e.dtype for e in open_checkpoint(tmp_path / "same", "paddle").entries.values()} == {"F32"}
    assert cli("--from-hf", src, "--out", tmp_path / "bf16", "--dtype", "bfloat16") == 0
    converted = load_file(str(tmp_path / "bf16" / "model.safetensors"))  # paddle layout: bf16 as uint16 bits
    original = load_torch_file(str(src / "model.safetensors"))
    weight = original["model.layers.1.mlp.down_proj.weight"].to(torch.bfloat16).view(torch.int16).numpy()
    assert np.array_equal(converted["qwen2.layers.1.mlp.down_proj.weight"].view(np.int16), weight.T)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


# ---------------------------------------------------------------------------------------------------- .bin


def test_bin_converts_where_torch_cannot_be_imported(hf_kinds, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ImportError('torch is blocked in this test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), str(ROOT)]))
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "blocked" in check.stderr
    dst = tmp_path / "pd"
    run = subprocess.run(
        [sys.executable, "-m", "paddle_qwen2", "convert", "--from-hf", str(hf_kinds["sharded_bin"]), "--out", str(dst)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "tensors" in run.stdout and "parameters" in run.stdout and "seconds" in run.stdout
    reference = tmp_path / "reference"
    assert cli("--from-hf", hf_kinds["safetensors"], "--out", reference) == 0
    ours, theirs = tensors_by_name(dst), tensors_by_name(reference)
    assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_globals_are_refused(tmp_path, capsys):
    src = tmp_path / "evil"
    write_hf(src, safe_serialization=False)
    marker = tmp_path / "pwned"
    state = torch.load(src / "pytorch_model.bin", weights_only=True)
    state["model.embed_tokens.weight"] = _Evil(marker)
    torch.save(state, src / "pytorch_model.bin")
    assert cli("--from-hf", src, "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "refusing to unpickle global posix.system" in err and err.count("\n") == 1
    assert not marker.exists() and no_output(tmp_path / "out")
    with pytest.raises(ConversionError, match="refusing to unpickle"):
        Qwen2ForCausalLM.from_pretrained(src)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------- bad input


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite_tensors(folder: Path, edit) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _flip_storage_byte(folder: Path) -> None:
    path = folder / "pytorch_model.bin"
    with zipfile.ZipFile(path) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _bad_input(kind: str, tmp: Path, kinds: dict) -> Path:
    good, good_bin, sharded = kinds["safetensors"], kinds["bin"], kinds["sharded_safetensors"]
    if kind == "missing_folder":
        return tmp / "does-not-exist"
    if kind == "no_weights":
        folder = tmp / "bad"
        folder.mkdir()
        shutil.copy(good / "config.json", folder)
        return folder
    if kind in ("bin_truncated", "bin_corrupted", "bin_shard_missing"):
        folder = _copy(good_bin if kind != "bin_shard_missing" else kinds["sharded_bin"], tmp / "bad")
        if kind == "bin_truncated":
            data = (folder / "pytorch_model.bin").read_bytes()
            (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
        elif kind == "bin_corrupted":
            _flip_storage_byte(folder)
        else:
            sorted(folder.glob("pytorch_model-*.bin"))[-1].unlink()
        return folder
    folder = _copy(sharded if kind == "shard_missing" else good, tmp / "bad")
    if kind == "model_type":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(dict(config, model_type="llama")))
    elif kind == "missing_tensor":
        _rewrite_tensors(folder, lambda t: t.pop("model.layers.2.mlp.up_proj.weight"))
    elif kind == "unexpected_tensor":
        _rewrite_tensors(
            folder, lambda t: t.update({"model.layers.9.mlp.up_proj.weight": np.zeros((2, 2), np.float32)})
        )
    elif kind == "wrong_shape":
        _rewrite_tensors(
            folder, lambda t: t.update({"model.layers.1.self_attn.k_proj.weight": np.zeros((64, 64), np.float32)})
        )
    elif kind == "truncated":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[:-100])
    elif kind == "corrupted_header":
        data = bytearray((folder / "model.safetensors").read_bytes())
        data[8:20] = b"\x00garbage!!\xff\xfe"
        (folder / "model.safetensors").write_bytes(bytes(data))
    elif kind == "shard_missing":
        sorted(folder.glob("model-*.safetensors"))[-1].unlink()
    return folder


BAD_INPUTS = {
    "missing_folder": "no such folder",
    "no_weights": "no weights file",
    "model_type": "model_type is 'llama', expected 'qwen2'",
    "missing_tensor": "tensor 'model.layers.2.mlp.up_proj.weight' is missing",
    "unexpected_tensor": "unexpected tensor 'model.layers.9.mlp.up_proj.weight'",
    "wrong_shape": "'model.layers.1.self_attn.k_proj.weight' has shape [64, 64], expected [32, 64]",
    "truncated": "truncated safetensors file",
    "corrupted_header": "corrupted safetensors header",
    "shard_missing": "which does not exist",
    "bin_truncated": "not a PyTorch zip checkpoint",
    "bin_corrupted": "CRC-32 mismatch",
    "bin_shard_missing": "which does not exist",
}


LOAD_ERRORS = ("wrong_shape", "truncated", "corrupted_header", "shard_missing", "bin_truncated", "bin_corrupted")


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_fails_clearly_and_writes_nothing(hf_kinds, tmp_path, capsys, kind):
    src = _bad_input(kind, tmp_path, hf_kinds)
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} if src.exists() else {}
    dst = tmp_path / "out" / "pd"
    assert cli("--from-hf", src, "--out", dst) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and BAD_INPUTS[kind] in err, err
    assert no_output(dst)
    assert before == ({p: p.read_bytes() for p in src.rglob("*") if p.is_file()} if src.exists() else {})
    if kind in LOAD_ERRORS:  # from_pretrained on the HF folder fails the same way (missing / extra tensors only warn)
        with pytest.raises(ConversionError, match=BAD_INPUTS[kind].split("'")[0]):
            Qwen2ForCausalLM.from_pretrained(src)


def test_output_rules(hf_checkpoint, tmp_path, capsys):
    src = _copy(hf_checkpoint("gqa"), tmp_path / "src")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in src.iterdir())
    dst = tmp_path / "pd"
    dst.mkdir()
    (dst / "keep.txt").write_text("x")
    assert cli("--from-hf", src, "--out", dst) == 1 and "--force" in capsys.readouterr().err
    assert (dst / "keep.txt").exists() and not (dst / "model.safetensors").exists()
    assert cli("--from-hf", src, "--out", dst, "--force") == 0
    assert not (dst / "keep.txt").exists() and (dst / "model.safetensors").exists()
    assert cli("--from-hf", src, "--out", src / "inside") == 1 and "inside" in capsys.readouterr().err
    assert cli("--from-hf", src, "--out", src, "--force") == 1
    assert cli("--to-hf", src, "--out", tmp_path / "x") == 1 and "use --from-hf" in capsys.readouterr().err
    assert cli("--from-hf", dst, "--out", tmp_path / "y") == 1 and "use --to-hf" in capsys.readouterr().err
    assert main(["convert", "--from-hf", str(src)]) == 2 and "--out" in capsys.readouterr().err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in src.iterdir()) == before


def test_summary_and_tokenizer_files(hf_checkpoint, tmp_path, capsys):
    src = _copy(hf_checkpoint("gqa"), tmp_path / "src")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (src / name).write_text("{}")
    assert main(["convert", "--from-hf", str(src), "--out", str(tmp_path / "pd"), "--max-shard-size", "150KB"]) == 0
    out = capsys.readouterr().out
    for line in (
        "tensors       39",
        "parameters    118,592",
        "dtype         float32",
        "bytes         474,368",
        "seconds",
    ):
        assert line in out, out
    assert len(out.splitlines()) <= 12
    files = sorted(p.name for p in (tmp_path / "pd").iterdir())
    assert "tokenizer.json" in files and "merges.txt" in files and "model.safetensors.index.json" in files
    assert len([f for f in files if f.startswith("model-")]) >= 3


# ---------------------------------------------------------------------------------------------------- interruption


_KILL_SCRIPT = """
import sys, time
from paddle_qwen2.cli import main
from paddle_qwen2.conversion import writer
write = writer._pwrite_all
def slow_write(fd, data, offset):
    write(fd, data, offset)
    if offset > 0:  # past the header: tensor data is being written
        print("WRITING", flush=True)
        time.sleep(60)
writer._pwrite_all = slow_write
sys.exit(main(["convert", "--from-hf", sys.argv[1], "--out", sys.argv[2], "--quiet"]))
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_conversion_leaves_no_dst(hf_checkpoint, tmp_path, sig):
    dst = tmp_path / "pd"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(hf_checkpoint("gqa")), str(dst)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "WRITING"  # the first shard file has been started
        partial = list(tmp_path.glob(".pd.partial-*"))
        assert len(partial) == 1 and (partial[0] / "model.safetensors").exists()
        child.send_signal(sig)
        child.wait(timeout=30)
    finally:
        child.kill()
    assert not dst.exists()
    if sig == signal.SIGTERM:  # a catchable signal also removes the temp folder
        assert child.returncode == 128 + signal.SIGTERM and no_output(dst)


def test_failure_while_writing_removes_temp_folder(hf_checkpoint, tmp_path, monkeypatch):
    write, calls = writer._pwrite_all, []

    def fail_after_the_header(fd, data, offset):
        calls.append(offset)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        write(fd, data, offset)

    monkeypatch.setattr(writer, "_pwrite_all", fail_after_the_header)
    with pytest.raises(OSError, match="No space left"):
        convert_checkpoint(hf_checkpoint("gqa"), tmp_path / "pd", progress=False)
    assert len(calls) == 2 and no_output(tmp_path / "pd")


def test_failure_in_a_worker_thread_removes_temp_folder(hf_checkpoint, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise MemoryError("no memory for the transpose")

    monkeypatch.setattr(writer, "_fill_transposed_bytes", fail)
    with pytest.raises(MemoryError, match="no memory for the transpose"):
        convert_checkpoint(hf_checkpoint("gqa"), tmp_path / "pd", progress=False)
    assert no_output(tmp_path / "pd")


# ---------------------------------------------------------------------------------------------------- tensor parallel


def test_from_pretrained_split_hook_uses_tensor_parallel_mappings(hf_checkpoint):
    """`read_paddle_state_dict` cuts each tensor with paddlenlp's TP actions (built from
    `_get_tensor_parallel_mappings`) as it is read; the end-to-end TP load is tested with the parallel code."""
    src = hf_checkpoint("gqa")
    config = Qwen2Config.from_pretrained(src)
    full = read_paddle_state_dict(src, ModelDims.from_config(config))
    config.tensor_parallel_degree, config.tensor_parallel_rank = 2, 1
    calls = []

    def actions(names):
        calls.append(len(names))
        return Qwen2ForCausalLM.get_tensor_parallel_convert_actions(config, names, is_split=True, ignore_error=True)

    split = read_paddle_state_dict(src, ModelDims.from_config(config), actions)
    assert calls == [len(full)]
    q = "qwen2.layers.0.self_attn.q_proj.weight"  # column parallel: rank 1 holds the second half of the outputs
    assert np.array_equal(split[q], full[q][:, full[q].shape[1] // 2 :])
    o = "qwen2.layers.0.self_attn.o_proj.weight"  # row parallel: second half of the inputs
    assert np.array_equal(split[o], full[o][full[o].shape[0] // 2 :])
    assert np.array_equal(split["qwen2.norm.weight"], full["qwen2.norm.weight"])


def test_bf16_hf_checkpoint_loads_in_float32_on_cpu(hf_checkpoint, tmp_path):
    """Released checkpoints are bf16 and Paddle has no bf16 matmul on CPU: from_pretrained computes in float32
    there (unless `dtype` is given) and matches HF run on the same bf16 weights upcast to float32."""
    hf_bf16 = transformers.Qwen2ForCausalLM.from_pretrained(hf_checkpoint("gqa"), dtype=torch.bfloat16)
    hf_bf16.save_pretrained(tmp_path / "bf16")
    model = Qwen2ForCausalLM.from_pretrained(str(tmp_path / "bf16"))
    assert model.qwen2.embed_tokens.weight.dtype == paddle.float32
    hf_fp32 = load_hf(tmp_path / "bf16")
    hf_fp32.float()
    ids = [[5, 17, 99, 3, 42, 8]]
    with torch.no_grad():
        expected = hf_fp32(torch.tensor(ids)).logits
    model.eval()
    assert_close(model(paddle.to_tensor(ids), return_dict=True).logits, expected, what="bf16 weights, fp32 compute")
    kept = Qwen2ForCausalLM.from_pretrained(str(tmp_path / "bf16"), dtype="bfloat16")
    assert kept.qwen2.embed_tokens.weight.dtype == paddle.bfloat16
