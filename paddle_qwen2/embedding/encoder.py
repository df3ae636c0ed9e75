"""`EmbeddingEncoder`: `encode` as sentence-transformers does it (prompts, tokenization, length-sorted batches,
truncation of dimensions), `encode_tokens` for pre-tokenized input (the ids used as given) and `embed_inputs` for
the server's mixed batches, over a model that embeds one padded batch at a time: the dygraph `EmbeddingModel`, or
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
    """`encode` (texts), `encode_tokens` (token ids) and the folder's prompts over `_run_batch(input_ids, mask,
    prompt_length, normalize) -> [rows, dim]`; subclasses set `spec` and `tokenizer` and give `dimension`,
    `vocab_size`, `_activation_dims`, `_run_batch` and `_empty_embedding`."""

    spec: FolderSpec
    tokenizer: EmbeddingTokenizer

    @property
    def dimension(self) -> int:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        """Rows of the token embedding table: token ids are in `[0, vocab_size)`."""
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
        batch_size: int | None = 32,
        normalize_embeddings: bool | None = None,
        truncate_dim: int | None = None,
        show_progress_bar: bool | None = None,
        max_batch_tokens: int | None = None,
    ) -> np.ndarray:
        """Embeddings of `texts` as float32 numpy `[n, dim]` in input order (`[dim]` for one string).

        As sentence-transformers: the prompt is prepended to each text, texts are stripped and tokenized with the
        tokenizer's post-processor, truncated to `max_seq_length`, and run in batches sorted by token length,
        longest first. `truncate_dim=N` keeps the first N dimensions and L2-normalises them again when the
        embeddings are normalised (as OpenAI's `dimensions` and TEI do). A batch holds at most `batch_size` texts
        (None: no count limit) and, with `max_batch_tokens` (TEI's name), at most that many padded tokens
        (rows x its longest text; a longer text runs alone)."""
        single = isinstance(texts, str)
        out, _ = self.embed_texts(
            [texts] if single else texts,
            prompt_name=prompt_name,
            prompt=prompt,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            normalize_embeddings=normalize_embeddings,
            truncate_dim=truncate_dim,
            show_progress_bar=show_progress_bar,
        )
        return out[0] if single else out

    def embed_texts(
        self,
        texts: Sequence[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int | None = 32,
        max_batch_tokens: int | None = None,
        normalize_embeddings: bool | None = None,
        truncate_dim: int | None = None,
        show_progress_bar: bool | None = False,
    ) -> tuple[np.ndarray, int]:
        """`encode` of a list of texts, and the number of tokens it ran (prompt and special tokens included,
        padding not): what the corpus runner reports as tokens/s. Returns (`[n, dim]` float32, tokens)."""
        texts = list(texts)
        self._check_encode_args(batch_size, truncate_dim, max_batch_tokens)
        if not all(isinstance(t, str) for t in texts):
            bad = next(i for i, t in enumerate(texts) if not isinstance(t, str))
            raise EmbeddingError(f"texts[{bad}] is {type(texts[bad]).__name__}, expected str")
        ids, prompt_length = self._tokenize(texts, self.resolve_prompt(prompt_name, prompt))
        out = self._encode_ids(
            ids, batch_size, prompt_length, normalize_embeddings, show_progress_bar, max_batch_tokens
        )
        return self._truncate_dim(out, truncate_dim, normalize_embeddings), sum(len(row) for row in ids)

    def encode_tokens(
        self,
        token_ids: Sequence[Sequence[int]],
        batch_size: int = 32,
        normalize_embeddings: bool | None = None,
        truncate_dim: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Embeddings `[n, dim]` float32 of pre-tokenized inputs, in input order.

        Each row of ids is the model's whole input, used as given (as vLLM and OpenAI take token-id input): no
        prompt is prepended and no special token is added, so the ids of a text as the tokenizer encodes it
        (`tokenizer.encode_ids`, special tokens included) embed as `encode` embeds the text. Rows longer than
        `max_seq_length` are cut as a text's tokens are (`EmbeddingTokenizer.truncate_ids`). Ids must be in
        `[0, vocab_size)`."""
        self._check_encode_args(batch_size, truncate_dim)
        ids = self._checked_ids(token_ids)
        out = self._encode_ids(ids, batch_size, 0, normalize_embeddings, show_progress_bar)
        return self._truncate_dim(out, truncate_dim, normalize_embeddings)

    def embed_inputs(self, inputs: Sequence[str | Sequence[int]], batch_size: int = 32) -> tuple[np.ndarray, list[int]]:
        """The server's batch: texts (embedded as `encode` with the default prompt) and token-id rows (as
        `encode_tokens`) mixed, in input order. Returns (embeddings `[n, dim]` float32, tokens run per input)."""
        inputs = list(inputs)
        out = np.zeros((len(inputs), self.dimension), dtype=np.float32)
        counts = [0] * len(inputs)
        texts = [i for i, x in enumerate(inputs) if isinstance(x, str)]
        rows = [i for i, x in enumerate(inputs) if not isinstance(x, str)]
        if texts:
            ids, prompt_length = self._tokenize([inputs[i] for i in texts], self.resolve_prompt())
            out[texts] = self._encode_ids(ids, batch_size, prompt_length, None, False)
            for i, row in zip(texts, ids):
                counts[i] = len(row)
        if rows:
            ids = self._checked_ids([inputs[i] for i in rows])
            out[rows] = self._encode_ids(ids, batch_size, 0, None, False)
            for i, row in zip(rows, ids):
                counts[i] = len(row)
        return out, counts

    def _check_encode_args(self, batch_size: int | None, truncate_dim: int | None, max_batch_tokens=None) -> None:
        if batch_size is not None and batch_size <= 0:
            raise EmbeddingError(f"batch_size must be positive, got {batch_size}")
        if max_batch_tokens is not None and max_batch_tokens <= 0:
            raise EmbeddingError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
        if truncate_dim is not None and not 0 < truncate_dim <= self.dimension:
            raise EmbeddingError(f"truncate_dim must be in [1, {self.dimension}], got {truncate_dim}")

    def _tokenize(self, texts: list[str], text_prompt: str | None) -> tuple[list[list[int]], int]:
        """Token ids of `texts` with the prompt prepended, and the prompt's token count that pooling leaves out
        (0 unless the Pooling excludes the prompt)."""
        prompt_length = 0
        if text_prompt:
            texts = [text_prompt + t for t in texts]
            if not self.spec.pooling.include_prompt:
                prompt_length = self.tokenizer.prompt_length(text_prompt)
        return self.tokenizer.encode_ids(texts), prompt_length

    def _checked_ids(self, token_ids: Sequence[Sequence[int]]) -> list[list[int]]:
        """Rows of ints in `[0, vocab_size)`, truncated to `max_seq_length`; EmbeddingError naming the bad id."""
        vocab = self.vocab_size
        rows = []
        for i, row in enumerate(token_ids):
            if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
                raise EmbeddingError(f"token_ids[{i}] is {type(row).__name__}, expected a list of token ids")
            for j, token in enumerate(row):
                if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not 0 <= token < vocab:
                    raise EmbeddingError(f"token_ids[{i}][{j}] is {token!r}, expected a token id in [0, {vocab})")
            rows.append(self.tokenizer.truncate_ids([int(t) for t in row]))
        return rows

    def _truncate_dim(self, out: np.ndarray, truncate_dim: int | None, normalize_embeddings) -> np.ndarray:
        """The first `truncate_dim` dimensions, L2-normalised again when the embeddings are unit vectors."""
        if truncate_dim is None:
            return out
        out = out[:, :truncate_dim]
        if self.normalizes(normalize_embeddings):
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(out, dtype=np.float32)

    def _encode_ids(
        self,
        ids: list[list[int]],
        batch_size: int | None,
        prompt_length: int,
        normalize_embeddings,
        show_progress_bar,
        max_batch_tokens: int | None = None,
    ) -> np.ndarray:
        out = np.zeros((len(ids), self.dimension), dtype=np.float32)
        order = np.argsort([-len(row) for row in ids], kind="stable")
        show = len(ids) > (batch_size or 32) if show_progress_bar is None else show_progress_bar
        batches = self._batches(order, [len(ids[i]) for i in order], batch_size, max_batch_tokens)
        with self._running(), tqdm(total=len(ids), unit="text", desc="Embedding", disable=not show) as bar:
            for batch in batches:
                input_ids, mask = self.tokenizer.pad([ids[i] for i in batch])
                if input_ids.shape[1] == 0:  # only empty texts and no special tokens: nothing to run
                    out[batch] = self._empty_embedding(normalize_embeddings)
                else:
                    out[batch] = self._run_batch(input_ids, mask, prompt_length, normalize_embeddings)
                bar.update(len(batch))
        return out

    def _batches(
        self, order: np.ndarray, lengths: list[int], batch_size: int | None, max_batch_tokens: int | None = None
    ) -> list[np.ndarray]:
        """`order` (sorted longest first, `lengths` its token counts) cut into batches of at most `batch_size`
        texts and `max_batch_tokens` padded tokens (either None: no such limit), fewer where the texts are long: a
        batch's largest activations (the attention scores `[rows, heads, seq, seq]` and the MLP's
        `[rows * seq, intermediate]`, float32) stay within `BATCH_TENSOR_BYTES`, which glibc serves from its
        reusable heap instead of fresh, page-faulting mappings. Every batch holds at least one text."""
        heads, intermediate = self._activation_dims()
        batches, start = [], 0
        while start < len(order):
            seq = max(lengths[start], 1)
            per_row = 4 * seq * max(heads * seq, intermediate)
            rows = BATCH_TENSOR_BYTES // per_row
            if batch_size is not None:
                rows = min(rows, batch_size)
            if max_batch_tokens is not None:
                rows = min(rows, max_batch_tokens // seq)
            rows = max(1, rows)
            batches.append(order[start : start + rows])
            start += rows
        return batches
