"""`LLM`: generation with the one-step decode program (`paddle-qwen2 export --task decode`) on Paddle Inference or
onnxruntime, or with the dygraph model; the same loop either way.

    llm = LLM.from_pretrained("Qwen2.5-0.5B-Instruct")                 # a checkpoint (exported once) or an export
    llm = LLM.from_pretrained("Qwen2.5-0.5B-Instruct", weights="int4") # int8 / int4 weights on onnxruntime
    [out] = llm.generate([llm.tokenizer.encode_chat(messages)], SamplingParams(temperature=0))
    out.text, out.finish_reason

The low-level API the server's scheduler uses (continuous batching):

    logits, batch = llm.prefill(prompts)      # prompts: list of id lists -> logits [n, vocab] of each last token
    logits, batch = llm.prefill(prompts, prefix_cache=cache)   # cached prefixes are not run again (prefix_cache.py)
    logits = llm.decode(batch, tokens)        # one token per row -> logits [rows, vocab]; the cache grows in place
    batch = Batch.concat([batch, other])      # join (left-padded to the longest row)
    batch = batch.select(rows)                # leave

Engines (`ENGINES`, `LLM.engine`): "inference" (Paddle Inference: float32 exports, and bfloat16 ones on oneDNN's
bf16 passes), "onnxruntime" (a `--format onnx` export: float32, int8 or int4 weights, `onnx_predictor.OnnxPredictor`)
and "dygraph" (the paddle model, float32). `from_pretrained(engine=None)` takes onnxruntime for int8 / int4 weights
or an ONNX export folder, Paddle Inference otherwise.

Rows are left-padded: position ids are counted over each row's real tokens, so a row gives the same tokens alone
or in a batch. The KV cache is a list of `[batch, kv_heads, past, head_dim]` tensors (the decode program's layout;
an older export's `[batch, past, kv_heads, head_dim]` runs too) that the program returns and is fed again without
host copies: paddle tensors on Paddle Inference and dygraph, numpy arrays on onnxruntime (`Batch` and the prefix
cache handle both); sampling runs on the host (`sampling.Sampler`). Not thread-safe: one thread drives an `LLM`.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..export import ExportError
from .errors import EngineError
from .prefix_cache import DEFAULT_BLOCK_SIZE, PrefixCache
from .prompt_logprobs import prompt_logprobs
from .sampling import SamplingParams
from .sequence import Completion, GenerationSequence
from .tokenization import ChatTokenizer, TokenizerError

__all__ = ["LLM", "Batch", "EngineError", "ENGINES"]

ENGINES = ("inference", "onnxruntime", "dygraph")
QUANTIZED = ("int8", "int4")  # weights only onnxruntime runs


class Batch:
    """The KV cache of a set of rows: `cache` `[key_0, value_0, ...]`, each `[rows, kv_heads, width, head_dim]`
    (`width` on axis `past_axis`: 1 in older exports' layout; paddle tensors, or numpy arrays for onnxruntime), and
    `mask` `[rows, width]` int64 (1 for a real token; rows are left-padded)."""

    def __init__(self, cache: list, mask: np.ndarray, past_axis: int = 2):
        self.cache = cache
        self.mask = mask
        self.past_axis = past_axis

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    @property
    def lengths(self) -> list[int]:
        """Tokens in the cache of each row (prompt + generated so far)."""
        return self.mask.sum(axis=1).astype(int).tolist()

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        """The rows of `batches` in order, left-padded to the widest."""
        batches = [b for b in batches if len(b)]
        if len(batches) == 1:
            return batches[0]
        axis = batches[0].past_axis
        width = max(b.mask.shape[1] for b in batches)
        masks = [np.pad(b.mask, ((0, 0), (width - b.mask.shape[1], 0))) for b in batches]
        host = isinstance(batches[0].cache[0], np.ndarray)
        if host:
            zeros, concat = np.zeros, np.concatenate
        else:
            import paddle

            zeros, concat = paddle.zeros, paddle.concat
        cache = []
        for i in range(len(batches[0].cache)):
            parts = []
            for b in batches:
                t, missing = b.cache[i], width - b.mask.shape[1]
                if missing:
                    shape = list(t.shape)
                    shape[axis] = missing
                    t = concat([zeros(shape, t.dtype), t], axis=axis)
                parts.append(t)
            cache.append(concat(parts, axis=0))
        return Batch(cache, np.concatenate(masks, axis=0), axis)

    def select(self, rows: Sequence[int]) -> Batch:
        """These rows, in this order; columns that are padding in every kept row are dropped."""
        rows = [int(r) for r in rows]
        mask = self.mask[rows]
        real = np.flatnonzero(mask.any(axis=0))
        start = int(real[0]) if len(real) else mask.shape[1]
        columns = (slice(None),) * self.past_axis + (slice(start, None),)
        if self.cache and isinstance(self.cache[0], np.ndarray):
            cache = [np.ascontiguousarray(t[rows][columns]) for t in self.cache]
        else:
            import paddle

            index = paddle.to_tensor(np.asarray(rows, dtype=np.int64))
            # contiguous: Paddle Inference reads a strided view (the column slice) as if it were dense
            cache = [paddle.gather(t, index, axis=0)[columns].contiguous() for t in self.cache]
        return Batch(cache, np.ascontiguousarray(mask[:, start:]), self.past_axis)

    def tile(self, rows: int) -> list:
        """The cache of this one-row batch repeated `rows` times (new tensors or arrays, in the cache's kind)."""
        if self.cache and isinstance(self.cache[0], np.ndarray):
            return [np.repeat(t, rows, axis=0) for t in self.cache]
        import paddle

        return [paddle.tile(t, [rows] + [1] * (len(t.shape) - 1)) for t in self.cache]


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    return ids, mask


class _DygraphStep:
    """The decode program run eagerly on the paddle model (its projections fused, as the exports hold them)."""

    def __init__(self, folder: Path, dtype: str):
        from ..export import FUSED
        from ..export.programs import DecodeProgram
        from ..modeling import Qwen2ForCausalLM

        model = Qwen2ForCausalLM.from_pretrained(str(folder), dtype=dtype, **FUSED)
        model.eval()
        self.program = DecodeProgram(model)
        self.config = model.config.to_dict()
        self.cache_layout = DecodeProgram.CACHE_LAYOUT
        self.description = f"dygraph ({dtype})"
        self.engine, self.weights = "dygraph", dtype

    def __call__(self, inputs: list, owner: Batch) -> tuple:
        import paddle

        with paddle.no_grad():
            logits, *cache = self.program(inputs[0], inputs[1], inputs[2:])
        return logits, cache


class _Lane:
    """A predictor and the `Batch` holding the outputs of its last run. A CPU predictor writes each run's outputs
    into the buffers of its previous outputs when they fit (a later run of the same shapes overwrote a batch's
    cache), so a lane is free for a run only when no live batch holds its last outputs any more."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self.owner = None  # weakref to the Batch
        self.cache: list | None = None  # the list that batch was given

    def busy(self) -> bool:
        owner = self.owner() if self.owner is not None else None
        return owner is not None and owner.cache is self.cache

    def release(self) -> None:
        """Give the holding batch copies of its cache: the buffers are the predictor's again."""
        import paddle

        owner = self.owner() if self.owner is not None else None
        if owner is not None and owner.cache is self.cache:
            owner.cache = [paddle.assign(t) for t in owner.cache]
        self.owner = self.cache = None


_FIRST_CACHE_LAYOUT = ("batch", "past", "kv_heads", "head_dim")  # of exports that do not name theirs


class _PredictorStep:
    """The exported decode program on Paddle Inference. On CPU, one-token steps run without oneDNN on one thread (a
    step of one row reads every weight once, which one core does at the memory bandwidth, and oneDNN's per-op
    overhead outweighs its kernels there). A run of several rows or tokens is a matrix product per weight that one
    core computes slower than it reads: its matmuls get all threads (MKL's thread-local count). Prompts: with
    `onednn=None` a second predictor of the same files runs them with oneDNN on all threads (faster when OpenMP
    workers spin between regions), holding the weights twice; with `onednn=False` the step predictor runs them too
    (faster where OpenMP workers sleep between regions, as in `serve`'s engine process). `onednn=True`, or a
    `threads` count, runs one predictor as it is; so does a bfloat16 export (`--weights bfloat16`: oneDNN's bf16
    passes, one predictor with oneDNN on all threads).

    Steps alternate between two clones of the step predictor (shared weights, their own buffers): the cache a
    step returns stays in its clone's output buffers while the other clone runs the next step, so it is never
    copied (copying every layer's cache would be a sizeable part of a step). A batch still holding a clone's
    outputs when that clone must run again gets copies first (`_Lane.release`)."""

    def __init__(self, folder: Path, onednn: bool | None, threads: int | None):
        from ..export import read_meta
        from .predictor import Predictor

        if read_meta(folder).get("weights") == "bfloat16":
            onednn = True
        widen = onednn is not True and threads is None  # one thread, matmuls on all of them where that pays
        step = Predictor(folder, onednn=bool(onednn), threads=threads or (1 if widen else None))
        prefill = step
        self.matmul_threads = None
        if widen and step.device == "cpu":
            if onednn is None and step.meta["paddle_inference"]["onednn"]:
                prefill = Predictor(folder, onednn=True)
            cores = int(os.environ.get("OMP_NUM_THREADS", "1"))
            if cores > 1 and step.can_widen_matmuls:
                self.matmul_threads = cores
        self.step_lanes = [_Lane(step), _Lane(step.twin())]
        self.prefill_lanes = self.step_lanes if prefill is step else [_Lane(prefill)]
        self.predictor = step
        self.config = step.meta["config"]
        self.cache_layout = tuple(step.meta["decode"].get("cache_layout", _FIRST_CACHE_LAYOUT))
        # the weights' precision: --weights, or the program's dtype (a --dtype bfloat16 program holds bf16 weights)
        weights = step.meta.get("weights", "float32")
        self.engine = "inference"
        self.weights = str(weights if weights != "float32" else step.meta.get("dtype", "float32"))
        self.description = f"paddle.inference ({self._describe(prefill)}"
        if prefill is not step:
            self.description += f" prefill, {self._describe(step)} steps"
        if self.matmul_threads:
            runs = "batched steps" if prefill is not step else "prompts and batched steps"
            self.description += f", matmuls of {runs} on {self.matmul_threads} threads"
        self.description += ")"

    @staticmethod
    def _describe(predictor) -> str:
        if predictor.device == "gpu":
            return "gpu"
        threads = f"{predictor.threads} thread{'s' * (predictor.threads > 1)}"
        return f"cpu {threads}, oneDNN {'on' if predictor.onednn else 'off'}"

    def __call__(self, inputs: list, owner: Batch) -> tuple:
        """`(logits, cache)`, run on a free lane; `owner` is the batch that will hold `cache` (as its list)."""
        rows, new = inputs[0].shape
        lanes = self.prefill_lanes if new > 1 else self.step_lanes
        lane = next((lane for lane in lanes if not lane.busy()), None)
        if lane is None:  # more live batches than lanes: free one that is not holding this run's own inputs
            lane = next((lane for lane in lanes if lane.owner() is not owner), lanes[0])
            lane.release()
        threads = self.matmul_threads if lanes is self.step_lanes and rows * new > 1 else None
        logits, *cache = lane.predictor.run(inputs, threads)
        lane.owner, lane.cache = weakref.ref(owner), cache
        return logits, cache


class _OnnxStep:
    """The exported decode program (`--format onnx`: float32, int8 or int4 weights) on onnxruntime. Takes and
    returns numpy arrays (`host_cache`): the KV cache stays in host arrays between steps, never converted to paddle
    tensors (a conversion each way copies the whole cache). onnxruntime returns each step's outputs in arrays of
    their own, so a batch never shares its cache with another."""

    host_cache = True

    def __init__(self, folder: Path, threads: int | None):
        from .onnx_predictor import OnnxPredictor

        self.predictor = OnnxPredictor(folder, threads=threads)
        meta = self.predictor.meta
        if meta.get("task") != "decode":
            raise ExportError(f"{folder}: an export of task {meta.get('task')!r}; generation runs a decode export")
        self.config = meta["config"]
        self.cache_layout = tuple(meta["decode"].get("cache_layout", _FIRST_CACHE_LAYOUT))
        self.engine, self.weights = "onnxruntime", self.predictor.weights
        self.description = self.predictor.describe()

    def __call__(self, inputs: list, owner: Batch) -> tuple:
        """`(logits, cache)` as numpy arrays (`owner`: the step contract's batch, unused here)."""
        logits, *cache = self.predictor.run(inputs)
        return logits, cache


def _route(path: Path, engine: str | None, weights: str | None) -> tuple[str, dict | None]:
    """The engine that runs `weights` of `path` (`engine` None: chosen), and `path`'s export metadata (None for a
    checkpoint); EngineError for an unknown or mismatched engine / weights, naming both."""
    from ..export import WEIGHTS, read_meta

    if engine is not None and engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if weights is not None and weights not in WEIGHTS:
        raise EngineError(f"unknown weights {weights!r}; expected one of {', '.join(WEIGHTS)}")
    meta = read_meta(path) if (path / "export_meta.json").is_file() else None
    if meta is not None:
        own = str(meta.get("weights", "float32"))
        if weights is not None and weights != own:
            raise EngineError(
                f"{path}: an export with {own} weights, not {weights} (paddle-qwen2 export --weights {weights})"
            )
        weights = own
    if engine is None:
        onnx = weights in QUANTIZED or (meta is not None and meta.get("format") == "onnx")
        engine = "onnxruntime" if onnx else "inference"
    runs = {"inference": ("float32", "bfloat16"), "onnxruntime": ("float32", *QUANTIZED), "dygraph": ("float32",)}
    if (weights or "float32") not in runs[engine]:
        others = [e for e in ENGINES if weights in runs[e]]
        raise EngineError(
            f"engine {engine!r} does not run {weights} weights (it runs {', '.join(runs[engine])}); {weights} "
            f"weights run on engine {' or '.join(repr(e) for e in others)}"
        )
    if meta is not None:
        format = meta.get("format", "paddle")
        wanted = {"inference": "paddle", "onnxruntime": "onnx"}.get(engine)
        if wanted is None:
            raise EngineError(
                f"{path}: an export folder runs only with engine 'inference' or 'onnxruntime' (dygraph runs "
                "checkpoints)"
            )
        if format != wanted:
            needs = {"paddle": "'inference'", "onnx": "'onnxruntime'"}[format]
            raise EngineError(f"{path}: a --format {format} export runs on engine {needs}, not {engine!r}")
    return engine, meta


class LLM:
    """A causal LM for generation: a tokenizer, a one-step program (`step`) and the cache shape it takes."""

    def __init__(
        self,
        step,
        tokenizer: ChatTokenizer,
        folder: Path,
        generation_config: dict,
        cache_dtype: str = "float32",
        name: str | None = None,
        max_model_len: int | None = None,
    ):
        config = step.config
        self.step = step
        self.tokenizer = tokenizer
        self.folder = folder
        self.generation_config = generation_config
        self.name = name or folder.name
        self.config = config
        self.vocab_size = int(config["vocab_size"])
        limit = _context_limit(config)
        if max_model_len is not None and not 0 < max_model_len <= limit:
            raise EngineError(f"max_model_len must be in [1, {limit}] (the model's context), got {max_model_len}")
        self.max_model_len = max_model_len or limit
        heads = int(config["num_attention_heads"])
        self._cache_sizes = {
            "kv_heads": int(config.get("num_key_value_heads") or heads),
            "head_dim": int(config.get("head_dim") or config["hidden_size"] // heads),
        }
        self._cache_layout = tuple(step.cache_layout)
        self._layers = int(config["num_hidden_layers"])
        self._cache_dtype = cache_dtype
        self._host_cache = bool(getattr(step, "host_cache", False))  # numpy arrays in, numpy arrays out
        # a prefill from a cached prefix leaves padding columns between the prefix and the rest of a row, and a
        # sliding window counts columns: models with one prefill without the cache
        self.prefix_caching = not _sliding_window(config)

    # ------------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        engine: str | None = None,
        weights: str | None = None,
        onednn: bool | None = None,
        threads: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        max_model_len: int | None = None,
        name: str | None = None,
    ) -> LLM:
        """`path`: a Qwen2 checkpoint (HF or Paddle layout) or a `decode` export folder. `weights`: the precision of
        the weights the engine reads (`export.WEIGHTS`; None: an export folder's own, float32 for a checkpoint).
        `engine`: "inference" runs the export on Paddle Inference (a checkpoint is exported once into the export
        cache, see `predictor.resolve_export`; float32 and bfloat16 weights), "onnxruntime" a `--format onnx`
        export on onnxruntime (float32, int8, int4; `threads`: its intra-op threads), "dygraph" the paddle model
        (checkpoints, float32); None picks onnxruntime for int8 / int4 weights or an ONNX export folder, else
        "inference". A mismatch (engine "inference" with int8, "dygraph" with bfloat16, ...) is an EngineError
        naming both. `LLM.engine` / `LLM.weights` say what runs."""
        from ..runtime import configure_cpu_threads

        configure_cpu_threads()
        path = Path(path)
        if not path.is_dir():
            raise EngineError(f"{path}: no such model folder")
        try:
            engine, _ = _route(path, engine, weights)
            if engine == "inference":
                from .predictor import resolve_export

                folder = resolve_export(path, "decode", cache_dir, weights=weights)
                step, dtype = _PredictorStep(folder, onednn, threads), None
                dtype = step.predictor.meta["decode"]["cache_dtype"]
            elif engine == "onnxruntime":
                from .predictor import resolve_export

                folder = resolve_export(path, "decode", cache_dir, weights=weights, format="onnx")
                step = _OnnxStep(folder, threads)
                dtype = step.predictor.meta["decode"]["cache_dtype"]
            else:
                folder, dtype = path, "float32"
                _check_checkpoint(path)
                step = _DygraphStep(path, dtype)
            tokenizer = ChatTokenizer.from_folder(folder)
        except (ExportError, TokenizerError) as exc:
            raise EngineError(str(exc)) from None
        generation = folder / "generation_config.json"
        generation_config = json.loads(generation.read_text(encoding="utf-8")) if generation.is_file() else {}
        return cls(step, tokenizer, folder, generation_config, dtype, name or path.name, max_model_len)

    def describe(self) -> str:
        return f"{self.name}: {self.step.description}, context {self.max_model_len}"

    @property
    def engine(self) -> str:
        """The engine running the step program: "inference" (Paddle Inference), "onnxruntime" or "dygraph"."""
        return self.step.engine

    @property
    def weights(self) -> str:
        """The precision of the weights the step program reads (`export.WEIGHTS`: the export's `weights`)."""
        return self.step.weights

    # ----------------------------------------------------------------------------------------------- stepping
    def _run(self, ids: np.ndarray, batch: Batch) -> np.ndarray:
        """One program run on `batch` (its mask already covers `ids`); its cache is replaced by the grown one."""
        if self._host_cache:
            logits, batch.cache = self.step([ids, batch.mask, *batch.cache], batch)
            return logits
        import paddle

        logits, batch.cache = self.step([paddle.to_tensor(ids), paddle.to_tensor(batch.mask), *batch.cache], batch)
        return logits.numpy()

    def empty_cache(self, rows: int) -> list:
        """The cache of `rows` rows before their prefill: `past` = 0, in the step program's layout."""
        sizes = {**self._cache_sizes, "batch": rows, "past": 0}
        shape = [sizes[axis] for axis in self._cache_layout]
        if self._host_cache:
            return [np.zeros(shape, self._cache_dtype) for _ in range(2 * self._layers)]
        import paddle

        return [paddle.zeros(shape, self._cache_dtype) for _ in range(2 * self._layers)]

    def prefill(
        self, prompts: Sequence[Sequence[int]], prefix_cache: PrefixCache | None = None
    ) -> tuple[np.ndarray, Batch]:
        """Run the prompts (left-padded together): the logits `[n, vocab]` float32 of each last prompt token, and
        the `Batch` holding their cache.

        With a `prefix_cache`, each prompt's longest cached prefix (whole blocks, never the last token) is taken
        from it and only the rest of the prompt is run: the cached prefixes are left-padded to the longest one and
        the rest of each prompt, left-padded too, follows (a row's mask is `0.. 1 (cached) 0.. 1 (computed)`;
        position ids count its real tokens, so the logits are those of the whole prompt). Afterwards the full
        blocks of every prompt are inserted into the cache. (Not for models with sliding-window attention
        (`prefix_caching` False): they ignore `prefix_cache`.)"""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise EngineError("prefill needs at least one prompt, each with at least one token")
        self._check_ids(prompts)
        prefix_cache = prefix_cache if self.prefix_caching else None
        hits = [prefix_cache.lookup(p) for p in prompts] if prefix_cache is not None else []
        cached = [n for n, _ in hits]
        if not any(cached):
            ids, mask = _left_pad(prompts, self.tokenizer.pad_token_id)
            batch = Batch(self.empty_cache(len(prompts)), mask, self._cache_layout.index("past"))
        else:
            ids, batch = self._cached_inputs(prompts, hits, prefix_cache)
        logits = self._run(ids, batch)
        if prefix_cache is not None:
            for row, prompt in enumerate(prompts):
                prefix_cache.insert(prompt, batch, row)
        return logits, batch

    def _cached_inputs(self, prompts, hits: list[tuple[int, list]], prefix_cache: PrefixCache) -> tuple:
        """The ids `[rows, new]` of the uncached rests and the `Batch` of the cached prefixes (mask `[rows, past +
        new]`, already covering the new ids)."""
        past = max(n for n, _ in hits)
        ids, new_mask = _left_pad([p[n:] for p, (n, _) in zip(prompts, hits)], self.tokenizer.pad_token_id)
        past_mask = np.zeros((len(prompts), past), dtype=np.int64)
        for row, (n, _) in enumerate(hits):
            past_mask[row, past - n :] = 1
        cache = prefix_cache.assemble([blocks for _, blocks in hits], past)
        mask = np.concatenate([past_mask, new_mask], axis=1)
        return ids, Batch(cache, mask, self._cache_layout.index("past"))

    def make_prefix_cache(self, capacity_bytes: int, block_size: int = DEFAULT_BLOCK_SIZE) -> PrefixCache:
        """An empty `PrefixCache` for this model's cache layout, holding at most `capacity_bytes` of blocks."""
        return PrefixCache(capacity_bytes, block_size, self._cache_layout.index("past"))

    def decode(self, batch: Batch, tokens: Sequence[int]) -> np.ndarray:
        """Append one token per row of `batch` (in row order); returns the next logits `[rows, vocab]`."""
        if len(tokens) != len(batch):
            raise EngineError(f"decode got {len(tokens)} tokens for a batch of {len(batch)} rows")
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1, 1)
        previous = batch.mask
        batch.mask = np.concatenate([previous, np.ones((len(batch), 1), dtype=np.int64)], axis=1)
        try:
            return self._run(ids, batch)
        except BaseException:
            batch.mask = previous
            raise

    def _check_ids(self, prompts: Sequence[Sequence[int]]) -> None:
        for i, p in enumerate(prompts):
            bad = [t for t in p if not 0 <= int(t) < self.vocab_size]
            if bad:
                raise EngineError(f"prompt {i}: token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")

    # --------------------------------------------------------------------------------------------- generation
    def sampling_params(self, **overrides) -> SamplingParams:
        """`generation_config.json`'s defaults (greedy unless it says `do_sample`), `overrides` on top."""
        return SamplingParams.from_generation_config(self.generation_config, **overrides)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        on_text: Callable[[int, str], None] | None = None,
        prefix_cache: PrefixCache | None = None,
        on_token: Callable[[int, int], None] | None = None,
    ) -> list[Completion]:
        """Generate for each prompt (token ids) together in one batch; `on_text(row, delta)` streams the text, and
        `on_token(row, token_id)` is called as each token is chosen (before its text; every token, a stop token
        included: the hook for per-token timing). Rows that finish leave the batch at once. With a `prefix_cache`,
        the prefill starts from the prompts' cached prefixes and each finished row's whole sequence goes into the
        cache."""
        if not isinstance(params, Sequence):
            params = [params or self.sampling_params()] * len(prompts)
        try:
            sequences = [
                GenerationSequence(p, sp, self.tokenizer, self.max_model_len) for p, sp in zip(prompts, params)
            ]
        except ValueError as exc:
            raise EngineError(str(exc)) from None
        scores = {
            i: prompt_logprobs(self, s.prompt_ids, s.params.prompt_logprobs)
            for i, s in enumerate(sequences)
            if s.params.prompt_logprobs is not None
        }
        prefix_cache = prefix_cache if self.prefix_caching else None
        logits, batch = self.prefill([s.prompt_ids for s in sequences], prefix_cache)
        running = list(range(len(sequences)))
        while running:
            tokens = []
            for row, index in enumerate(running):
                seq = sequences[index]
                token = seq.choose(logits[row])
                tokens.append(token)
                if on_token is not None:
                    on_token(index, token)
                delta = seq.append(token)
                if delta and on_text is not None:
                    on_text(index, delta)
            keep = [row for row, index in enumerate(running) if not sequences[index].finished]
            if prefix_cache is not None:
                for row, index in enumerate(running):
                    if sequences[index].finished:
                        prefix_cache.insert(sequences[index].prompt_ids + sequences[index].token_ids, batch, row)
            if len(keep) < len(running):
                running = [running[row] for row in keep]
                if not running:
                    break
                batch = batch.select(keep)
                tokens = [tokens[row] for row in keep]
            logits = self.decode(batch, tokens)
        completions = [s.completion() for s in sequences]
        for i, entries in scores.items():
            completions[i].prompt_logprobs = entries
        return completions


