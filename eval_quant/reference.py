"""The reference's logits, computed once per (model, text, n_ctx, chunks) and cached on disk.

llama-perplexity keeps the whole distribution of every scored token (`--kl-divergence-base`: the
vocabulary's log-probabilities in 16 bits, 64 KiB per token for a 32k vocabulary, 11 GiB for a 7B
model on wikitext-2). We keep less and lose nothing that matters: a Llama/Mistral model's logits
are its output matrix W (vocab x d) times its final hidden state, so every logit vector lies in
the (d+1)-dimensional span of W's columns and a constant (log-softmax ignores the constant). The
cache stores, per scored token, the d+1 coordinates of the reference's logits in that span
(float32, from a least-squares fit) and, once, W itself; the logits are rebuilt exactly but for
rounding, for any entropy of the distribution (a top-k summary is not: on a flat distribution it
drops a large share of the mass and understates the KLD). The fit's worst logit error ε is
measured for every token when the cache is built and stored with it; `eval_quant.compare` turns
it into a bound on the KLD's error, reported next to the KLD.

Per token: 4·(d+1) bytes, 16 KiB for a 7B Mistral (a quarter of llama.cpp's), 1 KiB for the tests'
tiny model (an eighth); plus W once.

On disk: `<key>.safetensors` (the arrays) and `<key>.json` (what they were computed from, and the
sha256 of the .safetensors file), the JSON written last. The key hashes everything the numbers
depend on, so a changed model, text, context or chunk count never reuses a stale cache; a file
whose hash does not match its JSON is treated as corrupt and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from eval_quant.errors import EvalError

CACHE_VERSION = 2


def scored_range(n_ctx: int) -> tuple[int, int]:
    """Positions whose logits are scored in a window: the second half, as llama-perplexity does.

    Logits at position j predict token j+1, so positions n_ctx/2 … n_ctx-2 score the tokens
    n_ctx/2+1 … n_ctx-1: n_ctx - 1 - n_ctx/2 tokens per window (255 for 512).
    """
    return n_ctx // 2, n_ctx - 1


def cache_key(model_sha256: str, text_sha256: str, n_ctx: int, chunks: int) -> str:
    fields = f"v{CACHE_VERSION}|{model_sha256}|{text_sha256}|{n_ctx}|{chunks}"
    return hashlib.sha256(fields.encode()).hexdigest()[:32]


@dataclass
class ReferenceCache:
    tokens: np.ndarray  # (chunks·n_ctx,) int32: the evaluated text tokens, before BOS replacement
    coordinates: np.ndarray  # (chunks, n_scored, d+1) float32: logits = [W, 1] @ coordinates
    error: np.ndarray  # (chunks, n_scored) float32: max |rebuilt logit - reference logit|
    output: np.ndarray  # (vocab, d) the reference's output matrix W, float16 or float32
    meta: dict[str, Any]  # n_ctx, vocab_size, bos_id, hashes, byte counts, ...

    @property
    def n_ctx(self) -> int:
        return int(self.meta["n_ctx"])

    @property
    def chunks(self) -> int:
        return len(self.coordinates)

    def window(self, chunk: int) -> np.ndarray:
        """The tokens the models see for one chunk: BOS overwrites the first, like llama.cpp."""
        window = self.tokens[chunk * self.n_ctx : (chunk + 1) * self.n_ctx].copy()
        if self.meta["bos_id"] is not None:
            window[0] = self.meta["bos_id"]
        return window

    def targets(self, chunk: int) -> np.ndarray:
        first, last = scored_range(self.n_ctx)
        start = chunk * self.n_ctx
        return self.tokens[start + first + 1 : start + last + 1].astype(np.int64)

    @cached_property
    def basis(self) -> np.ndarray:
        """[W, 1] in float64: the span every reference logit vector lies in."""
        return _basis(self.output)

    def logits(self, chunk: int) -> np.ndarray:
        """The reference's logits for the scored positions of one chunk, rebuilt (float64)."""
        return self.coordinates[chunk].astype(np.float64) @ self.basis.T


def _basis(output: np.ndarray) -> np.ndarray:
    ones = np.ones((output.shape[0], 1))
    return np.concatenate([output.astype(np.float64), ones], axis=1)


