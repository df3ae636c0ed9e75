"""`EmbeddingModel`: a sentence-transformers folder (or a plain Qwen2 folder) as one paddle Layer with `encode`.

    model = EmbeddingModel.from_pretrained("gte-Qwen2-1.5B-instruct")      # HF or Paddle weights
    queries = model.encode(["how do rivers form?"], prompt_name="query")    # float32 numpy [n, dim]
    model.save_pretrained("out")                                            # a sentence-transformers folder

`forward(input_ids, attention_mask)` runs Transformer -> Pooling -> Dense... -> Normalize and is differentiable,
which is what the embedding fine-tuning trains.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import paddle
from paddle import Tensor, nn

from ..conversion.names import TOKENIZER_FILES
from ..modeling import Qwen2Model
from .encoder import BATCH_TENSOR_BYTES, EmbeddingEncoder
from .folder import DenseSpec, EmbeddingError, FolderSpec, NormalizeSpec, PoolingSpec, read_folder, write_folder_configs
from .modules import Dense, normalize, pool
from .tokenization import EmbeddingTokenizer

__all__ = ["EmbeddingModel", "BATCH_TENSOR_BYTES"]


def _max_length(spec: FolderSpec, model: Qwen2Model, max_length: int | None) -> int:
    """The caller's, else the folder's, else min(max_position_embeddings, tokenizer's model_max_length)."""
    if max_length is not None:
        if max_length <= 0:
            raise EmbeddingError(f"max_length must be positive, got {max_length}")
        return max_length
    if spec.transformer.max_seq_length:
        return int(spec.transformer.max_seq_length)
    return int(model.config.max_position_embeddings)


class EmbeddingModel(EmbeddingEncoder, nn.Layer):
    """Transformer (`Qwen2Model`) -> the folder's Pooling, Dense and Normalize modules. `[batch, seq]` ids and
    mask in, `[batch, dim]` float32 out."""

    def __init__(self, transformer: Qwen2Model, spec: FolderSpec, tokenizer: EmbeddingTokenizer):
        super().__init__()
        if spec.pooling is None:
            raise EmbeddingError(f"{spec.path}: the folder has no Pooling module")
        self.transformer = transformer
        self.spec = spec
        self.tokenizer = tokenizer
        self.dense = nn.LayerList([Dense(m) for m in spec.modules if isinstance(m, DenseSpec)])
        self._check_dims()

    # ------------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        is_causal: bool | None = None,
        dtype: str = "float32",
        **config_overrides,
    ) -> EmbeddingModel:
        """A sentence-transformers folder (either format; Qwen2 weights in HF or Paddle layout), or a plain Qwen2
        folder with `pooling` ("last", "mean", ...) and `normalize` chosen here. `pooling` also overrides a
        folder's Pooling mode, `is_causal` its attention direction (`config.json`'s `is_causal`);
        `config_overrides` go to the model config (e.g. `fuse_attention_qkv=True`)."""
        spec = read_folder(path, pooling=pooling, normalize=normalize)
        transformer = Qwen2Model.from_pretrained(str(spec.transformer.path), dtype=dtype, **config_overrides)
        if is_causal is not None:
            transformer.config.is_causal = bool(is_causal)
        spec.is_causal = transformer.config.is_causal
        length = _max_length(spec, transformer, max_length)
        spec.transformer.max_seq_length = length
        tokenizer = EmbeddingTokenizer(spec.transformer.path, length, spec.transformer.do_lower_case)
        model = cls(transformer, spec, tokenizer)
        for dense in model.dense:
            dense.load_weights()
        model.eval()
        return model

    def _check_dims(self) -> None:
        width = self.transformer.config.hidden_size * len(self.spec.pooling.modes)
        pooling = self.spec.pooling
        if pooling.dimension is not None and pooling.dimension != self.transformer.config.hidden_size:
            raise EmbeddingError(
                f"{self.spec.path}: Pooling says embedding dimension {pooling.dimension}, the model's hidden size "
                f"is {self.transformer.config.hidden_size}"
            )
        for dense in self.dense:
            if dense.spec.in_features != width:
                raise EmbeddingError(
                    f"{dense.spec.path / 'config.json'} (Dense): in_features {dense.spec.in_features} does not "
                    f"match the {width} features coming into it"
                )
            width = dense.spec.out_features

    @property
    def dimension(self) -> int:
        """Width of the sentence embedding."""
        if len(self.dense):
            return self.dense[-1].spec.out_features
        return self.transformer.config.hidden_size * len(self.spec.pooling.modes)

    @property
    def vocab_size(self) -> int:
        return int(self.transformer.config.vocab_size)

    # -------------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        prompt_length: int = 0,
        normalize_embeddings: bool | None = None,
    ) -> Tensor:
        """input_ids, attention_mask `[batch, seq]` -> sentence embeddings `[batch, dim]` float32.
        `normalize_embeddings`: None follows the folder's Normalize module, False skips it, True normalises."""
        states = self.transformer(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True)
        embeddings = pool(states.last_hidden_state, attention_mask, self.spec.pooling.modes, prompt_length)
        return self._after_pooling(embeddings, normalize_embeddings)

    def _after_pooling(self, embeddings: Tensor, normalize_embeddings: bool | None) -> Tensor:
        """The folder's Dense and Normalize modules, in order, on pooled `[batch, features]`."""
        dense = iter(self.dense)
        normalized = False
        for module in self.spec.modules:
            if isinstance(module, DenseSpec):
                embeddings = next(dense)(embeddings)
            elif isinstance(module, NormalizeSpec) and normalize_embeddings is not False:
                embeddings, normalized = normalize(embeddings), True
        return normalize(embeddings) if normalize_embeddings and not normalized else embeddings

    # ----------------------------------------------------------------------------------------- encode's hooks
    def _activation_dims(self) -> tuple[int, int]:
        config = self.transformer.config
        return config.num_attention_heads, config.intermediate_size

    @contextlib.contextmanager
    def _running(self):
        """Eval mode and no gradients while encoding; the training mode comes back after."""
        was_training = self.training
        self.eval()
        try:
            with paddle.no_grad():
                yield
        finally:
            if was_training:
                self.train()

    def _run_batch(self, input_ids: np.ndarray, mask: np.ndarray, prompt_length: int, normalize_embeddings):
        return self(paddle.to_tensor(input_ids), paddle.to_tensor(mask), prompt_length, normalize_embeddings).numpy()

    def _empty_embedding(self, normalize_embeddings) -> np.ndarray:
        """What the modules make of a row with no tokens: pooling gives zeros, then Dense / Normalize run."""
        zeros = paddle.zeros([1, self.transformer.config.hidden_size * len(self.spec.pooling.modes)], "float32")
        return self._after_pooling(zeros, normalize_embeddings).numpy()

    # ----------------------------------------------------------------------------------------------------- save
    def save_pretrained(self, path: str | os.PathLike, tokenizer_source: str | os.PathLike | None = None) -> None:
        """Write a sentence-transformers folder (5.x format; Qwen2 weights in HF names and layout, float32) that
        sentence-transformers loads as it is. Written into a temp folder beside `path`, then renamed (an existing
        `path` is replaced)."""
        from .. import __version__
        from ..conversion import convert_checkpoint

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            self.transformer.save_pretrained(str(work / "paddle"), safe_serialization=True)
            out = work / "out"
            convert_checkpoint(work / "paddle", out, to_paddle=False, progress=False)
            source = Path(tokenizer_source or self.spec.transformer.path)
            for name in TOKENIZER_FILES:
                if (source / name).is_file():
                    shutil.copy(source / name, out / name)
            spec = self._saved_spec(out)
            write_folder_configs(out, spec, {"sentence_transformers": "5.1.2", "paddle_qwen2": __version__})
            for dense, module in zip(self.dense, (m for m in spec.modules if isinstance(m, DenseSpec))):
                from safetensors.numpy import save_file

                save_file(dense.state_arrays(), str(module.path / "model.safetensors"))
            if path.exists():
                shutil.rmtree(path)
            os.replace(out, path)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _saved_spec(self, out: Path) -> FolderSpec:
        modules: list = []
        for i, module in enumerate(self.spec.modules, start=1):
            if isinstance(module, DenseSpec):
                module = DenseSpec(
                    out / f"{i}_Dense", module.in_features, module.out_features, module.bias, module.activation
                )
            elif isinstance(module, PoolingSpec):
                module = PoolingSpec(module.modes, self.transformer.config.hidden_size, module.include_prompt)
            modules.append(module)
        transformer = type(self.spec.transformer)(out, self.max_seq_length, self.spec.transformer.do_lower_case)
        return FolderSpec(out, transformer, modules, dict(self.prompts), self.default_prompt_name, self.spec.is_causal)
