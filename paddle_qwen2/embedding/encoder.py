"""`EmbeddingEncoder`: `encode` as sentence-transformers does it (prompts, tokenization, length-sorted batches,
truncation of dimensions), over a model that embeds one padded batch at a time: the dygraph `EmbeddingModel`, or
`paddle_qwen2.inference.embedding.InferenceEmbeddingModel` on an exported program."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from .errors import EmbeddingError
from .folder import FolderSpec
from .tokenization import EmbeddingTokenizer

__all__ = ["EmbeddingEncoder", "BATCH_TENSOR_BYTES"]

# Largest activation of one encode batch: glibc's malloc serves blocks up to 32 MB from its heap once it has seen
# them freed; larger ones are fresh mappings whose first touch page-faults (see runtime.keep_freed_memory).
BATCH_TENSOR_BYTES = 32 * 2**20


class EmbeddingEncoder:
    """`encode` and the folder's prompts over `_run_batch(input_ids, mask, prompt_length, normalize) -> [rows,
    dim]`; subclasses set `spec` and `tokenizer` and give `dimension`, `_activation_dims`, `_run_batch` and
    `_empty_embedding`."""

    spec: FolderSpec
    tokenizer: EmbeddingTokenizer

    @property
    def dimension(self) -> int:
        raise NotImplementedError

    def _activation_dims(self) -> tuple[int, int]:
        """(attention heads, MLP width): what sizes a batch's largest activations."""
        raise NotImplementedError

    def _run_batch(self, input_ids: np.ndarray, mask: np.ndarray, prompt_length: int, normalize_embeddings):
        """Embeddings `[rows, dim]` float32 of one padded batch."""
        raise NotImplementedError

    def _empty_embedding(self, normalize_embeddings) -> np.ndarray:
        """What the modules make of a row with no tokens."""
        raise NotImplementedError

    def _running(self):
        return contextlib.nullcontext()

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
        out = self._encode_ids(
            self.tokenizer.encode_ids(texts), batch_size, prompt_length, normalize_embeddings, show_progress_bar
        )
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
        with self._running(), tqdm(total=len(ids), unit="text", desc="Embedding", disable=not show) as bar:
            for batch in self._batches(order, [len(ids[i]) for i in order], batch_size):
                input_ids, mask = self.tokenizer.pad([ids[i] for i in batch])
                if input_ids.shape[1] == 0:  # only empty texts and no special tokens: nothing to run
                    out[batch] = self._empty_embedding(normalize_embeddings)
                else:
                    out[batch] = self._run_batch(input_ids, mask, prompt_length, normalize_embeddings)
                bar.update(len(batch))
        return out

    def _batches(self, order: np.ndarray, lengths: list[int], batch_size: int) -> list[np.ndarray]:
        """`order` (sorted longest first, `lengths` its token counts) cut into batches of at most `batch_size`
        texts, fewer where the texts are long: a batch's largest activations (the attention scores
        `[rows, heads, seq, seq]` and the MLP's `[rows * seq, intermediate]`, float32) stay within
        `BATCH_TENSOR_BYTES`, which glibc serves from its reusable heap instead of fresh, page-faulting mappings."""
        heads, intermediate = self._activation_dims()
        batches, start = [], 0
        while start < len(order):
            seq = max(lengths[start], 1)
            per_row = 4 * seq * max(heads * seq, intermediate)
            rows = max(1, min(batch_size, BATCH_TENSOR_BYTES // per_row))
            batches.append(order[start : start + rows])
            start += rows
        return batches
