"""`paddle-qwen2 export`: each task's exported program, run by Paddle Inference (oneDNN on and off) and by
onnxruntime, computes what the dygraph model does on unpadded, right- and left-padded batches; the exported folder
runs in a process that imports only `paddle.inference`, `tokenizers` and numpy; bad input is one `error:` line,
exit code 1 and nothing written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from conftest import EMBED_TEXTS, assert_close, load_paddle
from paddle_qwen2 import cli
from paddle_qwen2.export import META_FILE, ExportError, export_model
from paddle_qwen2.inference.predictor import Predictor

pytestmark = pytest.mark.filterwarnings(
    "ignore:Tensor do not have 'place' interface",
    "ignore:.*include_prompt false",
)

SEQ, PAD = 10, 3
EMBED_TOL = 1e-5


def make_batch(padding: str, vocab: int = 128, batch: int = 3, seq: int = SEQ, seed: int = 1, pad_id: int = 0):
    """ids and mask `[batch, seq]`: row 0 unpadded, row 1 padded by PAD on `padding`, row 2 by 2 * PAD."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(2, vocab, size=(batch, seq)).astype("int64")
    mask = np.ones((batch, seq), dtype="int64")
    if padding != "none":
        for row, count in ((1, PAD), (2, 2 * PAD)):
            if padding == "right":
                mask[row, seq - count :] = 0
            else:
                mask[row, :count] = 0
    ids[mask == 0] = pad_id
    return ids, mask


PADDINGS = ["none", "right", "left"]


def mask_positions(mask: np.ndarray) -> np.ndarray:
    return np.where(mask == 0, 1, np.cumsum(mask, axis=-1) - 1).astype("int64")


PREDICTOR_CHILD = r"""
import json, sys
import numpy as np
from paddle import inference
folder, program, params, mkldnn, data = sys.argv[1:6]
config = inference.Config(f"{folder}/{program}", f"{folder}/{params}")
config.disable_gpu()
config.enable_mkldnn() if mkldnn == "1" else config.disable_mkldnn()
config.set_cpu_math_library_num_threads(2)
predictor = inference.create_predictor(config)
assert predictor.get_input_names() == ["input_ids", "attention_mask"], predictor.get_input_names()
arrays = dict(np.load(data))
outputs = {}
for k in range(len(arrays) // 2):
    for name in ("input_ids", "attention_mask"):
        predictor.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(arrays[f"{name}_{k}"]))
    predictor.run()
    outputs[f"out_{k}"] = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
np.savez(data, **outputs)
"""


