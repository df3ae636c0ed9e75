"""sentence-transformers folders: what their JSON files say, read and written without paddle or torch.

A sentence-transformers folder lists its modules in `modules.json`, in order; each module keeps its config in its
own subfolder (the Transformer in the folder itself). Two on-disk formats exist and both are read:

- up to 5.6 (what published models use): types `sentence_transformers.models.<Class>`, the Transformer's
  `max_seq_length` / `do_lower_case` in `sentence_bert_config.json`, Pooling as `pooling_mode_*` booleans with
  `word_embedding_dimension`;
- from 5.7: types `sentence_transformers.base.modules.<module>.<Class>` or
  `sentence_transformers.sentence_transformer.modules.<module>.<Class>`, a single `pooling_mode` key (a name or a
  list of names) with `embedding_dimension`, the max length as `model_max_length` in `tokenizer_config.json`.

`config_sentence_transformers.json` holds `prompts` and `default_prompt_name`; `config.json` of the Transformer may
say `"is_causal": false` (bidirectional attention). A plain Qwen2 folder (no `modules.json`) is read as a
Transformer followed by the Pooling the caller names. Errors name the file and the module.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EmbeddingError

__all__ = [
    "POOLING_MODES",
    "ACTIVATIONS",
    "EmbeddingError",
    "TransformerSpec",
    "PoolingSpec",
    "DenseSpec",
    "NormalizeSpec",
    "FolderSpec",
    "read_folder",
    "write_folder_configs",
]

# Pooling mode names (5.7 spelling) and the 5.x boolean key of each.
POOLING_MODES = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
_MODE_ALIASES = {"last": "lasttoken", "mean_tokens": "mean", "max_tokens": "max", "cls_token": "cls"}
# Dense activations by the torch class name sentence-transformers records (`activation_function`).
ACTIVATIONS = ("Identity", "Tanh", "ReLU", "GELU", "Sigmoid", "SiLU", "LeakyReLU", "Softplus", "ELU")
_MODULE_PACKAGES = (
    "sentence_transformers.models.",
    "sentence_transformers.base.modules.",
    "sentence_transformers.sentence_transformer.modules.",
)
_KINDS = ("Transformer", "Pooling", "Dense", "Normalize")


@dataclass
class TransformerSpec:
    """The Qwen2 model of the folder: `path` holds config.json, weights (HF or Paddle layout) and tokenizer."""

    path: Path
    max_seq_length: int | None = None
    do_lower_case: bool = False


@dataclass
class PoolingSpec:
    """Pooling over tokens: one or more `modes` (their outputs concatenated), `include_prompt` False drops the
    prompt's tokens (sentence-transformers' INSTRUCTOR-style pooling)."""

    modes: tuple[str, ...]
    dimension: int | None = None
    include_prompt: bool = True

    def config(self, legacy: bool = True) -> dict[str, Any]:
        if legacy:
            flags = {key: mode in self.modes for mode, key in POOLING_MODES.items()}
            return {"word_embedding_dimension": self.dimension, **flags, "include_prompt": self.include_prompt}
        mode: str | list[str] = self.modes[0] if len(self.modes) == 1 else list(self.modes)
        return {"embedding_dimension": self.dimension, "pooling_mode": mode, "include_prompt": self.include_prompt}


@dataclass
class DenseSpec:
    """A linear projection `[in_features] -> [out_features]` with an activation; weights in `path`."""

    path: Path
    in_features: int
    out_features: int
    bias: bool = True
    activation: str = "Tanh"

    def config(self) -> dict[str, Any]:
        module = "linear" if self.activation == "Identity" else "activation"
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias,
            "activation_function": f"torch.nn.modules.{module}.{self.activation}",
        }


@dataclass
class NormalizeSpec:
    """L2 normalisation of the sentence embedding."""


@dataclass
class FolderSpec:
    """Everything a sentence-transformers folder says: its modules in order, prompts, attention direction."""

    path: Path
    transformer: TransformerSpec
    modules: list[PoolingSpec | DenseSpec | NormalizeSpec] = field(default_factory=list)
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    is_causal: bool = True
    sentence_transformers: bool = True  # False for a plain Qwen2 folder

    @property
    def pooling(self) -> PoolingSpec | None:
        return next((m for m in self.modules if isinstance(m, PoolingSpec)), None)

    @property
    def normalizes(self) -> bool:
        return any(isinstance(m, NormalizeSpec) for m in self.modules)


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise EmbeddingError(f"{path}: missing ({what})") from None
    except json.JSONDecodeError as e:
        raise EmbeddingError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def _module_kind(type_name: Any, where: str) -> str:
    """`sentence_transformers.models.Pooling` (5.x) or `...modules.pooling.Pooling` (5.7) -> "Pooling"."""
    if isinstance(type_name, str) and type_name.startswith(_MODULE_PACKAGES):
        kind = type_name.rsplit(".", 1)[-1]
        if kind in _KINDS:
            return kind
    raise EmbeddingError(
        f"{where}: unknown module type {type_name!r}; this package runs sentence-transformers' "
        f"{', '.join(_KINDS)} modules"
    )


def pooling_modes(value: Any, where: str) -> tuple[str, ...]:
    """A mode name or list of names (5.7 `pooling_mode`, or the caller's `pooling=`) -> canonical names."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names:
        raise EmbeddingError(f"{where}: pooling_mode must be a name or a list of names, got {value!r}")
    modes = []
    for name in names:
        mode = _MODE_ALIASES.get(name, name)
        if mode not in POOLING_MODES:
            raise EmbeddingError(
                f"{where}: unknown pooling mode {name!r}; expected one of {', '.join(POOLING_MODES)} (or 'last')"
            )
        modes.append(mode)
    return tuple(modes)


def _pooling(folder: Path, config: dict) -> PoolingSpec:
    where = str(folder / "config.json") + " (Pooling)"
    if "pooling_mode" in config:
        modes = pooling_modes(config["pooling_mode"], where)
    else:
        unknown = sorted(k for k in config if k.startswith("pooling_mode_") and k not in POOLING_MODES.values())
        if unknown:
            raise EmbeddingError(
                f"{where}: unknown pooling key(s) {unknown}; expected {sorted(POOLING_MODES.values())}"
            )
        modes = tuple(mode for mode, key in POOLING_MODES.items() if config.get(key))
        if not modes:
            raise EmbeddingError(f"{where}: no pooling mode is on (expected one of {sorted(POOLING_MODES.values())})")
    dimension = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    return PoolingSpec(modes, dimension, bool(config.get("include_prompt", True)))


def _activation(name: Any, where: str) -> str:
    short = name.rsplit(".", 1)[-1] if isinstance(name, str) else None
    if short not in ACTIVATIONS:
        raise EmbeddingError(f"{where}: unsupported activation_function {name!r}; expected torch.nn {ACTIVATIONS}")
    return short


def _dense(folder: Path, config: dict) -> DenseSpec:
    where = str(folder / "config.json") + " (Dense)"
    try:
        in_features, out_features = int(config["in_features"]), int(config["out_features"])
    except (KeyError, TypeError, ValueError):
        raise EmbeddingError(f"{where}: in_features and out_features must be integers") from None
    activation = _activation(config.get("activation_function", "torch.nn.modules.activation.Tanh"), where)
    return DenseSpec(folder, in_features, out_features, bool(config.get("bias", True)), activation)


def _transformer(folder: Path) -> TransformerSpec:
    max_len, lower = None, False
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        config = _read_json(st_config, "Transformer config")
        max_len, lower = config.get("max_seq_length"), bool(config.get("do_lower_case", False))
    tok_config = folder / "tokenizer_config.json"
    if max_len is None and tok_config.is_file():  # the 5.7 format keeps it with the tokenizer
        max_len = _read_json(tok_config, "tokenizer config").get("model_max_length")
        max_len = max_len if isinstance(max_len, int) and max_len < 10**9 else None  # HF's "no limit" sentinel
    return TransformerSpec(folder, max_len, lower)


def _module(root: Path, entry: Any, index: int, modules_path: Path):
    where = f"{modules_path} (module {index})"
    if not isinstance(entry, dict):
        raise EmbeddingError(f"{where}: expected an object with 'type' and 'path', got {entry!r}")
    kind = _module_kind(entry.get("type"), where)
    folder = root / entry.get("path", "")
    if kind == "Transformer":
        return _transformer(folder)
    if kind == "Normalize":
        return NormalizeSpec()
    config = _read_json(folder / "config.json", f"{kind} config of {where}")
    return _pooling(folder, config) if kind == "Pooling" else _dense(folder, config)


def _prompts(root: Path) -> tuple[dict[str, str], str | None]:
    path = root / "config_sentence_transformers.json"
    if not path.is_file():
        return {}, None
    config = _read_json(path, "sentence-transformers config")
    prompts = config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise EmbeddingError(f"{path}: 'prompts' must map names to strings")
    default = config.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise EmbeddingError(f"{path}: default_prompt_name {default!r} is not one of the prompts {sorted(prompts)}")
    return dict(prompts), default


def _is_causal(folder: Path) -> bool:
    config = folder / "config.json"
    return bool(_read_json(config, "model config").get("is_causal", True)) if config.is_file() else True


def read_folder(path: str | os.PathLike, pooling: str | None = None, normalize: bool | None = None) -> FolderSpec:
    """The modules, prompts and attention direction of a sentence-transformers folder, or of a plain Qwen2 folder
    (then `pooling` "last" / "mean" / ... is required and `normalize` says whether to L2-normalise)."""
    root = Path(path)
    if not root.is_dir():
        raise EmbeddingError(f"{root}: no such model folder")
    modules_path = root / "modules.json"
    if not modules_path.is_file():
        if pooling is None:
            raise EmbeddingError(f"{root}: no modules.json (not a sentence-transformers folder): pass pooling=")
        modes = pooling_modes(pooling, f"{root} (pooling=)")
        modules: list = [PoolingSpec(modes)] + ([NormalizeSpec()] if normalize else [])
        return FolderSpec(root, _transformer(root), modules, is_causal=_is_causal(root), sentence_transformers=False)
    entries = _read_json(modules_path, "module list")
    if not isinstance(entries, list) or not entries:
        raise EmbeddingError(f"{modules_path}: expected a non-empty list of modules")
    parsed = [_module(root, entry, i, modules_path) for i, entry in enumerate(entries)]
    if not isinstance(parsed[0], TransformerSpec) or any(isinstance(m, TransformerSpec) for m in parsed[1:]):
        raise EmbeddingError(f"{modules_path}: expected one Transformer module, first")
    prompts, default = _prompts(root)
    transformer = parsed[0]
    spec = FolderSpec(root, transformer, parsed[1:], prompts, default, _is_causal(transformer.path))
    if pooling is not None:  # the caller overrides the folder's pooling modes
        spec.pooling.modes = pooling_modes(pooling, f"{root} (pooling=)")
    return spec


def _dump(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_folder_configs(folder: Path, spec: FolderSpec, versions: dict[str, str]) -> list[Path]:
    """Write modules.json, sentence_bert_config.json, each module's config.json and
    config_sentence_transformers.json into `folder` in the 5.x format (what sentence-transformers 5.1 reads).
    Dense weights are the caller's. Returns the module folders, in order (the Transformer's is `folder`)."""
    entries = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    paths = [folder]
    for i, module in enumerate(spec.modules, start=1):
        kind = {PoolingSpec: "Pooling", DenseSpec: "Dense", NormalizeSpec: "Normalize"}[type(module)]
        sub = f"{i}_{kind}"
        entries.append({"idx": i, "name": str(i), "path": sub, "type": f"sentence_transformers.models.{kind}"})
        paths.append(folder / sub)
        if isinstance(module, PoolingSpec):
            _dump(folder / sub / "config.json", module.config())
        elif isinstance(module, DenseSpec):
            _dump(folder / sub / "config.json", module.config())
        else:
            (folder / sub).mkdir(parents=True, exist_ok=True)
    _dump(folder / "modules.json", entries)
    st = {"max_seq_length": spec.transformer.max_seq_length, "do_lower_case": spec.transformer.do_lower_case}
    _dump(folder / "sentence_bert_config.json", st)
    _dump(
        folder / "config_sentence_transformers.json",
        {
            "__version__": versions,
            "model_type": "SentenceTransformer",
            "prompts": spec.prompts,
            "default_prompt_name": spec.default_prompt_name,
            "similarity_fn_name": "cosine",
        },
    )
    return paths
