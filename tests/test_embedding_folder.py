"""Bad sentence-transformers folders: each gives an EmbeddingError naming the file and the module."""

import json
import shutil

import numpy as np
import pytest

from paddle_qwen2.embedding import EmbeddingError
from paddle_qwen2.embedding.folder import read_folder
from paddle_qwen2.embedding.model import EmbeddingModel


def _edit_json(name: str, change):
    def edit(folder):
        path = folder / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return edit


def _write(name: str, text: str):
    def edit(folder):
        (folder / name).write_text(text)

    return edit


def _dense_weight_shape(folder):
    from safetensors.numpy import save_file

    save_file(
        {"linear.weight": np.zeros((32, 63), np.float32), "linear.bias": np.zeros(32, np.float32)},
        str(folder / "2_Dense" / "model.safetensors"),
    )


def _set_module_type(index: int, type_name: str):
    return _edit_json("modules.json", lambda m: [{**e, "type": type_name} if e["idx"] == index else e for e in m])


BAD_FOLDERS = [
    ("unknown module type", _set_module_type(2, "sentence_transformers.models.LayerNorm"),
     r"modules\.json \(module 2\): unknown module type 'sentence_transformers\.models\.LayerNorm'"),
    ("foreign module type", _set_module_type(1, "my_package.Pooling"), r"modules\.json \(module 1\): unknown module"),
    ("unknown legacy pooling key", _edit_json("1_Pooling/config.json", lambda c: {**c, "pooling_mode_median": True}),
     r"1_Pooling/config\.json \(Pooling\): unknown pooling key\(s\) \['pooling_mode_median'\]"),
    ("no pooling mode on", _edit_json("1_Pooling/config.json", lambda c: {**c, "pooling_mode_mean_tokens": False}),
     r"1_Pooling/config\.json \(Pooling\): no pooling mode is on"),
    ("unknown pooling mode (5.7)", _write("1_Pooling/config.json", '{"pooling_mode": "median"}'),
     r"1_Pooling/config\.json \(Pooling\): unknown pooling mode 'median'; expected one of cls, max, mean"),
    ("Dense in_features", _edit_json("2_Dense/config.json", lambda c: {**c, "in_features": 48}),
     r"2_Dense/config\.json \(Dense\): in_features 48 does not match the 64 features coming into it"),
    ("Dense weight shape", _dense_weight_shape,
     r"2_Dense \(Dense 64 -> 32\): tensor 'linear\.weight' has shape \[32, 63\], expected \[32, 64\]"),
    ("Dense activation", _edit_json("2_Dense/config.json", lambda c: {**c, "activation_function": "my.Swish"}),
     r"2_Dense/config\.json \(Dense\): unsupported activation_function 'my\.Swish'"),
    ("invalid modules.json", _write("modules.json", '[{"idx": 0,'), r"modules\.json: invalid JSON at line 1"),
    ("Transformer not first", _edit_json("modules.json", lambda m: m[1:] + m[:1]),
     r"modules\.json: expected one Transformer module, first"),
    ("default prompt", _edit_json("config_sentence_transformers.json", lambda c: {**c, "default_prompt_name": "x"}),
     r"config_sentence_transformers\.json: default_prompt_name 'x' is not one of the prompts"),
]  # fmt: skip


@pytest.mark.parametrize("what, edit, message", BAD_FOLDERS, ids=[row[0] for row in BAD_FOLDERS])
def test_bad_folder(st_folder, tmp_path, what, edit, message):
    folder = shutil.copytree(st_folder("mean_dense"), tmp_path / "model")
    edit(folder)
    with pytest.raises(EmbeddingError, match=message):
        EmbeddingModel.from_pretrained(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(EmbeddingError, match=r"no-such-model: no such model folder"):
        read_folder(tmp_path / "no-such-model")


def test_plain_folder_needs_pooling(hf_checkpoint):
    with pytest.raises(EmbeddingError, match=r"no modules\.json \(not a sentence-transformers folder\): pass pooling="):
        read_folder(hf_checkpoint("gqa", "base"))
    with pytest.raises(EmbeddingError, match=r"\(pooling=\): unknown pooling mode 'median'"):
        read_folder(hf_checkpoint("gqa", "base"), pooling="median")
