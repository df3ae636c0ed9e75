"""The import paths users had before the package was split by concern still give the same objects.

Each row is (the old path, the module the object lives in now). The command-line plumbing that moved into
`paddle_qwen2.cli` (`add_arguments` / `run` of the old `*.command` modules) is not a library API and is not listed;
`paddle_qwen2.training.finetune.main`, which the docs named, still resolves (with a DeprecationWarning).
"""

import importlib
import subprocess
import sys

import pytest

import paddle_qwen2

MOVED = [
    # the model: masks (HF's masking_utils), attention kernels, RoPE rotation, pooling
    ("paddle_qwen2.modeling._make_causal_mask", "paddle_qwen2.masks"),
    ("paddle_qwen2.modeling._expand_2d_mask", "paddle_qwen2.masks"),
    ("paddle_qwen2.modeling.masked_fill", "paddle_qwen2.masks"),
    ("paddle_qwen2.modeling.get_triangle_upper_mask", "paddle_qwen2.masks"),
    ("paddle_qwen2.modeling.is_casual_mask", "paddle_qwen2.masks"),
    ("paddle_qwen2.modeling.scaled_dot_product_attention", "paddle_qwen2.attention"),
    ("paddle_qwen2.modeling.repeat_kv", "paddle_qwen2.attention"),
    ("paddle_qwen2.modeling.rotate_half", "paddle_qwen2.rope"),
    ("paddle_qwen2.modeling.apply_rotary_pos_emb", "paddle_qwen2.rope"),
    ("paddle_qwen2.embedding.modules.pool", "paddle_qwen2.pooling"),
    # packages whose __init__ re-exports
    ("paddle_qwen2.embedding.EmbeddingModel", "paddle_qwen2.embedding.model"),
    ("paddle_qwen2.embedding.EmbeddingError", "paddle_qwen2.embedding.errors"),
    ("paddle_qwen2.inference.LLM", "paddle_qwen2.inference.engine"),
    ("paddle_qwen2.inference.EngineError", "paddle_qwen2.inference.errors"),
    ("paddle_qwen2.export.export_model", "paddle_qwen2.export.exporter"),
    ("paddle_qwen2.export.read_meta", "paddle_qwen2.export.meta"),
    ("paddle_qwen2.export.TASKS", "paddle_qwen2.export.meta"),
    ("paddle_qwen2.export.FORMATS", "paddle_qwen2.export.meta"),
    ("paddle_qwen2.export.DTYPES", "paddle_qwen2.export.meta"),
    ("paddle_qwen2.export.ExportError", "paddle_qwen2.export.errors"),
    ("paddle_qwen2.serving.create_app", "paddle_qwen2.serving.api_server"),
    ("paddle_qwen2.serving.ServerState", "paddle_qwen2.serving.state"),
    ("paddle_qwen2.serving.ServerMetrics", "paddle_qwen2.serving.metrics"),
    ("paddle_qwen2.serving.Scheduler", "paddle_qwen2.serving.scheduler"),
    ("paddle_qwen2.serving.APIError", "paddle_qwen2.serving.protocol"),
    # the command line
    ("paddle_qwen2.cli.main", "paddle_qwen2.cli.main"),
    ("paddle_qwen2.cli.build_parser", "paddle_qwen2.cli.main"),
]

# every name of PaddleNLP's Qwen2 layout, from the package root and from `paddle_qwen2.modeling`
ROOT_NAMES = sorted(paddle_qwen2.__all__)


def _resolve(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _defined_in(module: str, name: str):
    return importlib.import_module(module).__dict__[name]


@pytest.mark.parametrize("old, home", MOVED, ids=[old for old, _ in MOVED])
def test_an_old_path_gives_the_object_from_its_new_home(old, home):
    name = old.rpartition(".")[2]
    value = _resolve(old)
    assert value is _defined_in(home, name)
    owner = getattr(value, "__module__", None)
    if owner is not None and callable(value):  # functions and classes say where they are defined
        assert owner == home


@pytest.mark.parametrize("name", ROOT_NAMES)
def test_the_package_root_gives_the_layout_names(name):
    value = getattr(paddle_qwen2, name)
    module = importlib.import_module(f"paddle_qwen2.{paddle_qwen2._LAZY[name]}")
    assert value is getattr(module, name)


def test_the_modeling_module_keeps_every_layout_name():
    from paddle_qwen2 import modeling

    missing = [name for name in modeling.__all__ if not hasattr(modeling, name)]
    assert not missing
    assert set(paddle_qwen2._MODELING) <= set(dir(modeling))


def test_finetune_main_still_resolves_from_training_with_a_deprecation_warning():
    from paddle_qwen2.cli import finetune as cli_finetune
    from paddle_qwen2.training import finetune

    with pytest.warns(DeprecationWarning, match="paddle_qwen2.cli.finetune.main"):
        assert finetune.main is cli_finetune.main
    with pytest.raises(AttributeError, match="no_such_name"):
        finetune.no_such_name  # noqa: B018


def test_python_dash_m_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "paddle_qwen2", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for command in ("convert", "finetune", "embed", "export", "generate", "serve"):
        assert command in done.stdout
