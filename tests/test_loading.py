"""loading.py: from_pretrained builds the model empty and fills it from the checkpoint. No random initializer runs
for weights the checkpoint has; the ones it lacks are initialised and named; a real-size Qwen2.5-0.5B written by
transformers loads from its HF folder and from the converted folder and gives transformers' logits and tokens."""

import gc
import math
import warnings
from pathlib import Path

import numpy as np
import paddle
import pytest
import torch
import transformers
from safetensors import safe_open

from conftest import PADDLE_HEADS, assert_close, load_hf
from paddle_qwen2 import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification
from paddle_qwen2.conversion import ModelDims, checkpoint_tensors, convert_checkpoint
from paddle_qwen2.conversion import loading as source_loading
from paddle_qwen2.conversion.loading import aligned_empty
from paddle_qwen2.parallel import tensor_parallel_actions, tensor_parallel_layouts

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def ids_batch(vocab: int = 128, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(2, vocab, size=(2, 9))


def _initializer_classes(cls=paddle.nn.initializer.Initializer):
    for sub in cls.__subclasses__():
        yield sub
        yield from _initializer_classes(sub)


@pytest.fixture
def no_random_init(monkeypatch):
    """Every way a weight gets values at construction raises: the `forward` of each of Paddle's initializers
    (what `create_parameter` runs, or records under LazyGuard), and `_init_weights` with its `paddle.normal`."""

    def refuse(*args, **kwargs):
        raise AssertionError("a weight initializer ran")

    for cls in set(_initializer_classes()):
        if "forward" in vars(cls):
            monkeypatch.setattr(cls, "forward", refuse)
    monkeypatch.setattr(paddle, "normal", refuse)
    monkeypatch.setattr(Qwen2ForCausalLM, "_init_weights", refuse)


@pytest.fixture(scope="module")
def converted(hf_checkpoint, tmp_path_factory):
    """`hf_checkpoint(variant, head)` converted to the Paddle layout (`paddle-qwen2 convert`)."""
    cache = {}

    def get(variant: str, head: str = "causal_lm"):
        if (variant, head) not in cache:
            dst = tmp_path_factory.mktemp(f"pd-{variant}-{head}")
            convert_checkpoint(hf_checkpoint(variant, head), dst, force=True, progress=False)
            cache[variant, head] = dst
        return cache[variant, head]

    return get


@pytest.mark.paddle26
@pytest.mark.parametrize("layout", ["hf", "paddle"])
@pytest.mark.parametrize("variant", ["gqa", "tied"])
def test_no_initializer_runs_when_the_checkpoint_has_every_weight(
    hf_checkpoint, converted, no_random_init, layout, variant
):
    src = hf_checkpoint(variant) if layout == "hf" else converted(variant)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = Qwen2ForCausalLM.from_pretrained(src)
    assert not [w for w in caught if str(src) in str(w.message)]  # nothing missing, nothing unexpected
    model.eval()
    ids = ids_batch()
    with torch.no_grad():
        expected = load_hf(hf_checkpoint(variant))(torch.tensor(ids)).logits
    assert_close(model(paddle.to_tensor(ids), return_dict=True).logits, expected, what=f"{layout} {variant}")


def test_the_no_initializer_check_can_fail(hf_checkpoint, no_random_init):
    """Building a model the ordinary way does run initializers (so the test above can fail)."""
    config = Qwen2ForCausalLM.from_pretrained(hf_checkpoint("gqa")).config
    with pytest.raises(AssertionError, match="a weight initializer ran"):
        Qwen2ForCausalLM(config)


@pytest.mark.paddle26
@pytest.mark.parametrize("layout", ["hf", "paddle"])
def test_head_absent_from_the_checkpoint_is_initialised_and_named(hf_checkpoint, converted, layout):
    src = hf_checkpoint("gqa") if layout == "hf" else converted("gqa")
    paddle.seed(0)
    with pytest.warns(UserWarning, match=r"1 weight\(s\) not in the checkpoint were initialised: score\.weight"):
        model = Qwen2ForSequenceClassification.from_pretrained(src, num_labels=4, initializer_range=0.05)
    score = model.score.weight.numpy()
    assert score.shape == (64, 4) and np.isfinite(score).all()
    assert abs(score.std() - 0.05) < 0.015 and abs(score.mean()) < 0.02  # _init_weights: Normal(0, range)
    base = PADDLE_HEADS["base"].from_pretrained(src)
    for name, param in base.state_dict().items():  # everything else is the checkpoint's
        np.testing.assert_array_equal(model.qwen2.state_dict()[name].numpy(), param.numpy(), err_msg=name)


def test_shape_mismatch_names_the_tensor_or_initialises_when_told(hf_checkpoint, converted):
    src = converted("gqa", "seq_cls")  # score: [64, 3]
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'score\.weight' gives 'score\.weight' shape"):
        Qwen2ForSequenceClassification.from_pretrained(src, num_labels=5)
    with pytest.warns(UserWarning, match=r"shapes differ, initialised instead: score\.weight \[64, 3\] -> \[64, 5\]"):
        model = Qwen2ForSequenceClassification.from_pretrained(src, num_labels=5, ignore_mismatched_sizes=True)
    assert model.score.weight.shape == [64, 5] and np.isfinite(model.score.weight.numpy()).all()


@pytest.mark.parametrize("mapped", [False, True], ids=["numpy-arrays", "mapped-arrays"])
def test_loaded_parameters_are_ordinary_tensors(hf_checkpoint, monkeypatch, mapped):
    """Parameters filled from the checkpoint train, save and reload like any other, whether the arrays read were
    numpy's or (as large ones are) their own memory mappings."""
    if mapped:  # the tiny model's tensors are below the size that gets a mapping: map every one
        monkeypatch.setattr(source_loading, "_MAPPED_MIN_BYTES", 1)
    model = Qwen2ForCausalLM.from_pretrained(hf_checkpoint("gqa"))
    gc.collect()  # the arrays read from the files are gone; the parameters hold their data
    assert all(not p.stop_gradient for p in model.parameters())
    ids = paddle.to_tensor(ids_batch())
    loss = model(ids, labels=ids, return_dict=True).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with paddle.no_grad():
        before = model.qwen2.norm.weight.numpy().copy()
        model.qwen2.norm.weight.set_value(paddle.ones_like(model.qwen2.norm.weight))
    assert float(model.qwen2.norm.weight.sum()) == 64.0 and not np.array_equal(before, np.ones(64))


def _vm_flags(array: np.ndarray) -> set[str]:
    """The VmFlags of this process's mappings that hold part of `array`'s data (Linux /proc/self/smaps)."""
    first, last = array.ctypes.data, array.ctypes.data + array.nbytes
    flags, inside = set(), False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start < last and first < end
        elif inside and head == "VmFlags:":
            flags.update(line.split()[1:])
    assert flags, f"no mapping holds {first:#x}"
    return flags


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="needs Linux /proc/self/smaps")
def test_large_arrays_are_mapped_in_small_pages():
    """A large array the loader fills is a private mapping of its own, page-aligned and not marked for transparent
    huge pages (numpy marks its large allocations: on a VM whose freed memory went back to the host, faulting
    those in made the 1.5B load 2-3x slower); small ones are numpy's, aligned by hand."""
    shapes = [((2048, 1536), "float32"), ((3, 700, 1025), "uint16"), ((5, 7), "float32"), ((0, 8), "float32")]
    for shape, dtype in shapes:
        array = aligned_empty(shape, dtype)
        assert array.shape == shape and array.dtype == np.dtype(dtype) and array.flags.c_contiguous
        assert array.flags.writeable and (array.size == 0 or array.ctypes.data % 4096 == 0)
        array[...] = 3
        assert (array == 3).all()
        if array.nbytes >= source_loading._MAPPED_MIN_BYTES:
            assert "hg" not in _vm_flags(array), shape


