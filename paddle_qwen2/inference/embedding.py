"""`InferenceEmbeddingModel`: `EmbeddingModel.encode` on the exported embedding program (Paddle Inference).

    model = InferenceEmbeddingModel.from_pretrained("gte-Qwen2-1.5B-instruct")   # exported once into the cache
    vectors = model.encode(texts, prompt_name="query")                          # as EmbeddingModel.encode

The program holds the folder's whole pipeline (Transformer, Pooling, Dense, Normalize), so what runs on the host is
the tokenization and batching of `EmbeddingEncoder` and, when asked for, a normalisation the folder does not do.
What the program cannot do is refused with an `EmbeddingError`: skipping the folder's Normalize, and pooling
without the prompt's tokens (`include_prompt: false`) — the dygraph `EmbeddingModel` does both.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..embedding.encoder import EmbeddingEncoder
from ..embedding.errors import EmbeddingError
from ..embedding.folder import read_folder
from ..embedding.tokenization import EmbeddingTokenizer
from ..export import ExportError

__all__ = ["InferenceEmbeddingModel"]


class InferenceEmbeddingModel(EmbeddingEncoder):
    """A sentence-transformers folder's exported `embedding` program with `encode`."""

    def __init__(self, predictor, spec, tokenizer: EmbeddingTokenizer):
        self.predictor = predictor
        self.spec = spec
        self.tokenizer = tokenizer
        meta = predictor.meta
        self._dimension = int(meta["embedding"]["dimension"])
        self._heads = int(meta["config"]["num_attention_heads"])
        self._intermediate = int(meta["config"]["intermediate_size"])
        self._vocab_size = int(meta["config"]["vocab_size"])

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        onednn: bool | None = None,
        threads: int | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> InferenceEmbeddingModel:
        """`path`: a sentence-transformers folder (exported into the export cache on first use) or an embedding
        export folder."""
        from ..runtime import configure_cpu_threads

        configure_cpu_threads()
        from .predictor import Predictor, resolve_export

        try:
            folder = resolve_export(path, "embedding", cache_dir)
            predictor = Predictor(folder, onednn=onednn, threads=threads)
        except ExportError as exc:
            raise EmbeddingError(str(exc)) from None
        meta = predictor.meta["embedding"]
        source = Path(path) if (Path(path) / "modules.json").is_file() else None
        spec = read_folder(source) if source is not None else _spec_from_meta(folder, meta)
        spec.transformer.max_seq_length = int(meta["max_seq_length"])
        tokenizer = EmbeddingTokenizer(folder, int(meta["max_seq_length"]), bool(meta["do_lower_case"]))
        return cls(predictor, spec, tokenizer)

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def _activation_dims(self) -> tuple[int, int]:
        return self._heads, self._intermediate

    def _run_batch(self, input_ids: np.ndarray, mask: np.ndarray, prompt_length: int, normalize_embeddings):
        if prompt_length:
            raise EmbeddingError(
                f"{self.spec.path}: the Pooling module leaves the prompt out (include_prompt "
                "false), which the exported program cannot do; use the dygraph EmbeddingModel "
                "(paddle-qwen2 embed --engine dygraph)"
            )
        if normalize_embeddings is False and self.spec.normalizes:
            raise EmbeddingError(
                f"{self.spec.path}: the exported program ends with the folder's Normalize "
                "module; unnormalised embeddings need the dygraph EmbeddingModel (--engine "
                "dygraph)"
            )
        import paddle

        out = self.predictor.run([paddle.to_tensor(input_ids), paddle.to_tensor(mask)])[0].numpy()
        if normalize_embeddings and not self.spec.normalizes:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32, copy=False)

    def _empty_embedding(self, normalize_embeddings) -> np.ndarray:
        """A row of one padding token with a zero mask: the program's answer for a text with no tokens."""
        ids = np.full((1, 1), self.tokenizer.pad_token_id, dtype=np.int64)
        return self._run_batch(ids, np.zeros((1, 1), dtype=np.int64), 0, normalize_embeddings)


def _spec_from_meta(folder: Path, meta: dict):
    """A folder spec for an export folder (prompts, Normalize) when the original folder is not at hand."""
    from ..embedding.folder import FolderSpec, NormalizeSpec, PoolingSpec, TransformerSpec

    transformer = TransformerSpec(folder, int(meta["max_seq_length"]), bool(meta["do_lower_case"]))
    modules = [PoolingSpec(tuple(meta["pooling"]), None, bool(meta["include_prompt"]))]
    if meta["normalize"]:
        modules.append(NormalizeSpec())
    return FolderSpec(
        folder, transformer, modules, dict(meta["prompts"]), meta["default_prompt_name"], bool(meta["is_causal"])
    )
