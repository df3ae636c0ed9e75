"""Shared fixtures: tiny HF Qwen2 checkpoints written live by transformers' own `save_pretrained`.

Every checkpoint has its weights re-drawn (random biases, norm weights far from 1) so that a wrong
transpose, a missing bias or a norm applied in the wrong dtype shows up as a numeric difference.
"""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib  # noqa: F401  # must precede paddle (paddle 2.6 ships its own zlib symbols)
from pathlib import Path

from paddle_qwen2.runtime import configure_cpu_threads

# The CPU settings every entry point uses (the CLI, examples, benchmarks), set before paddle loads, so the test
# process and the CLI processes it starts compute alike however pytest was started.
configure_cpu_threads()

# Checkpoints the inference engine exports on the fly go to a folder of this process (also in the CLI processes
# the tests start), never into the user's cache. A pytest-xdist worker inherits the folder the controller made and
# makes its own, so no test sees another worker's exports appear in its cache.
_OWN_CACHE = "PADDLE_QWEN2_TESTS_OWN_CACHE"
if "PADDLE_QWEN2_CACHE" not in os.environ or os.environ["PADDLE_QWEN2_CACHE"] == os.environ.get(_OWN_CACHE):
    os.environ["PADDLE_QWEN2_CACHE"] = os.environ[_OWN_CACHE] = tempfile.mkdtemp(prefix="paddle-qwen2-exports-")
    atexit.register(shutil.rmtree, os.environ["PADDLE_QWEN2_CACHE"], True)

import numpy as np
import paddle
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from paddle_qwen2 import (
    Qwen2Config,  # noqa: E402
    modeling,  # noqa: E402
)
from paddle_qwen2.trace_state import forget_unfinished_traces  # noqa: E402

paddle.set_device("cpu")
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

# (country, capital): the facts of the small training sets the fine-tuning tests write
CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Egypt", "Cairo"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Kenya", "Nairobi"),
    ("China", "Beijing"),
    ("India", "Delhi"),
    ("Cuba", "Havana"),
    ("Iran", "Tehran"),
]

# Tolerances of the project standard (fp32).
MAX_ABS = 1e-4
MEAN_ABS = 1e-5

BASE = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=None,
    tie_word_embeddings=False,
)

# Parallel layouts (tests of parallel.py and of the config's layout checks): 8 heads, 4 kv heads, intermediate 96
# divide by tensor-parallel degrees 2, 4 and 8.
PARALLEL_BASE = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=8,
)
FUSED = dict(fuse_attention_qkv=True, fuse_attention_ffn=True)

# name -> overrides of BASE
VARIANTS: dict[str, dict] = {
    "gqa": {},
    "mha": dict(num_key_value_heads=4),
    "tied": dict(tie_word_embeddings=True),
    "sliding": dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "head_dim": dict(head_dim=24),
    "rope_linear": dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "rope_dynamic": dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=12),
    "rope_yarn": dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
}

HF_HEADS = {
    "causal_lm": "Qwen2ForCausalLM",
    "seq_cls": "Qwen2ForSequenceClassification",
    "token_cls": "Qwen2ForTokenClassification",
    "qa": "Qwen2ForQuestionAnswering",
    "base": "Qwen2Model",
}
PADDLE_HEADS = {
    "causal_lm": modeling.Qwen2ForCausalLM,
    "seq_cls": modeling.Qwen2ForSequenceClassification,
    "token_cls": modeling.Qwen2ForTokenClassification,
    "qa": modeling.Qwen2ForQuestionAnswering,
    "base": modeling.Qwen2Model,
}
HEAD_CONFIG = {"seq_cls": dict(num_labels=3), "token_cls": dict(num_labels=5, classifier_dropout=0.0)}