@pytest.mark.parametrize("variant, tp", [("gqa", 2), ("gqa", 4), ("mha", 4), ("tied", 2)])
def test_tensor_parallel_ranks_read_only_their_slices(hf_checkpoint, converted, monkeypatch, variant, tp):
    """Under tensor parallelism each tensor is read as the rank's slice straight from the file (HF tensors stored
    transposed included): no array larger than the slice is allocated, and the slice equals the full tensor cut by
    paddlenlp's split action."""
    allocated = []

    def recording_empty(shape, dtype, alignment=4096):
        allocated.append(math.prod(shape))
        return aligned_empty(shape, dtype, alignment)

    for src in (hf_checkpoint(variant), converted(variant)):
        config = Qwen2Config.from_pretrained(src, tensor_parallel_degree=tp)
        tensors, _ = checkpoint_tensors(src, ModelDims.from_config(config))
        layouts, cut = tensor_parallel_layouts(config), 0
        for rank in range(tp):
            config.tensor_parallel_rank = rank
            actions = tensor_parallel_actions(config, is_split=True)
            for tensor in tensors:
                name = tensor.name.removeprefix("qwen2.")
                if name not in layouts:
                    continue
                axis, intervals = layouts[name]
                allocated.clear()
                with monkeypatch.context() as patch:
                    patch.setattr(source_loading, "aligned_empty", recording_empty)
                    part = tensor.read("F32", (axis, intervals[rank]))
                assert (
                    max(allocated)
                    == part.size
                    == math.prod(tensor.shape)
                    // tensor.shape[axis]
                    * sum(stop - start for start, stop in intervals[rank])
                ), name
                np.testing.assert_array_equal(part, actions[name](tensor.read("F32")), err_msg=f"{name} rank {rank}")
                cut += 1
        assert cut >= tp * 3 * config.num_hidden_layers