def _context_limit(config: dict) -> int:
    """max_position_embeddings, times the rope scaling factor when there is one (as vLLM derives it)."""
    limit = int(config.get("max_position_embeddings") or 32768)
    scaling = config.get("rope_scaling") or {}
    factor = (
        scaling.get("factor") if scaling.get("rope_type", scaling.get("type")) in ("linear", "dynamic", "yarn") else 1
    )
    if scaling.get("original_max_position_embeddings") and factor:
        return int(scaling["original_max_position_embeddings"] * factor)
    return int(limit * (factor or 1))


def _sliding_window(config: dict) -> bool:
    """Whether any layer attends within a sliding window (transformers' `layer_types`, or `use_sliding_window`)."""
    if config.get("layer_types"):
        return "sliding_attention" in config["layer_types"]
    if not (config.get("use_sliding_window") and config.get("sliding_window")):
        return False
    return int(config.get("max_window_layers", 28)) < int(config["num_hidden_layers"])


def _check_checkpoint(path: Path) -> None:
    config = path / "config.json"
    if not config.is_file():
        raise EngineError(f"{path}: not a Qwen2 model (no config.json)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise EngineError(f"{config}: cannot read the model config: {exc}") from None
    if model_type != "qwen2":
        raise EngineError(f"{config}: not a Qwen2 model (model_type {model_type!r}, expected 'qwen2')")
