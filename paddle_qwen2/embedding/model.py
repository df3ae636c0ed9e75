"""`EmbeddingModel`: a sentence-transformers folder (or a plain Qwen2 folder) as one paddle Layer with `encode`.

    model = EmbeddingModel.from_pretrained("gte-Qwen2-1.5B-instruct")      # HF or Paddle weights
    queries = model.encode(["how do rivers form?"], prompt_name="query")    # float32 numpy [n, dim]
    model.save_pretrained("out")                                            # a sentence-transformers folder

`forward(input_ids, attention_mask)` runs Transformer -> Pooling -> Dense... -> Normalize and is differentiable,
which is what the embedding fine-tuning trains.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import paddle
from paddle import Tensor, nn
from tqdm import tqdm

from ..conversion.names import TOKENIZER_FILES
from ..modeling import Qwen2Model
from .folder import DenseSpec, EmbeddingError, FolderSpec, NormalizeSpec, PoolingSpec, read_folder, write_folder_configs
from .modules import Dense, normalize, pool
from .tokenization import EmbeddingTokenizer

__all__ = ["EmbeddingModel", "BATCH_TENSOR_BYTES"]

# Largest activation of one encode batch: glibc's malloc serves blocks up to 32 MB from its heap once it has seen
# them freed; larger ones are fresh mappings whose first touch page-faults (see runtime.keep_freed_memory).
BATCH_TENSOR_BYTES = 32 * 2**20


def _max_length(spec: FolderSpec, model: Qwen2Model, max_length: int | None) -> int:
    """The caller's, else the folder's, else min(max_position_embeddings, tokenizer's model_max_length)."""
    if max_length is not None:
        if max_length <= 0:
            raise EmbeddingError(f"max_length must be positive, got {max_length}")
        return max_length
    if spec.transformer.max_seq_length:
        return int(spec.transformer.max_seq_length)
    return int(model.config.max_position_embeddings)


class EmbeddingModel(nn.Layer):
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
    ) -> EmbeddingModel:
        """A sentence-transformers folder (either format; Qwen2 weights in HF or Paddle layout), or a plain Qwen2
        folder with `pooling` ("last", "mean", ...) and `normalize` chosen here. `pooling` also overrides a
        folder's Pooling mode, `is_causal` its attention direction (`config.json`'s `is_causal`)."""
        spec = read_folder(path, pooling=pooling, normalize=normalize)
        transformer = Qwen2Model.from_pretrained(str(spec.transformer.path), dtype=dtype)
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

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def prompts(self) -> dict[str, str]:
        return self.spec.prompts

    @property
    def default_prompt_name(self) -> str | None:
        return self.spec.default_prompt_name

    @property
    def max_seq_length(self) -> int:
        return self.tokenizer.max_length

    @property
    def dimension(self) -> int:
        """Width of the sentence embedding."""
        if len(self.dense):
            return self.dense[-1].spec.out_features
        return self.transformer.config.hidden_size * len(self.spec.pooling.modes)

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

    def normalizes(self, normalize_embeddings: bool | None = None) -> bool:
        """Whether `forward` returns unit vectors for this `normalize_embeddings`."""
        return self.spec.normalizes if normalize_embeddings is None else bool(normalize_embeddings)

    # --------------------------------------------------------------------------------------------------- encode
    def resolve_prompt(self, prompt_name: str | None = None, prompt: str | None = None) -> str | None:
        """The prompt text: `prompt` as given, else the named one, else the folder's default (or none)."""
        if prompt is not None:
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                names = ", ".join(repr(n) for n in self.prompts) or "none"
                raise EmbeddingError(f"unknown prompt name {prompt_name!r}; {self.spec.path} has prompts: {names}")
            return self.prompts[prompt_name]
        if self.default_prompt_name is not None:
            return self.prompts[self.default_prompt_name]
        return None

    def encode(
        self,
        texts: str | Sequence[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        normalize_embeddings: bool | None = None,
        truncate_dim: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Embeddings of `texts` as float32 numpy `[n, dim]` in input order (`[dim]` for one string).

        As sentence-transformers: the prompt is prepended to each text, texts are stripped and tokenized with the
        tokenizer's post-processor, truncated to `max_seq_length`, and run in batches sorted by token length,
        longest first. `truncate_dim=N` keeps the first N dimensions and L2-normalises them again when the
        embeddings are normalised (as OpenAI's `dimensions` and TEI do)."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if batch_size <= 0:
            raise EmbeddingError(f"batch_size must be positive, got {batch_size}")
        if truncate_dim is not None and not 0 < truncate_dim <= self.dimension:
            raise EmbeddingError(f"truncate_dim must be in [1, {self.dimension}], got {truncate_dim}")
        if not all(isinstance(t, str) for t in texts):
            bad = next(i for i, t in enumerate(texts) if not isinstance(t, str))
            raise EmbeddingError(f"texts[{bad}] is {type(texts[bad]).__name__}, expected str")
        text_prompt = self.resolve_prompt(prompt_name, prompt)
        prompt_length = 0
        if text_prompt:
            texts = [text_prompt + t for t in texts]
            if not self.spec.pooling.include_prompt:
                prompt_length = self.tokenizer.prompt_length(text_prompt)
        out = self._encode_ids(self.tokenizer.encode_ids(texts), batch_size, prompt_length, normalize_embeddings,
                               show_progress_bar)  # fmt: skip
        if truncate_dim is not None:
            out = out[:, :truncate_dim]
            if self.normalizes(normalize_embeddings):
                out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
            out = np.ascontiguousarray(out, dtype=np.float32)
        return out[0] if single else out

    def _encode_ids(
        self, ids: list[list[int]], batch_size: int, prompt_length: int, normalize_embeddings, show_progress_bar
    ) -> np.ndarray:
        out = np.zeros((len(ids), self.dimension), dtype=np.float32)
        order = np.argsort([-len(row) for row in ids], kind="stable")
        show = len(ids) > batch_size if show_progress_bar is None else show_progress_bar
        was_training = self.training
        self.eval()
        with paddle.no_grad(), tqdm(total=len(ids), unit="text", desc="Embedding", disable=not show) as bar:
            for batch in self._batches(order, [len(ids[i]) for i in order], batch_size):
                input_ids, mask = self.tokenizer.pad([ids[i] for i in batch])
                if input_ids.shape[1] == 0:  # only empty texts and no special tokens: nothing to run
                    out[batch] = self._empty_embedding(normalize_embeddings)
                else:
                    out[batch] = self(paddle.to_tensor(input_ids), paddle.to_tensor(mask), prompt_length,
                                      normalize_embeddings).numpy()  # fmt: skip
                bar.update(len(batch))
        if was_training:
            self.train()
        return out

    def _batches(self, order: np.ndarray, lengths: list[int], batch_size: int) -> list[np.ndarray]:
        """`order` (sorted longest first, `lengths` its token counts) cut into batches of at most `batch_size`
        texts, fewer where the texts are long: a batch's largest activations (the attention scores
        `[rows, heads, seq, seq]` and the MLP's `[rows * seq, intermediate]`, float32) stay within
        `BATCH_TENSOR_BYTES`, which glibc serves from its reusable heap instead of fresh, page-faulting mappings."""
        config = self.transformer.config
        batches, start = [], 0
        while start < len(order):
            seq = max(lengths[start], 1)
            per_row = 4 * seq * max(config.num_attention_heads * seq, config.intermediate_size)
            rows = max(1, min(batch_size, BATCH_TENSOR_BYTES // per_row))
            batches.append(order[start : start + rows])
            start += rows
        return batches

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
                module = DenseSpec(out / f"{i}_Dense", module.in_features, module.out_features, module.bias,
                                   module.activation)  # fmt: skip
            elif isinstance(module, PoolingSpec):
                module = PoolingSpec(module.modes, self.transformer.config.hidden_size, module.include_prompt)
            modules.append(module)
        transformer = type(self.spec.transformer)(out, self.max_seq_length, self.spec.transformer.do_lower_case)
        return FolderSpec(out, transformer, modules, dict(self.prompts), self.default_prompt_name, self.spec.is_causal)