def run_deployed(program: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`program` run as a deployment runs it: a fresh interpreter that cannot import paddle_qwen2 (empty
    PYTHONPATH, another working directory); asserts exit code 0."""
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", program, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def predictor_runs(folder: Path, batches: list, mkldnn: bool) -> list[np.ndarray]:
    """Output 0 of the exported program through `paddle.inference` for each `(ids, mask)` batch, in a child process:
    creating a predictor changes state of the process it runs in (the in-process Trainer resume tests that run
    later then no longer match their CLI subprocesses), and a deployment runs it in a process of its own anyway."""
    meta = json.loads((folder / META_FILE).read_text())
    if mkldnn and not meta["paddle_inference"]["onednn"]:
        # Paddle 2.6's oneDNN fails on these programs ("could not reshape a memory descriptor"): the export says so
        # and the engine refuses oneDNN for it; the outputs are then checked without oneDNN.
        with pytest.raises(ExportError, match="oneDNN does not run this program"):
            Predictor(folder, onednn=True)
        mkldnn = False
    data = folder.parent / f"{folder.name}-batches.npz"
    arrays = {}
    for k, (ids, mask) in enumerate(batches):
        arrays[f"input_ids_{k}"], arrays[f"attention_mask_{k}"] = ids, mask
    np.savez(data, **arrays)
    files = meta["files"]
    argv = [str(folder), files["program"], files["params"], "1" if mkldnn else "0", str(data)]
    done = subprocess.run([sys.executable, "-c", PREDICTOR_CHILD, *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = np.load(data)
    data.unlink()
    return [outputs[f"out_{k}"] for k in range(len(batches))]


def onnx_run(folder: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    return session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, hf_checkpoint, st_folder):
    """`exported(task, format, source)` -> the export folder (cached per module)."""
    cache = {}
    sources = {
        "causal-lm": lambda: hf_checkpoint("gqa"),
        "sequence-classification": lambda: hf_checkpoint("gqa", "seq_cls"),
        "embedding-last": lambda: st_folder("last"),
        "embedding-mean_dense": lambda: st_folder("mean_dense"),
    }

    def get(name: str, fmt: str = "paddle") -> Path:
        if (name, fmt) not in cache:
            task = name.split("-")[0] if name.startswith("embedding") else name
            out = tmp_path_factory.mktemp("export") / f"{name}-{fmt}"
            cache[name, fmt] = export_model(sources[name](), out, task, format=fmt)
        return cache[name, fmt]

    return get


# ------------------------------------------------------------------------------------------- Paddle Inference
@pytest.mark.paddle26
@pytest.mark.parametrize("mkldnn", [False, True], ids=["plain", "onednn"])
def test_causal_lm_inference_equals_dygraph(exported, hf_checkpoint, mkldnn):
    folder = exported("causal-lm")
    model = load_paddle(hf_checkpoint("gqa"), "causal_lm")
    batches = [make_batch(padding) for padding in PADDINGS]
    for padding, (ids, mask), got in zip(PADDINGS, batches, predictor_runs(folder, batches, mkldnn)):
        with paddle.no_grad():
            want = model(
                input_ids=paddle.to_tensor(ids),
                attention_mask=paddle.to_tensor(mask),
                position_ids=paddle.to_tensor(mask_positions(mask)),
                return_dict=True,
            ).logits
        assert_close(got, want, what=f"causal-lm, {padding} padding")
        if padding == "left":  # the real tokens of a left-padded row: the logits of the unpadded row
            for row in (1, 2):
                real = mask[row] == 1
                with paddle.no_grad():
                    alone = model(input_ids=paddle.to_tensor(ids[row : row + 1, real]), return_dict=True).logits
                assert_close(got[row, real], alone[0], what=f"left-padded row {row} vs unpadded")


@pytest.mark.paddle26
@pytest.mark.parametrize("mkldnn", [False, True], ids=["plain", "onednn"])
def test_sequence_classification_inference_equals_dygraph(exported, hf_checkpoint, mkldnn):
    folder = exported("sequence-classification")
    model = load_paddle(hf_checkpoint("gqa", "seq_cls"), "seq_cls")
    batches = [make_batch(padding) for padding in PADDINGS]
    for padding, (ids, mask), got in zip(PADDINGS, batches, predictor_runs(folder, batches, mkldnn)):
        with paddle.no_grad():
            want = model(input_ids=paddle.to_tensor(ids), attention_mask=paddle.to_tensor(mask), return_dict=True)
        assert got.shape == (3, 3)
        assert_close(got, want.logits, what=f"sequence-classification, {padding} padding")


def embedding_reference(folder: Path):
    from paddle_qwen2.embedding.model import EmbeddingModel

    return EmbeddingModel.from_pretrained(folder)


@pytest.mark.paddle26
@pytest.mark.parametrize("kind", ["last", "mean_dense"])
@pytest.mark.parametrize("mkldnn", [False, True], ids=["plain", "onednn"])
def test_embedding_inference_equals_dygraph(exported, st_folder, kind, mkldnn):
    folder = exported(f"embedding-{kind}")
    model = embedding_reference(st_folder(kind))
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["embedding"]["dimension"] == model.dimension
    batches = [make_batch(padding, vocab=4096, pad_id=model.tokenizer.pad_token_id) for padding in PADDINGS]
    for padding, (ids, mask), got in zip(PADDINGS, batches, predictor_runs(folder, batches, mkldnn)):
        with paddle.no_grad():
            want = model(paddle.to_tensor(ids), paddle.to_tensor(mask))
        assert got.shape == (3, model.dimension)
        assert_close(got, want, max_abs=EMBED_TOL, mean_abs=EMBED_TOL, what=f"embedding {kind}, {padding}")


# A deployment: the export folder, `paddle.inference`, `tokenizers` and numpy, nothing of paddle_qwen2.
DEPLOY = """
import json, sys
from pathlib import Path
import numpy as np
from paddle import inference
from tokenizers import Tokenizer

folder = Path(sys.argv[1])
texts = json.loads(sys.argv[2])
meta = json.loads((folder / "export_meta.json").read_text())
tok_config = json.loads((folder / "tokenizer_config.json").read_text())
tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
tokenizer.no_padding()
tokenizer.enable_truncation(meta["embedding"]["max_seq_length"])
rows = [e.ids for e in tokenizer.encode_batch([t.strip() for t in texts])]
pad = tok_config.get("pad_token") or "<|endoftext|>"
pad_id = tokenizer.token_to_id(pad if isinstance(pad, str) else pad["content"])
width = max(len(r) for r in rows)
ids = np.full((len(rows), width), pad_id, dtype=np.int64)
mask = np.zeros((len(rows), width), dtype=np.int64)
for i, r in enumerate(rows):
    span = slice(width - len(r), width) if tok_config.get("padding_side") == "left" else slice(0, len(r))
    ids[i, span], mask[i, span] = r, 1
config = inference.Config(str(folder / meta["files"]["program"]), str(folder / meta["files"]["params"]))
config.disable_gpu()
if not meta["paddle_inference"]["onednn"]:
    config.disable_mkldnn()
predictor = inference.create_predictor(config)
predictor.get_input_handle("input_ids").copy_from_cpu(ids)
predictor.get_input_handle("attention_mask").copy_from_cpu(mask)
predictor.run()
out = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
assert not any(name.startswith("paddle_qwen2") for name in sys.modules), "paddle_qwen2 was imported"
print(json.dumps(out.tolist()))
"""


@pytest.mark.paddle26
@pytest.mark.parametrize("kind", ["last", "mean_dense"])
def test_exported_embedding_folder_runs_alone(exported, st_folder, tmp_path, kind):
    folder = exported(f"embedding-{kind}")
    texts = [t for t in EMBED_TEXTS if t.strip()]
    result = run_deployed(DEPLOY, tmp_path, str(folder), json.dumps(texts))
    got = np.array(json.loads(result.stdout.strip().splitlines()[-1]), dtype=np.float32)
    want = embedding_reference(st_folder(kind)).encode(texts)
    assert_close(got, want, max_abs=EMBED_TOL, mean_abs=EMBED_TOL, what=f"deployed embedding {kind}")


@pytest.mark.paddle26
def test_export_meta_and_files(exported, hf_checkpoint):
    folder = exported("causal-lm")
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["task"] == "causal-lm" and meta["format"] == "paddle"
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask"]
    assert all(i["dtype"] == "int64" and i["shape"] == ["batch", "seq"] for i in meta["inputs"])
    assert meta["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", "seq", 128]}]
    assert meta["config"] == json.loads((hf_checkpoint("gqa") / "config.json").read_text())
    assert meta["files"]["program"] in ("model.json", "model.pdmodel")  # paddle 3 PIR / paddle 2.6
    for name in (meta["files"]["program"], "model.pdiparams", "config.json", "generation_config.json"):
        assert (folder / name).is_file(), name
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "temporary folder left behind"


# ------------------------------------------------------------------------------------------------------- ONNX
@pytest.mark.slow
@pytest.mark.parametrize("name", ["causal-lm", "sequence-classification", "embedding-last", "embedding-mean_dense"])
def test_onnx_equals_dygraph(exported, hf_checkpoint, st_folder, name):
    pytest.importorskip("onnxruntime")
    folder = exported(name, "onnx")
    assert (folder / "model.onnx").is_file() and not (folder / "model.pdiparams").exists()
    # paddle2onnx's default optimizer (polygraphy) would pip-install packages into the running environment
    assert os.environ.get("POLYGRAPHY_AUTOINSTALL_DEPS") != "1"
    if name.startswith("embedding"):
        model = embedding_reference(st_folder(name.split("-", 1)[1]))
        pad_id, vocab, tol = model.tokenizer.pad_token_id, 4096, EMBED_TOL
    else:
        model = load_paddle(
            hf_checkpoint("gqa", "causal_lm" if name == "causal-lm" else "seq_cls"),
            "causal_lm" if name == "causal-lm" else "seq_cls",
        )
        pad_id, vocab, tol = 0, 128, 1e-4
    for padding in PADDINGS:
        ids, mask = make_batch(padding, vocab=vocab, pad_id=pad_id)
        got = onnx_run(folder, ids, mask)
        t_ids, t_mask = paddle.to_tensor(ids), paddle.to_tensor(mask)
        with paddle.no_grad():
            if name == "causal-lm":
                want = model(
                    input_ids=t_ids,
                    attention_mask=t_mask,
                    position_ids=paddle.to_tensor(mask_positions(mask)),
                    return_dict=True,
                ).logits
            elif name == "sequence-classification":
                want = model(input_ids=t_ids, attention_mask=t_mask, return_dict=True).logits
            else:
                want = model(t_ids, t_mask)
        assert_close(got, want, max_abs=tol, mean_abs=min(tol, 1e-5), what=f"onnx {name}, {padding} padding")


# ------------------------------------------------------------------------------------------------- bad input
def _not_qwen2(tmp: Path) -> Path:
    (tmp / "llama").mkdir()
    (tmp / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return tmp / "llama"


def _empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


BAD = [
    # (source, task, expected message part)
    (lambda tmp, ck, st: tmp / "missing", "causal-lm", "no such model folder"),
    (lambda tmp, ck, st: _empty(tmp), "causal-lm", "not a Qwen2 model (no config.json)"),
    (lambda tmp, ck, st: _not_qwen2(tmp), "causal-lm", "model_type 'llama'"),
    (lambda tmp, ck, st: st("last"), "causal-lm", "exports only the embedding task"),
    (lambda tmp, ck, st: ck("gqa"), "embedding", "not a sentence-transformers folder"),
    (lambda tmp, ck, st: ck("gqa", "seq_cls"), "causal-lm", "cannot export task causal-lm"),
    (lambda tmp, ck, st: ck("gqa"), "sequence-classification", "cannot export task sequence-classification"),
    (lambda tmp, ck, st: ck("gqa", "seq_cls"), "decode", "cannot export task decode"),
    (lambda tmp, ck, st: st("last"), "decode", "exports only the embedding task"),
]


@pytest.mark.paddle26
@pytest.mark.parametrize("source, task, message", BAD, ids=[f"{i}-{b[2][:20]}" for i, b in enumerate(BAD)])
def test_bad_input_is_one_error_line(tmp_path, hf_checkpoint, st_folder, capsys, source, task, message):
    model = source(tmp_path, hf_checkpoint, st_folder)
    out = tmp_path / "out" / "exp"
    assert cli.main(["export", "--model", str(model), "--out", str(out), "--task", task]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "something was written"


@pytest.mark.paddle26
def test_non_empty_out_needs_force(tmp_path, hf_checkpoint, capsys):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ["export", "--model", str(hf_checkpoint("gqa")), "--out", str(out), "--task", "causal-lm", "--quiet"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty (use --force" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert cli.main(args + ["--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / META_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


# ----------------------------------------------------------------------------------------------------- decode
@pytest.mark.paddle26
def test_decode_export_meta(chat_checkpoint, tmp_path):
    folder = export_model(chat_checkpoint("gqa"), tmp_path / "exp", "decode")
    meta = json.loads((folder / META_FILE).read_text())
    cache = [f"past_{kind}_{i}" for i in range(3) for kind in ("key", "value")]
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask", *cache]
    assert meta["inputs"][2] == {
        "name": "past_key_0",
        "dtype": "float32",
        "shape": ["batch", 2, "past", 16],
        "dynamic_axes": {"0": "batch", "2": "past"},
    }
    assert meta["decode"]["cache_layout"] == ["batch", "kv_heads", "past", "head_dim"]
    assert meta["outputs"][1]["shape"] == ["batch", 2, "past+new", 16]
    assert [o["name"] for o in meta["outputs"]] == ["logits", *[n.replace("past", "present") for n in cache]]
    assert meta["outputs"][0]["shape"] == ["batch", 4096]
    assert meta["decode"]["cache_inputs"] == cache and meta["decode"]["padding_side"] == "left"
    assert meta["generation_config"]["eos_token_id"] == [4000, 4002]
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"):
        assert (folder / name).is_file(), name


def onnx_greedy(folder: Path, prompts: list, new_tokens: int) -> list:
    """Greedy decoding with onnxruntime over the exported decode step (left-padded batch, cache fed back)."""
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    width = max(len(p) for p in prompts)
    ids = np.array([[0] * (width - len(p)) + p for p in prompts], dtype=np.int64)
    mask = (np.arange(width)[None, :] >= np.array([[width - len(p)] for p in prompts])).astype(np.int64)
    names = [i.name for i in session.get_inputs()]
    cache = [np.zeros((len(prompts), 2, 0, 16), np.float32) for _ in names[2:]]  # [batch, kv_heads, past, head_dim]
    tokens = []
    for _ in range(new_tokens):
        logits, *cache = session.run(None, dict(zip(names, [ids, mask, *cache])))
        ids = logits.argmax(-1).reshape(-1, 1).astype(np.int64)
        tokens.append(ids[:, 0])
        mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
    return np.stack(tokens, axis=1).tolist()


def test_onnx_decode_generates_as_transformers(chat_checkpoint, tmp_path):
    import torch
    import transformers

    folder = export_model(chat_checkpoint("gqa"), tmp_path / "onnx", "decode", format="onnx")
    prompts = [[17, 230, 1201, 9, 3050, 77, 402], [5, 919, 2048, 64, 311]]
    model = transformers.AutoModelForCausalLM.from_pretrained(chat_checkpoint("gqa"), attn_implementation="eager")
    ids = torch.tensor([prompts[0], [4000, 4000] + prompts[1]])
    mask = torch.tensor([[1] * 7, [0, 0] + [1] * 5])
    with torch.no_grad():
        want = (
            model.eval()
            .generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=4000)[:, 7:]
            .tolist()
        )
    assert all(4000 not in row and 4002 not in row for row in want), "a row stopped early: pick other prompts"
    assert onnx_greedy(folder, prompts, 6) == want


@pytest.mark.paddle26
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision(chat_checkpoint, tmp_path, capsys, dtype):
    """Paddle 3's CPU build checks op dtypes against its CPU kernels while tracing: a clear error, nothing written.
    Paddle 2.6 (and GPU builds) trace it: the weights and the KV cache are in `dtype`, the logits float32."""
    out = tmp_path / "out" / "exp"
    args = ["export", "--model", str(chat_checkpoint("gqa")), "--out", str(out), "--task", "decode", "--dtype", dtype]
    if int(paddle.__version__.split(".")[0]) >= 3 and not paddle.is_compiled_with_cuda():
        assert cli.main(args) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"error: --dtype {dtype}: this Paddle build") and "paddlepaddle-gpu" in err[-1], err
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "something was written"
        return
    assert cli.main(args) == 0
    meta = json.loads((out / META_FILE).read_text())
    assert meta["dtype"] == dtype and meta["decode"]["cache_dtype"] == dtype
    assert meta["inputs"][2]["dtype"] == dtype and meta["outputs"][0]["dtype"] == "float32"


# A deployment of the decode program: the export folder, `paddle.inference`, `tokenizers` and numpy only.
DEPLOY_DECODE = """
import json, sys
from pathlib import Path
import numpy as np
from paddle import inference
from tokenizers import Tokenizer

folder, prompt, new_tokens = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
meta = json.loads((folder / "export_meta.json").read_text())
tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
config = inference.Config(str(folder / meta["files"]["program"]), str(folder / meta["files"]["params"]))
config.disable_gpu()
config.disable_mkldnn()
predictor = inference.create_predictor(config)
decode = meta["decode"]
ids = np.array([tokenizer.encode(prompt).ids], dtype=np.int64)
mask = np.ones_like(ids)
sizes = {"batch": 1, "kv_heads": decode["num_key_value_heads"], "past": 0, "head_dim": decode["head_dim"]}
cache = [np.zeros([sizes[axis] for axis in decode["cache_layout"]], np.float32) for _ in decode["cache_inputs"]]
eos = meta["generation_config"]["eos_token_id"]
out = []
for _ in range(new_tokens):
    for name, value in zip([i["name"] for i in meta["inputs"]], [ids, mask, *cache]):
        predictor.get_input_handle(name).copy_from_cpu(value)
    predictor.run()
    logits, *cache = [predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()]
    token = int(logits[0].argmax())
    if token in eos:
        break
    out.append(token)
    ids, mask = np.array([[token]], dtype=np.int64), np.ones((1, mask.shape[1] + 1), dtype=np.int64)
assert not any(name.startswith("paddle_qwen2") for name in sys.modules), "paddle_qwen2 was imported"
print(json.dumps(tokenizer.decode(out)))
"""


@pytest.mark.paddle26
def test_exported_decode_folder_generates_alone(chat_checkpoint, tmp_path):
    import torch
    import transformers

    folder = export_model(chat_checkpoint("gqa"), tmp_path / "exp", "decode")
    prompt = "The capital of France is"
    result = run_deployed(DEPLOY_DECODE, tmp_path, str(folder), prompt, "12")
    tokenizer = transformers.AutoTokenizer.from_pretrained(chat_checkpoint("gqa"))
    model = transformers.AutoModelForCausalLM.from_pretrained(chat_checkpoint("gqa")).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == tokenizer.decode(want, skip_special_tokens=True)
