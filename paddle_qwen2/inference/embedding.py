"""`InferenceEmbeddingModel`: `EmbeddingModel.encode` on the exported embedding program (Paddle Inference, or
onnxruntime for int8 / int4 weights).

    model = InferenceEmbeddingModel.from_pretrained("gte-Qwen2-1.5B-instruct")   # exported once into the cache
    vectors = model.encode(texts, prompt_name="query")                          # as EmbeddingModel.encode
    model = InferenceEmbeddingModel.from_pretrained(folder, weights="int8")     # the ONNX export, 8-bit weights

`weights` picks the precision of the weights the program reads (`export.WEIGHTS`): float32 and bfloat16 run on
Paddle Inference (`Predictor`; bfloat16 on oneDNN's bf16 passes), int8 and int4 on onnxruntime's n-bit matmuls
(`OnnxPredictor` of the `--format onnx` export).

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
        weights: str | None = None,
    ) -> InferenceEmbeddingModel:
        """`path`: a sentence-transformers folder (exported into the export cache on first use) or an embedding
        export folder. `weights`: float32, bfloat16, int8 or int4 (None: an export folder's own, float32 for a
        sentence-transformers folder); EmbeddingError for an export folder of other weights, a precision this
        machine cannot run, or `onednn` with an onnxruntime export."""
        from ..runtime import configure_cpu_threads

        configure_cpu_threads()
        from .predictor import resolve_export

        try:
            folder = resolve_export(path, "embedding", cache_dir, weights=weights)
            predictor = _predictor(folder, onednn, threads)
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
        out = _numpy(self.predictor.run(self._inputs(input_ids, mask))[0])
        if np.isnan(out).any():
            raise EmbeddingError(
                f"{self.predictor.folder}: the program ({self.predictor.meta.get('weights', 'float32')} weights) "
                f"returned NaN for {int(np.isnan(out).any(axis=1).sum())} of {len(out)} texts of a batch: in bf16 a "
                "padded (or empty) text's row is NaN (its attention mask's float32 minimum is -inf in bf16); embed "
                "with --batch-size 1, or float32 weights"
            )
        if normalize_embeddings and not self.spec.normalizes:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32, copy=False)

    def _inputs(self, input_ids: np.ndarray, mask: np.ndarray) -> list:
        """The program's inputs: numpy arrays for onnxruntime, `paddle.Tensor`s for Paddle Inference."""
        if self.predictor.meta.get("format") == "onnx":
            return [input_ids, mask]
        import paddle

        return [paddle.to_tensor(input_ids), paddle.to_tensor(mask)]

    def _empty_embedding(self, normalize_embeddings) -> np.ndarray:
        """A row of one padding token with a zero mask: the program's answer for a text with no tokens."""
        ids = np.full((1, 1), self.tokenizer.pad_token_id, dtype=np.int64)
        return self._run_batch(ids, np.zeros((1, 1), dtype=np.int64), 0, normalize_embeddings)


def _predictor(folder: Path, onednn: bool | None, threads: int | None):
    """The predictor of an export folder: onnxruntime's for a `--format onnx` export, else Paddle Inference's."""
    from ..export import read_meta

    meta = read_meta(folder)
    if meta.get("format") == "onnx":
        if onednn:
            raise ExportError(f"{folder}: onnxruntime runs this export ({meta.get('weights')} weights), not oneDNN")
        from .onnx_predictor import OnnxPredictor

        return OnnxPredictor(folder, threads=threads)
    from .predictor import Predictor

    return Predictor(folder, onednn=onednn, threads=threads)


def _numpy(value) -> np.ndarray:
    """A program output (numpy from onnxruntime, `paddle.Tensor` from Paddle Inference) as a numpy array."""
    return value if isinstance(value, np.ndarray) else value.numpy()


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