def build_reference(
    logits_of: Callable[[np.ndarray], np.ndarray],
    tokens: np.ndarray,
    output: np.ndarray,
    n_ctx: int,
    chunks: int,
    meta: dict[str, Any],
    on_chunk: Callable[[int, int], None] | None = None,
) -> ReferenceCache:
    """Run the reference over `chunks` windows of `tokens` and keep its logits' coordinates."""
    first, last = scored_range(n_ctx)
    vocab, hidden = output.shape
    # Store W as float16 when that loses nothing (bf16 and f16 checkpoints), else as float32.
    half = output.astype(np.float16)
    lossless = np.array_equal(half.astype(np.float32), output.astype(np.float32))
    cache = ReferenceCache(
        tokens=np.asarray(tokens[: chunks * n_ctx], dtype=np.int32),
        coordinates=np.zeros((chunks, last - first, hidden + 1), np.float32),
        error=np.zeros((chunks, last - first), np.float32),
        output=half if lossless else output.astype(np.float32),
        meta={**meta, "n_ctx": n_ctx, "cache_version": CACHE_VERSION},
    )
    # Least squares through a QR factorisation of [W, 1], once: coordinates = R⁻¹ Qᵀ logits.
    q, r = np.linalg.qr(cache.basis)
    nll_sum = 0.0
    for c in range(chunks):
        logits = logits_of(cache.window(c))
        if logits.shape[-1] != vocab:
            raise EvalError(
                f"the reference returned {logits.shape[-1]} logits per token, but its output "
                f"matrix has {vocab} rows"
            )
        scored = logits[first:last].astype(np.float64)
        coordinates = np.linalg.solve(r, q.T @ scored.T).T.astype(np.float32)
        cache.coordinates[c] = coordinates
        rebuilt = coordinates.astype(np.float64) @ cache.basis.T
        # Only differences between logits matter, so the error is measured after the best
        # constant shift (the fit's own constant column absorbs it).
        cache.error[c] = np.abs(rebuilt - scored).max(axis=-1)
        logp = scored - scored.max(axis=-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(axis=-1, keepdims=True))
        nll_sum -= float(logp[np.arange(last - first), cache.targets(c)].sum())
        if on_chunk:
            on_chunk(c + 1, chunks)
    cache.meta["nll_sum"] = nll_sum  # the reference's own NLL over every scored token
    cache.meta["logit_error_max"] = float(cache.error.max())
    cache.meta["logit_error_mean"] = float(cache.error.astype(np.float64).mean())
    return cache


def _paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"{key}.safetensors", cache_dir / f"{key}.json"


def save_cache(cache: ReferenceCache, cache_dir: Path, key: str) -> Path:
    """Write the arrays, then the JSON that vouches for them (a crash leaves no valid pair)."""
    from safetensors.numpy import save_file

    cache_dir.mkdir(parents=True, exist_ok=True)
    data, info = _paths(cache_dir, key)
    partial = data.with_suffix(".partial")
    arrays = {
        "tokens": cache.tokens,
        "coordinates": cache.coordinates,
        "error": cache.error,
        "output": cache.output,
    }
    save_file(arrays, str(partial))
    os.replace(partial, data)
    meta = {**cache.meta, "key": key, "sha256": _file_sha256(data)}
    partial_info = info.with_suffix(".partial")
    partial_info.write_text(json.dumps(meta, indent=1) + "\n", "utf-8")
    os.replace(partial_info, info)
    return data


def load_cache(cache_dir: Path, key: str) -> tuple[ReferenceCache | None, str]:
    """The cache for `key`, or None with the reason it cannot be used (absent, corrupt)."""
    from safetensors.numpy import load_file

    data, info = _paths(cache_dir, key)
    if not info.is_file() or not data.is_file():
        return None, "no cache yet"
    try:
        meta = json.loads(info.read_text("utf-8"))
    except (OSError, ValueError):
        return None, f"{info} is unreadable"
    if meta.get("key") != key or meta.get("cache_version") != CACHE_VERSION:
        return None, f"{info} belongs to another cache"
    if _file_sha256(data) != meta.get("sha256"):
        return None, f"{data} does not match its recorded sha256 (corrupt or truncated)"
    arrays = load_file(str(data))
    cache = ReferenceCache(
        tokens=arrays["tokens"],
        coordinates=arrays["coordinates"],
        error=arrays["error"],
        output=arrays["output"],
        meta=meta,
    )
    return cache, "reused"


def cache_size(cache_dir: Path, key: str) -> int:
    return sum(path.stat().st_size for path in _paths(cache_dir, key) if path.exists())


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
