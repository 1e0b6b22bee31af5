"""The shape of results.json, defined once: `eval_quant.suite` writes it; the report, the release
index and the model cards read it (as lm-eval keeps its result schema in one module).

The TypedDicts document the file (and let a type checker hold writer and readers to it); at run
time results.json is plain JSON. A change that readers of old files cannot follow gets a new
SCHEMA name.
"""

from __future__ import annotations

from typing import Any, TypedDict

SCHEMA = "bielik-quant.eval/1"
# What a file must have for the report to read it at all.
REQUIRED = ("reference", "text", "n_ctx", "candidates", "versions")
# A candidate row is known by the content hash of its weights: files are merged by it and the
# release matches an artifact to its row by it (a path can move; the weights cannot change).
ROW_KEY = "sha256"


class Estimate(TypedDict):
    value: float
    uncertainty: float  # standard error, as llama-perplexity prints it


class Distribution(TypedDict, total=False):
    """A per-token quantity: its mean ± standard error and percentiles ("p99", "median", …)."""

    mean: float
    uncertainty: float
    error_bound: float  # KLD only: |reported - exact KLD| ≤ this (the cached reference)
    max: float
    median: float
    min: float


class Statistics(TypedDict):
    """`eval_quant.statistics.KLDStatistics.summary()`; probabilities as fractions, not percent."""

    count: int  # scored tokens
    ppl: Estimate
    ppl_base: Estimate  # the reference's PPL on the same tokens
    correlation: float
    ln_ppl_ratio: Estimate
    ppl_ratio: Estimate
    ppl_diff: Estimate
    kld: Distribution
    p_diff: Distribution
    rms_p_diff: Estimate
    same_top: Estimate
    bits_per_byte: float | None
    bits_per_byte_base: float | None


class Model(TypedDict):
    """`eval_quant.models.ModelInfo.to_dict()`: the reference, or a candidate's identity."""

    path: str  # resolved
    name: str
    format: str  # "hf" for a checkpoint run by transformers
    variant: str
    imatrix: bool | None  # None where the format takes none
    size_bytes: int
    bits_per_weight: float | None
    sha256: str  # content hash of the weights (ROW_KEY)


class Candidate(Model):
    statistics: Statistics
    kld_quantiles: list[float]  # per-token KLD at fractions 0, 0.01, …, 1
    chunks: list[dict[str, float]]  # per window: ppl, ppl_base, kld, mean/rms Δp, same_top


class Results(TypedDict):
    schema: str  # SCHEMA
    created_at: str
    command: str
    versions: dict[str, str | None]
    text: dict[str, Any]  # name, sha256, characters
    n_ctx: int
    chunks: int
    tokens: dict[str, int]  # text, evaluated, scored, scored_bytes
    tokenizer_sha256: str
    reference: Model
    reference_stats: dict[str, float | None]  # ppl, bits_per_byte
    cache: dict[str, Any]
    candidates: list[Candidate]
