"""The comparison suite: every candidate against one reference, on the same tokens.

The reference runs once per (model, text, n_ctx, chunks, k); its log-probabilities go to the cache
(`eval_quant.reference`), and the model is released before any candidate loads, so memory holds one
model at a time. Each candidate then runs the same windows and is compared token by token
(`eval_quant.compare`), its statistics accumulated as llama-perplexity accumulates them
(`eval_quant.statistics`).
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eval_quant.compare import compare
from eval_quant.errors import EvalError
from eval_quant.models import ModelInfo, describe, open_runner, output_matrix
from eval_quant.reference import (
    ReferenceCache,
    build_reference,
    cache_key,
    cache_size,
    load_cache,
    save_cache,
    scored_range,
)
from eval_quant.schema import SCHEMA
from eval_quant.statistics import KLDStatistics, TokenStats
from quantize.registry import Progress, Runner, stage
from quantize.source import cache_dir


def default_cache_dir() -> Path:
    return cache_dir() / "reference"


@dataclass(frozen=True)
class EvalText:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def load_text(spec: str) -> EvalText:
    """A built-in corpus name (its eval split), a .txt file as-is, or .jsonl/.parquet documents.

    A .txt file is read unchanged, as `llama-perplexity -f` reads it, so the two tools see the
    same tokens; documents from the other kinds are joined with a blank line.
    """
    from calibration_data import BUILTIN, load
    from quantize.windows import DOCUMENT_SEPARATOR

    path = Path(spec)
    if path.suffix == ".txt" and path.is_file():
        from calibration_data.readers import read_utf8

        return EvalText(path.name, read_utf8(path))
    corpus = load(spec, split="eval" if spec == BUILTIN else None)
    return EvalText(corpus.name, DOCUMENT_SEPARATOR.join(corpus.texts))


@dataclass(frozen=True)
class Settings:
    n_ctx: int = 512
    chunks: int | None = None  # None: every complete window of the text
    cache_dir: Path = field(default_factory=default_cache_dir)


def reference_cache(
    reference: ModelInfo, text: EvalText, settings: Settings, progress: Progress | None = None
) -> tuple[ReferenceCache, str]:
    """The cached reference for this text and settings, built (and the model released) if needed.

    Returns the cache and how it was obtained ("reused", or why it was rebuilt).
    """
    key = cache_key(reference.sha256, text.sha256, settings.n_ctx, settings.chunks or 0)
    cache, status = load_cache(settings.cache_dir, key)
    if cache is not None:
        return cache, status
    output = output_matrix(reference)
    runner = open_runner(reference, settings.n_ctx)
    tokens = np.asarray(runner.tokenize(text.text), dtype=np.int64)
    chunks = _chunk_count(len(tokens), settings)
    first, _ = scored_range(settings.n_ctx)
    scored = tokens[: chunks * settings.n_ctx].reshape(chunks, settings.n_ctx)[:, first + 1 :]
    meta = {
        "reference": reference.to_dict(),
        "text": {"name": text.name, "sha256": text.sha256, "characters": len(text.text)},
        "text_tokens": len(tokens),
        "tokenizer_sha256": hashlib.sha256(tokens.astype("<i8").tobytes()).hexdigest(),
        "vocab_size": runner.vocab_size,
        "bos_id": runner.bos_token_id,
        "scored_bytes": int(runner.token_bytes()[scored].sum()),
    }
    cache = build_reference(
        runner.logits, tokens, output, settings.n_ctx, chunks, meta,
        on_chunk=stage(progress, f"reference {reference.name}"),
    )  # fmt: skip
    del runner
    gc.collect()
    save_cache(cache, settings.cache_dir, key)
    cache, _ = load_cache(settings.cache_dir, key)  # what later runs will read, hash included
    assert cache is not None
    return cache, status.replace("no cache yet", "built")


def _chunk_count(n_tokens: int, settings: Settings) -> int:
    available = n_tokens // settings.n_ctx
    if available == 0:
        raise EvalError(
            f"the text has {n_tokens} tokens; one window of --ctx {settings.n_ctx} needs "
            f"{settings.n_ctx} (llama-perplexity needs {2 * settings.n_ctx}); give more text "
            "or a smaller --ctx"
        )
    return min(available, settings.chunks) if settings.chunks else available


def check_compatible(runner: Runner, info: ModelInfo, cache: ReferenceCache, text: str) -> None:
    """Refuse a candidate whose vocabulary or tokenization differs: its numbers would be noise."""
    if runner.vocab_size != cache.meta["vocab_size"]:
        raise EvalError(
            f"{info.path}: vocabulary of {runner.vocab_size} tokens, the reference has "
            f"{cache.meta['vocab_size']}; a candidate must share the reference's tokenizer"
        )
    ours = np.asarray(runner.tokenize(text), dtype=np.int64)
    theirs = cache.tokens.astype(np.int64)
    n = min(len(ours), len(theirs))
    differ = np.flatnonzero(ours[:n] != theirs[:n])
    if len(differ) or len(ours) < len(theirs):
        at = int(differ[0]) if len(differ) else n
        raise EvalError(
            f"{info.path} tokenizes the text differently from the reference (first difference "
            f"at token {at}); a candidate must share the reference's tokenizer"
        )


def evaluate(
    info: ModelInfo,
    cache: ReferenceCache,
    text: EvalText,
    settings: Settings,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """One candidate against the cached reference: the `candidates[]` entry of results.json."""
    runner = open_runner(info, settings.n_ctx)
    check_compatible(runner, info, cache, text.text)
    first, last = scored_range(cache.n_ctx)
    stats = KLDStatistics()
    rows = []
    report = stage(progress, info.name)
    for c in range(cache.chunks):
        logits = runner.logits(cache.window(c).tolist())[first:last]
        batch = compare(logits, cache.targets(c), cache.logits(c), cache.error[c])
        stats.add(batch)
        rows.append(_chunk_row(c + 1, batch))
        if report:
            report(c + 1, cache.chunks)
    del runner
    gc.collect()
    summary = stats.summary()
    scored_bytes = cache.meta["scored_bytes"]
    summary["bits_per_byte"] = _bits_per_byte(stats.sum_nll, scored_bytes)
    summary["bits_per_byte_base"] = _bits_per_byte(stats.sum_nll_base, scored_bytes)
    return {
        **info.to_dict(),
        "statistics": summary,
        "kld_quantiles": stats.quantiles(),
        "chunks": rows,
    }


def results_header(cache: ReferenceCache, settings: Settings, cache_status: str) -> dict[str, Any]:
    """Everything in results.json but the candidates."""
    from quantize.artifact import command_line, library_versions, now

    meta = cache.meta
    first, last = scored_range(cache.n_ctx)
    key = meta["key"]
    n_scored = cache.chunks * (last - first)
    return {
        "schema": SCHEMA,
        "created_at": now(),
        "command": command_line(),
        "versions": {
            **library_versions("numpy", "torch", "transformers", "llama-cpp-python", "gguf"),
            "llama.cpp": _llama_cpp_version(),
        },
        "text": meta["text"],
        "n_ctx": cache.n_ctx,
        "chunks": cache.chunks,
        "tokens": {
            "text": meta["text_tokens"],
            "evaluated": cache.chunks * cache.n_ctx,
            "scored": n_scored,
            "scored_bytes": meta["scored_bytes"],
        },
        "tokenizer_sha256": meta["tokenizer_sha256"],
        "reference": meta["reference"],
        "reference_stats": {
            "ppl": math.exp(meta["nll_sum"] / n_scored),
            "bits_per_byte": _bits_per_byte(meta["nll_sum"], meta["scored_bytes"]),
        },
        "cache": {
            "path": str(settings.cache_dir / f"{key}.safetensors"),
            "key": key,
            "size_bytes": cache_size(settings.cache_dir, key),
            "bytes_per_token": cache_size(settings.cache_dir, key) / n_scored,
            "logit_error_max": meta["logit_error_max"],
            "logit_error_mean": meta["logit_error_mean"],
            "reused": cache_status == "reused",
            "status": cache_status,
        },
        "candidates": [],
    }


def run_suite(
    reference: Path,
    candidates: list[Path],
    text: EvalText,
    settings: Settings,
    progress: Progress | None = None,
    on_candidate: Callable[[dict[str, Any]], None] | None = None,
    rows_dir: Path | None = None,
) -> dict[str, Any]:
    """Evaluate every candidate against the reference; the whole of results.json.

    With `rows_dir`, each candidate's row is kept there as soon as it is measured, and a row
    already there for the same candidate (content hash) and reference cache is reused: a run that
    was killed goes on from the candidates it had not measured.
    """
    infos = [describe(path) for path in candidates]  # a missing path fails before any work
    cache, status = reference_cache(describe(reference), text, settings, progress)
    results = results_header(cache, settings, status)
    for info in infos:
        saved = rows_dir / f"{info.sha256}-{cache.meta['key']}.json" if rows_dir else None
        if saved is not None and saved.is_file():
            row = {**json.loads(saved.read_text("utf-8")), **info.to_dict()}
        else:
            row = evaluate(info, cache, text, settings, progress)
            if saved is not None:
                from quantize.artifact import write_json

                saved.parent.mkdir(parents=True, exist_ok=True)
                write_json(saved, row)
        results["candidates"].append(row)
        if on_candidate:
            on_candidate(row)
    return results


def _chunk_row(chunk: int, batch: TokenStats) -> dict[str, float]:
    return {
        "chunk": chunk,
        "ppl": math.exp(float(batch.nll.mean())),
        "ppl_base": math.exp(float(batch.nll_base.mean())),
        "kld": float(batch.kld.mean()),
        "mean_p_diff": float(batch.p_diff.mean()),
        "rms_p_diff": math.sqrt(float((batch.p_diff**2).mean())),
        "same_top": float(batch.same_top.mean()),
    }


def _bits_per_byte(total_nll: float, n_bytes: int) -> float | None:
    """Nats over the scored tokens → bits per UTF-8 byte of the text they stand for."""
    return total_nll / math.log(2) / n_bytes if n_bytes else None


def _llama_cpp_version() -> str | None:
    try:
        from quantize.gguf.format import llama_cpp_build
    except ImportError:
        return None
    return llama_cpp_build()
