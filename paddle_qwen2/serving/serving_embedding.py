"""The embeddings route: `POST /v1/embeddings`.

    response = await embeddings(state, http_request)

`input` is texts or token ids (`EmbeddingRequest`); ids outside the model's vocabulary are a 400 naming the item
and the token. The inputs go to the scheduler as one `EmbeddingJob` (batched with other pending jobs), where
texts are embedded as sentence-transformers' `encode` does (the folder's default prompt, the tokenizer's special
tokens) and token ids as given (`EmbeddingEncoder.encode_tokens`). The vectors come back truncated to
`dimensions` if asked (re-normalised when the model's embeddings are unit vectors), as float lists or base64
little-endian float32.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from .protocol import APIError, EmbeddingRequest, parse_request, usage
from .scheduler import EmbeddingJob
from .state import ServerState

__all__ = ["embeddings"]


async def embeddings(state: ServerState, http: Request) -> Response:
    """`POST /v1/embeddings`: a vector per input, in input order."""
    body = parse_request(await http.body(), EmbeddingRequest)
    state.check_model(body.model, "embedding")
    dim = state.embedder.dimension
    if body.dimensions is not None and body.dimensions > dim:
        message = f"dimensions: at most {dim} (the model's embedding size), got {body.dimensions}"
        raise APIError(400, message, param="dimensions", code="invalid_value")
    _check_vocabulary(body.input, getattr(state.embedder, "vocab_size", None))
    loop = asyncio.get_running_loop()
    result: asyncio.Future = loop.create_future()

    def done(vectors, counts, error=None) -> None:
        def settle() -> None:
            if not result.done():
                result.set_exception(error) if error is not None else result.set_result((vectors, counts))

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle)

    job = EmbeddingJob(body.input, done)
    state.submit_embedding(job)
    try:
        vectors, counts = await result
    except asyncio.CancelledError:
        job.cancelled = True
        raise
    except Exception as exc:
        raise APIError(500, f"embedding failed: {type(exc).__name__}: {exc}", type="server_error") from None
    vectors = _truncate(vectors, body.dimensions, state.embedder.normalizes())
    data = [
        {"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    out = {"object": "list", "data": data, "model": state.embedder_name, "usage": usage(sum(counts), embedding=True)}
    return JSONResponse(out)


def _check_vocabulary(inputs: list, vocab_size: int | None) -> None:
    """400 naming the first token id of `inputs` (texts or id lists) that is not below `vocab_size`."""
    if vocab_size is None:
        return
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            continue
        bad = next((j for j, token in enumerate(item) if token >= vocab_size), None)
        if bad is not None:
            message = f"input: item {i}, token {bad} is {item[bad]}: out of the vocabulary (ids are < {vocab_size})"
            raise APIError(400, message, param="input", code="invalid_value")


def _truncate(vectors: np.ndarray, dimensions: int | None, normalizes: bool) -> np.ndarray:
    """`[n, dim]` -> `[n, dimensions]`, L2-normalised again when the model's embeddings are unit vectors (as
    `EmbeddingModel.encode(truncate_dim=...)`)."""
    if dimensions is None:
        return vectors
    out = vectors[:, :dimensions]
    if normalizes:
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)


def _encode_vector(vector: np.ndarray, encoding: str) -> Any:
    """One `[dim]` vector as a float list, or as base64 of its little-endian float32 bytes."""
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()