def redraw_weights(model, seed: int = 0) -> None:
    """Non-trivial weights: matrices N(0, 0.08), biases N(0, 0.5), norm weights N(1, 0.3)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                param.copy_(0.5 * noise)
            else:
                param.copy_(0.08 * noise)


def write_hf_checkpoint(path: Path, variant: str, head: str = "causal_lm", seed: int = 0, **overrides) -> Path:
    """Build a tiny HF model of `variant` / `head` (config `overrides` last), re-draw its weights and
    `save_pretrained` it to `path`."""
    cfg = {**BASE, **VARIANTS[variant], **HEAD_CONFIG.get(head, {}), **overrides}
    config = transformers.Qwen2Config(**cfg)
    torch.manual_seed(seed)
    model = getattr(transformers, HF_HEADS[head])(config)
    redraw_weights(model, seed)
    model.save_pretrained(path)
    return path


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs `-n 2 --dist loadfile --no-loadscope-reorder`) the test files holding
    a `slow` test come first, then the others, within each group the files with more tests first, each file's tests
    in their order: the scheduler hands out whole files in collection order, and a long file handed out last would
    keep one worker busy while the other has nothing left to run."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    counts = {}
    for item in items:
        counts[item.path] = counts.get(item.path, 0) + 1
    items.sort(key=lambda item: (item.path not in slow_files, -counts[item.path]))


@pytest.fixture(autouse=True)
def _forget_failed_traces():
    """After each test, drop the state dy2static keeps for `to_static` traces that failed in it: a later program
    allocated at such a freed program's address would inherit its parameters and crash Paddle 3.x (see
    `paddle_qwen2.trace_state`)."""
    yield
    forget_unfinished_traces()


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """`hf_checkpoint(variant, head="causal_lm")` -> folder written by HF `save_pretrained` (cached per session)."""
    cache = {}

    def get(variant: str, head: str = "causal_lm") -> Path:
        key = (variant, head)
        if key not in cache:
            cache[key] = write_hf_checkpoint(tmp_path_factory.mktemp(f"hf-{variant}-{head}"), variant, head)
        return cache[key]

    return get


def load_hf(path: Path, head: str = "causal_lm"):
    """The HF model from `path`, eager attention, eval mode."""
    model = getattr(transformers, HF_HEADS[head]).from_pretrained(path, attn_implementation="eager")
    return model.eval()


def hf_state_dict_numpy(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def load_paddle(path: Path, head: str = "causal_lm", **config_overrides):
    """A Paddle model of `head` with the HF weights at `path`, mapped through `_get_name_mappings`."""
    cls = PADDLE_HEADS[head]
    config = Qwen2Config.from_pretrained(path, **config_overrides)
    model = cls(config)
    state = hf_state_dict_numpy(path)
    mapped = {}
    for mapping in cls._get_name_mappings(config):
        if mapping.source_name in state:
            tensor = state[mapping.source_name]
            mapped[mapping.target_name] = tensor.T if mapping.action == "transpose" else tensor
    missing, unexpected = model.set_state_dict(mapped)
    assert not missing and not unexpected, (missing, unexpected)
    model.eval()
    return model


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().numpy()
    if isinstance(x, paddle.Tensor):
        return x.astype("float32").numpy() if x.dtype == paddle.bfloat16 else x.numpy()
    return np.asarray(x)


def assert_close(actual, expected, max_abs: float = MAX_ABS, mean_abs: float = MEAN_ABS, what: str = ""):
    """Project tolerance: max |a - e| <= max_abs and mean |a - e| <= mean_abs."""
    a, e = (_to_numpy(x) for x in (actual, expected))
    a, e = a.astype(np.float64), e.astype(np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    diff = np.abs(a - e)
    assert np.isfinite(a).all(), f"{what}: non-finite values"
    assert diff.max() <= max_abs and diff.mean() <= mean_abs, (
        f"{what}: max abs diff {diff.max():.3g} (<= {max_abs}), mean {diff.mean():.3g} (<= {mean_abs})"
    )


# ----------------------------------------------------------------------------------------------------------------
# sentence-transformers folders, saved by sentence-transformers itself from tiny random Qwen2 models
# ----------------------------------------------------------------------------------------------------------------

EXAMPLE_MODEL = Path(__file__).resolve().parent.parent / "examples" / "model"
QUERY_PROMPT = "Instruct: Given a question, retrieve the passage that answers it\nQuery: "
EMBED_TEXTS = [
    "The capital of France is Paris.",
    "  猫喜欢吃鱼。 ",
    "",
    "a",
    "Two plus three is five, five plus five is ten, ten plus ten is twenty, and so on for a long while.",
    "hello world",
    "法国的首都是巴黎，德国的首都是柏林。",
    "What is the capital of Japan?",
]
# kind -> (tokenizer appends <|endoftext|>, padding side, pooling mode, Dense out features or None, include_prompt)
ST_KINDS = {
    "last": (True, "left", "lasttoken", None, True),
    "mean_dense": (False, "right", "mean", 32, False),
}
_EOS_POST_PROCESSOR = {
    "type": "TemplateProcessing",
    "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
    "pair": [
        {"Sequence": {"id": "A", "type_id": 0}},
        {"Sequence": {"id": "B", "type_id": 1}},
        {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}},
    ],
    "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [4000], "tokens": ["<|endoftext|>"]}},
}


def write_qwen2_with_tokenizer(path: Path, eos: bool, padding_side: str, seed: int = 0) -> Path:
    """A tiny HF `Qwen2Model` (vocabulary of the bundled tokenizer) with the bundled tokenizer files; `eos`: the
    tokenizer's post-processor appends `<|endoftext|>` (as gte-Qwen2's does)."""
    write_hf_checkpoint(path, "gqa", head="base", seed=seed, vocab_size=4096, max_position_embeddings=128)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (path / name).write_bytes((EXAMPLE_MODEL / name).read_bytes())
    tok_config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**tok_config, "padding_side": padding_side}))
    if eos:
        tok = json.loads((path / "tokenizer.json").read_text())
        (path / "tokenizer.json").write_text(json.dumps({**tok, "post_processor": _EOS_POST_PROCESSOR}))
    return path


def write_st_folder(path: Path, kind: str, seed: int = 0) -> Path:
    """A sentence-transformers folder of `kind` (see ST_KINDS) saved by sentence-transformers 5.1.2: max length
    24 (long texts are truncated), prompts "query" and "document"; a Dense has random weights and bias."""
    from sentence_transformers import SentenceTransformer, models

    eos, side, mode, dense_out, include_prompt = ST_KINDS[kind]
    hf = write_qwen2_with_tokenizer(path.with_name(path.name + "-hf"), eos, side, seed)
    modules = [models.Transformer(str(hf), max_seq_length=24), models.Pooling(64, mode, include_prompt=include_prompt)]
    if dense_out:
        torch.manual_seed(seed)
        dense = models.Dense(64, dense_out, activation_function=torch.nn.Tanh())
        redraw_weights(dense, seed)
        modules.append(dense)
    modules.append(models.Normalize())
    model = SentenceTransformer(modules=modules, prompts={"query": QUERY_PROMPT, "document": ""}, device="cpu")
    model.save(str(path))
    return path


def to_st57_format(src: Path, dst: Path) -> Path:
    """The sentence-transformers >= 5.7 on-disk format of the folder `src`: module types under
    `sentence_transformers.base.modules` / `sentence_transformers.sentence_transformer.modules`, one `pooling_mode`
    key with `embedding_dimension`, the max length as `model_max_length` in tokenizer_config.json."""
    shutil.copytree(src, dst)
    new_types = {
        "Transformer": "sentence_transformers.base.modules.transformer.Transformer",
        "Pooling": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
        "Dense": "sentence_transformers.base.modules.dense.Dense",
        "Normalize": "sentence_transformers.sentence_transformer.modules.normalize.Normalize",
    }
    modules = json.loads((dst / "modules.json").read_text())
    for module in modules:
        module["type"] = new_types[module["type"].rsplit(".", 1)[-1]]
    (dst / "modules.json").write_text(json.dumps(modules, indent=2))
    old = json.loads((dst / "1_Pooling" / "config.json").read_text())
    (mode,) = [k for k, v in old.items() if k.startswith("pooling_mode_") and v]
    names = {"pooling_mode_lasttoken": "lasttoken", "pooling_mode_mean_tokens": "mean"}
    new = {"embedding_dimension": old["word_embedding_dimension"], "pooling_mode": names[mode]}
    (dst / "1_Pooling" / "config.json").write_text(json.dumps({**new, "include_prompt": old["include_prompt"]}))
    st_config = json.loads((dst / "sentence_bert_config.json").read_text())
    tok_config = json.loads((dst / "tokenizer_config.json").read_text())
    tok_config["model_max_length"] = st_config.pop("max_seq_length")
    (dst / "tokenizer_config.json").write_text(json.dumps(tok_config))
    (dst / "sentence_bert_config.json").write_text(json.dumps(st_config))
    return dst


@pytest.fixture(scope="session")
def st_folder(tmp_path_factory):
    """`st_folder(kind)` -> a sentence-transformers folder of `kind` (ST_KINDS; "<kind>-57": the 5.7 format of
    the same folder), cached per session."""
    cache = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            base, _, fmt = kind.partition("-")
            if fmt:
                cache[kind] = to_st57_format(get(base), tmp_path_factory.mktemp("st57") / kind)
            else:
                cache[kind] = write_st_folder(tmp_path_factory.mktemp("st") / kind, kind)
        return cache[kind]

    return get


def kill_at_first_checkpoint(finetune_args: list[str], output_dir: Path, timeout: float = 180) -> Path:
    """Run `paddle-qwen2 finetune *finetune_args` (writing into `output_dir`) in a child process and SIGKILL it as
    soon as its first complete checkpoint exists; returns that checkpoint."""
    from paddle_qwen2.training.callbacks import last_complete_checkpoint

    proc = subprocess.Popen(
        [sys.executable, "-m", "paddle_qwen2", "finetune", *finetune_args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + timeout
    try:
        while last_complete_checkpoint(output_dir / "checkpoints") is None:
            assert proc.poll() is None, "the training process ended before writing a checkpoint"
            assert time.time() < deadline, f"no checkpoint within {timeout:.0f}s"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    return last_complete_checkpoint(output_dir / "checkpoints")


CHAT_EOS = [4000, 4002]  # <|endoftext|>, <|im_end|> of the bundled tokenizer


def write_chat_checkpoint(path: Path, variant: str = "gqa", seed: int = 0) -> Path:
    """A tiny HF `Qwen2ForCausalLM` of `variant` over the bundled tokenizer (vocab 4096, ChatML template) with a
    generation_config.json that stops on <|endoftext|> and <|im_end|> and decodes greedily."""
    overrides = {"vocab_size": 4096}
    if "max_position_embeddings" not in VARIANTS[variant]:
        overrides["max_position_embeddings"] = 128
    write_hf_checkpoint(path, variant, seed=seed, **overrides)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (path / name).write_bytes((EXAMPLE_MODEL / name).read_bytes())
    generation = {"bos_token_id": 4000, "eos_token_id": CHAT_EOS, "pad_token_id": 4000, "do_sample": False}
    (path / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return path


@pytest.fixture(scope="session")
def chat_checkpoint(tmp_path_factory):
    """`chat_checkpoint(variant="gqa")` -> a `write_chat_checkpoint` folder (cached per session)."""
    cache = {}

    def get(variant: str = "gqa") -> Path:
        if variant not in cache:
            cache[variant] = write_chat_checkpoint(tmp_path_factory.mktemp(f"chat-{variant}"), variant)
        return cache[variant]

    return get


# ----------------------------------------------------------------------------------------------------------------
# `paddle-qwen2 serve` (tests/test_serving_*.py; helpers in tests/serving_helpers.py)
# ----------------------------------------------------------------------------------------------------------------
SERVE_CHAT_VARIANT = "mha"  # the seed-0 "mha" model's greedy answers differ from prompt to prompt ("gqa" repeats one)


@pytest.fixture(scope="session")
def serving_server(chat_checkpoint, st_folder, tmp_path_factory):
    """A `paddle-qwen2 serve` child process shared by the serving tests: `chat_checkpoint(SERVE_CHAT_VARIANT)` as
    model "chat" (the default inference engine) and `st_folder("last")` as model "embed", API key
    `serving_helpers.API_KEY`, at most 4 running sequences (more wait in the queue). Stopped with SIGTERM at the end
    of the session."""
    from serving_helpers import API_KEY, ServerProcess

    args = [
        "--model",
        str(chat_checkpoint(SERVE_CHAT_VARIANT)),
        "--served-model-name",
        "chat",
        "--embedding-model",
        str(st_folder("last")),
        "--embedding-model-name",
        "embed",
        "--api-key",
        API_KEY,
        "--max-batch-size",
        "4",
        "--log-level",
        "warning",
    ]
    server = ServerProcess.start(args, tmp_path_factory.mktemp("serve"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hf_chat_reference(chat_checkpoint):
    """`serving_helpers.HFReference` of the served chat checkpoint (transformers' tokenizer and greedy generate)."""
    from serving_helpers import HFReference

    return HFReference(chat_checkpoint(SERVE_CHAT_VARIANT), CHAT_EOS)