# ------------------------------------------------------------------------------------------------- real size


@pytest.fixture(scope="module")
def qwen25_05b(tmp_path_factory):
    """A random Qwen2.5-0.5B (configs/qwen2.5-0.5b.json: bf16, tied, 151,936 vocab) saved by transformers, its
    Paddle conversion, and transformers' float32 logits and 8 greedy tokens for a fixed prompt."""
    root = tmp_path_factory.mktemp("qwen2.5-0.5b")
    config = transformers.Qwen2Config.from_pretrained(CONFIGS / "qwen2.5-0.5b.json")
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(root / "hf")
    convert_checkpoint(root / "hf", root / "paddle", progress=False)
    hf = transformers.Qwen2ForCausalLM.from_pretrained(root / "hf", dtype=torch.float32, attn_implementation="eager")
    hf.eval()
    ids = np.random.RandomState(1).randint(0, config.vocab_size, size=(1, 12))
    with torch.no_grad():
        logits = hf(torch.tensor(ids)).logits.numpy()
        tokens = hf.generate(torch.tensor(ids), max_new_tokens=8, do_sample=False)[0, 12:].numpy()
    del hf
    return {"root": root, "ids": ids, "logits": logits, "tokens": tokens}


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["hf", "paddle"])
def test_qwen25_05b_loads_and_matches_transformers(qwen25_05b, layout):
    model = Qwen2ForCausalLM.from_pretrained(qwen25_05b["root"] / layout)
    model.eval()
    assert model.config.vocab_size == 151936 and model.qwen2.embed_tokens.weight.dtype == paddle.float32
    params = sum(math.prod(p.shape) for p in model.parameters())
    assert params == 494_032_768, params  # tied: the embedding counted once
    ids = paddle.to_tensor(qwen25_05b["ids"])
    with paddle.no_grad():
        assert_close(model(ids, return_dict=True).logits, qwen25_05b["logits"], what=f"Qwen2.5-0.5B from {layout}")
        tokens = model.generate(ids, max_new_tokens=8, decode_strategy="greedy_search")[0]
    np.testing.assert_array_equal(tokens.numpy()[0], qwen25_05b["tokens"])


@pytest.mark.slow
def test_qwen25_05b_sequence_classification_head_is_initialised_and_named(qwen25_05b):
    with pytest.warns(UserWarning, match=r"1 weight\(s\) not in the checkpoint were initialised: score\.weight"):
        model = Qwen2ForSequenceClassification.from_pretrained(qwen25_05b["root"] / "hf", num_labels=2)
    score = model.score.weight.numpy()
    assert score.shape == (896, 2) and abs(score.std() - 0.02) < 0.003  # Normal(0, initializer_range)
    embedding = safe_open_tensor(qwen25_05b["root"] / "hf" / "model.safetensors", "model.embed_tokens.weight")
    np.testing.assert_array_equal(model.qwen2.embed_tokens.weight.numpy(), embedding)


def safe_open_tensor(path: Path, name: str) -> np.ndarray:
    """One tensor of a safetensors file as float32 (bfloat16 widened exactly)."""
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(name).float().numpy()


# ------------------------------------------------------------------------------------------------- saving


@pytest.mark.paddle26
@pytest.mark.parametrize("max_shard_size", ["10GB", "60KB"])
def test_streaming_save_writes_what_paddlenlp_writes(hf_checkpoint, tmp_path, max_shard_size):
    """save_pretrained(safe_serialization=True) writes one tensor at a time, and the same files, bytes and index as
    paddlenlp's own writer (which builds each file in memory); the result loads back exactly."""
    from paddlenlp.transformers.model_utils import PretrainedModel

    model = Qwen2ForCausalLM.from_pretrained(hf_checkpoint("gqa"))
    ours, theirs = tmp_path / "ours", tmp_path / "paddlenlp"
    model.save_pretrained(str(ours), safe_serialization=True, max_shard_size=max_shard_size)
    PretrainedModel.save_pretrained(model, str(theirs), safe_serialization=True, max_shard_size=max_shard_size)
    files = sorted(p.name for p in theirs.iterdir())
    assert sorted(p.name for p in ours.iterdir()) == files
    assert (len([f for f in files if f.endswith(".safetensors")]) > 1) == (max_shard_size == "60KB")
    for name in files:
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name
    reloaded = Qwen2ForCausalLM.from_pretrained(ours)
    for name, param in model.state_dict().items():
        np.testing.assert_array_equal(reloaded.state_dict()[name].numpy(), param.numpy(), err_msg=name)
