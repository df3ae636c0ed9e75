"""Automatic prefix caching (as vLLM's): the KV cache of prompts the engine computed recently, kept in blocks of
`block_size` tokens keyed by their content, so that a prompt starting with the same tokens (a shared system prompt,
the earlier turns of a chat) is prefilled from its first uncached token.

    cache = PrefixCache(capacity_bytes=512 << 20, block_size=16)
    logits, batch = llm.prefill(prompts, prefix_cache=cache)   # looks the prompts up, inserts their full blocks
    cache.insert(prompt + generated, batch, row)               # a finished row: the next turn of its chat hits
    cache.stats                                                # queries, hits, hit tokens, bytes, evictions

A block's key is a hash chain: SHA-256 of the parent block's key and the block's token ids, so a block matches
only when every token before it matches too. A block holds the keys and values of its tokens for every layer as
one tensor `[2 * layers, *row cache shape with block_size on the past axis]` (for the decode program's layout
`[2 * layers, kv_heads, block_size, head_dim]`), a copy of its own (never a view of a predictor's output buffers),
of the batches' kind: a paddle tensor, or a numpy array for the onnxruntime engine's host cache.
Only full blocks are stored. Blocks are evicted least recently used first once their bytes exceed
`capacity_bytes`; a chain's later blocks count as less recently used than its earlier ones, so a chain is evicted
from its end and a cached prefix stays reachable (an insertion that does not fit keeps its first blocks). `lookup`
returns at most `len(prompt) - 1` tokens: the last prompt token is always computed (its logits choose the first new
token).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import EngineError

__all__ = ["PrefixCache", "PrefixCacheStats", "DEFAULT_BLOCK_SIZE"]

DEFAULT_BLOCK_SIZE = 16


@dataclass
class PrefixCacheStats:
    """Counters since the cache was made: `queries` (lookups), `hits` (lookups that found at least one block),
    `hit_tokens` (prompt tokens served from the cache instead of prefilled), `evictions` (blocks dropped for room),
    and the current `blocks` and `bytes` held."""

    queries: int = 0
    hits: int = 0
    hit_tokens: int = 0
    evictions: int = 0
    blocks: int = 0
    bytes: int = 0


class PrefixCache:
    """Blocks of KV cache keyed by a hash chain of their tokens, least recently used evicted within
    `capacity_bytes`. `past_axis`: the axis of a batch cache tensor `[rows, ...]` that counts tokens (2 for the
    decode program's `[rows, kv_heads, past, head_dim]`). Not thread-safe (the engine thread owns it)."""

    def __init__(self, capacity_bytes: int, block_size: int = DEFAULT_BLOCK_SIZE, past_axis: int = 2) -> None:
        if capacity_bytes < 0 or block_size < 1:
            raise EngineError(
                f"PrefixCache: capacity_bytes must be >= 0 and block_size >= 1, got {capacity_bytes}, {block_size}"
            )
        self.capacity_bytes = int(capacity_bytes)
        self.block_size = int(block_size)
        self.past_axis = int(past_axis)
        self._blocks: OrderedDict[bytes, tuple] = OrderedDict()  # key -> (tensor, nbytes); oldest first
        self.stats = PrefixCacheStats()

    def __len__(self) -> int:
        return len(self._blocks)

    # ----------------------------------------------------------------------------------------------- keys
    def _keys(self, token_ids: Sequence[int], blocks: int) -> list[bytes]:
        """The chain keys of the first `blocks` full blocks of `token_ids`."""
        ids = np.asarray(token_ids[: blocks * self.block_size], dtype=np.int64)
        keys, parent = [], b""
        for i in range(blocks):
            parent = hashlib.sha256(parent + ids[i * self.block_size : (i + 1) * self.block_size].tobytes()).digest()
            keys.append(parent)
        return keys

    def _touch(self, keys: list[bytes]) -> None:
        """Mark these chain blocks used now, the first block as the most recent."""
        for key in reversed(keys):
            if key in self._blocks:
                self._blocks.move_to_end(key)

    # ---------------------------------------------------------------------------------------------- lookup
    def lookup(self, prompt_ids: Sequence[int]) -> tuple[int, list]:
        """`(n, blocks)`: the longest cached prefix of `prompt_ids` in whole blocks, at most `len(prompt_ids) - 1`
        tokens, as `n` tokens and the list of its block tensors (`[2 * layers, ..., block_size, ...]` each, in
        order); `(0, [])` on a miss."""
        self.stats.queries += 1
        limit = max(0, len(prompt_ids) - 1) // self.block_size
        found = []
        for key in self._keys(prompt_ids, limit):
            entry = self._blocks.get(key)
            if entry is None:
                break
            found.append(key)
        if not found:
            return 0, []
        self._touch(found)
        n = len(found) * self.block_size
        self.stats.hits += 1
        self.stats.hit_tokens += n
        return n, [self._blocks[key][0] for key in found]

    def assemble(self, hits: Sequence[list], width: int) -> list:
        """The past cache of rows whose cached blocks are `hits` (one list per row, maybe empty), left-padded with
        zeros to `width` tokens: a list `[key_0, value_0, ...]` of `[rows, ..., width, ...]` tensors, each a dense
        tensor of its own."""
        template = next(blocks[0] for blocks in hits if blocks)
        host = isinstance(template, np.ndarray)
        if host:
            zeros, concat = np.zeros, np.concatenate
        else:
            import paddle

            zeros, concat = paddle.zeros, paddle.concat
        axis = self.past_axis  # a block's past axis: its leading axis is the layer, not the row
        rows = []
        for blocks in hits:
            missing = width - len(blocks) * self.block_size
            parts = list(blocks)
            if missing:
                shape = list(template.shape)
                shape[axis] = missing
                parts.insert(0, zeros(shape, template.dtype))
            rows.append(parts[0] if len(parts) == 1 else concat(parts, axis=axis))
        if host:
            stacked = np.stack(rows, axis=1)  # [2 * layers, rows, ...], a new array
            return [np.ascontiguousarray(t) for t in stacked]
        stacked = paddle.stack(rows, axis=1)  # [2 * layers, rows, ...]
        # split (unlike unbind) copies: each layer's tensor owns its memory, as a predictor input must
        return [t.squeeze(0) for t in paddle.split(stacked, stacked.shape[0], axis=0)]

    # ---------------------------------------------------------------------------------------------- insert
    def insert(self, token_ids: Sequence[int], batch, row: int) -> int:
        """Store the full blocks of `token_ids`, whose keys and values are row `row` of `batch` (an engine `Batch`:
        `cache` tensors `[rows, ...]`, `mask` `[rows, width]`; the row's real columns hold `token_ids` in order,
        possibly followed by more). Blocks already held are only marked used. Returns the blocks added."""
        columns = np.flatnonzero(batch.mask[row])
        n_blocks = min(len(token_ids), len(columns)) // self.block_size
        if n_blocks == 0 or self.capacity_bytes == 0:
            return 0
        keys = self._keys(token_ids, n_blocks)
        missing = [i for i, key in enumerate(keys) if key not in self._blocks]
        added = 0
        if missing:
            chain = set(keys)
            for i, tensor in zip(missing, self._copy_blocks(batch, row, columns, missing)):
                if not self._store(keys[i], tensor, chain):
                    break
                added += 1
        self._touch(keys)
        return added

    def _copy_blocks(self, batch, row: int, columns: np.ndarray, blocks: list[int]) -> list:
        """Copies of the given blocks of `row`: `[2 * layers, ..., block_size, ...]` each."""
        size = self.block_size
        picked = np.concatenate([columns[i * size : (i + 1) * size] for i in blocks]).astype(np.int64)
        axis = batch.past_axis - 1  # of one row's tensor
        if isinstance(batch.cache[0], np.ndarray):
            stacked = np.stack([np.take(t[row], picked, axis=axis) for t in batch.cache], axis=0)
            return [np.ascontiguousarray(part) for part in np.split(stacked, len(blocks), axis=axis + 1)]
        import paddle

        index = paddle.to_tensor(picked)
        layers = [paddle.gather(t[row], index, axis=axis) for t in batch.cache]
        stacked = paddle.stack(layers, axis=0)  # a fresh tensor, nothing shared with the batch
        return paddle.split(stacked, len(blocks), axis=axis + 1)

    def _store(self, key: bytes, tensor, chain: set[bytes]) -> bool:
        """Hold `tensor` under `key`, evicting least recently used blocks that are not of `chain` (the sequence
        being inserted: its earlier blocks are what makes this one reachable); False when there is no room."""
        nbytes = tensor.nbytes if isinstance(tensor, np.ndarray) else int(tensor.numel()) * tensor.element_size()
        while self.stats.bytes + nbytes > self.capacity_bytes:
            victim = next((k for k in self._blocks if k not in chain), None)
            if victim is None:
                return False
            self._evict(victim)
        self._blocks[key] = (tensor, nbytes)
        self.stats.bytes += nbytes
        self.stats.blocks = len(self._blocks)
        return True

    def _evict(self, key: bytes) -> None:
        _, nbytes = self._blocks.pop(key)
        self.stats.bytes -= nbytes
        self.stats.evictions += 1
        self.stats.blocks = len(self._blocks)

    def clear(self) -> None:
        """Drop every block (the counters stay)."""
        self._blocks.clear()
        self.stats.bytes = self.stats.blocks = 0
