"""The suite's arithmetic against brute-force NumPy on random distributions (no model needed)."""

import math

import numpy as np
import pytest

from eval_quant.compare import compare, log_softmax
from eval_quant.reference import build_reference, load_cache, save_cache, scored_range
from eval_quant.statistics import KLDStatistics, format_blocks, median, percentile

VOCAB, HIDDEN = 97, 16


def random_logits(rng: np.random.Generator, n: int, scale: float = 3.0) -> np.ndarray:
    return rng.normal(0, scale, (n, VOCAB))


def accumulate(chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> KLDStatistics:
    stats = KLDStatistics()
    for candidate, reference, targets in chunks:
        stats.add(compare(candidate, targets, reference, np.zeros(len(targets))))
    return stats


@pytest.fixture
def pairs() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Three chunks of (candidate logits, reference logits, true next tokens)."""
    rng = np.random.default_rng(7)
    chunks = []
    for _ in range(3):
        reference = random_logits(rng, 150)
        candidate = reference + rng.normal(0, 0.3, reference.shape)
        chunks.append((candidate, reference, rng.integers(0, VOCAB, 150)))
    return chunks


def llama_percentile(values: np.ndarray, fraction: float) -> float:
    position = fraction * (len(values) - 1)
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return float((1 - (position - low)) * values[low] + (position - low) * values[high])


def test_statistics_equal_a_brute_force_computation(pairs: list) -> None:
    summary = accumulate(pairs).summary()

    candidate = np.concatenate([c for c, _, _ in pairs])
    reference = np.concatenate([r for _, r, _ in pairs])
    targets = np.concatenate([t for _, _, t in pairs])
    n = len(targets)
    p, q = np.exp(log_softmax(reference)), np.exp(log_softmax(candidate))
    kld = (p * np.log(p / q)).sum(axis=1)
    nll = -np.log(q[np.arange(n), targets])
    nll_base = -np.log(p[np.arange(n), targets])
    p_diff = q[np.arange(n), targets] - p[np.arange(n), targets]

    def standard_error(x: np.ndarray) -> float:
        return math.sqrt(x.var() / (n - 1))

    assert summary["count"] == n
    assert summary["kld"]["mean"] == pytest.approx(kld.mean(), rel=1e-6)
    assert summary["kld"]["uncertainty"] == pytest.approx(standard_error(kld), rel=1e-4)
    assert summary["ppl"]["value"] == pytest.approx(math.exp(nll.mean()), rel=1e-6)
    assert summary["ppl"]["uncertainty"] == pytest.approx(
        math.exp(nll.mean()) * standard_error(nll), rel=1e-4
    )
    assert summary["ppl_base"]["value"] == pytest.approx(math.exp(nll_base.mean()), rel=1e-6)
    correlation = np.corrcoef(nll, nll_base)[0, 1]
    assert summary["correlation"] == pytest.approx(correlation, rel=1e-4)
    # The uncertainty of the ratio is the standard error of the paired difference.
    assert summary["ln_ppl_ratio"]["value"] == pytest.approx((nll - nll_base).mean(), rel=1e-5)
    assert summary["ln_ppl_ratio"]["uncertainty"] == pytest.approx(
        standard_error(nll - nll_base), rel=1e-3
    )
    assert summary["ppl_diff"]["value"] == pytest.approx(
        math.exp(nll.mean()) - math.exp(nll_base.mean()), rel=1e-6
    )
    assert summary["p_diff"]["mean"] == pytest.approx(p_diff.mean(), rel=1e-5)
    assert summary["p_diff"]["uncertainty"] == pytest.approx(standard_error(p_diff), rel=1e-4)
    assert summary["rms_p_diff"]["value"] == pytest.approx(math.sqrt((p_diff**2).mean()), 1e-6)
    same = (candidate.argmax(1) == reference.argmax(1)).mean()
    assert summary["same_top"]["value"] == pytest.approx(same)
    assert summary["same_top"]["uncertainty"] == pytest.approx(
        math.sqrt(same * (1 - same) / (n - 1))
    )
    kld_sorted, p_sorted = np.sort(kld), np.sort(p_diff)
    assert summary["kld"]["max"] == pytest.approx(kld.max(), rel=1e-6)
    assert summary["kld"]["min"] == pytest.approx(kld.min(), rel=1e-6)
    assert summary["kld"]["median"] == pytest.approx(np.median(kld), rel=1e-6)
    for key, fraction in (("p99_9", 0.999), ("p99", 0.99), ("p90", 0.9), ("p1", 0.01)):
        assert summary["kld"][key] == pytest.approx(llama_percentile(kld_sorted, fraction), 1e-5)
        assert summary["kld"][key] == pytest.approx(np.percentile(kld, 100 * fraction), 1e-5)
    for key, fraction in (("p75", 0.75), ("p25", 0.25), ("p0_1", 0.001)):
        assert summary["p_diff"][key] == pytest.approx(
            llama_percentile(p_sorted, fraction), rel=1e-4, abs=1e-7
        )


def test_an_identical_candidate_scores_zero(pairs: list) -> None:
    summary = accumulate([(r, r, t) for _, r, t in pairs]).summary()
    assert abs(summary["kld"]["mean"]) < 1e-12
    assert summary["kld"]["max"] < 1e-6
    assert summary["p_diff"]["mean"] == 0
    assert summary["rms_p_diff"]["value"] == 0
    assert summary["same_top"]["value"] == 1
    assert summary["ppl_ratio"]["value"] == pytest.approx(1)
    assert summary["ppl_diff"]["value"] == pytest.approx(0, abs=1e-9)


def test_percentiles_follow_llama_cpp() -> None:
    values = np.array([0.0, 1.0, 2.0, 10.0], dtype=np.float32)
    assert percentile(values, 0.5) == pytest.approx(1.5)
    assert percentile(values, 0.999) == pytest.approx(2 + 0.997 * 8, rel=1e-5)
    assert percentile(values, 0) == 0 and percentile(values, 1) == 10
    assert median(values) == 1.5
    assert median(values[:3]) == 1.0


def test_uncertainties_vanish_below_eleven_tokens(pairs: list) -> None:
    candidate, reference, targets = pairs[0]
    stats = KLDStatistics()
    stats.add(compare(candidate[:10], targets[:10], reference[:10], np.zeros(10)))
    summary = stats.summary()
    assert summary["kld"]["uncertainty"] == 0 and summary["ppl"]["uncertainty"] == 0
    assert summary["kld"]["mean"] > 0


def test_blocks_print_every_statistic(pairs: list) -> None:
    text = format_blocks(accumulate(pairs).summary())
    for line in ("Mean PPL(Q)", "Cor(ln(PPL(Q)), ln(PPL(base)))", "Mean    KLD", "99.9%   KLD",
                 "Median  Δp", "RMS Δp", "Same top p", "KLD error"):  # fmt: skip
        assert line in text


def test_cached_reference_rebuilds_logits_within_its_bound(tmp_path) -> None:
    """A linear 'model' (logits = W h + shift): the cache stores coordinates, not logits."""
    rng = np.random.default_rng(3)
    output = rng.normal(0, 0.5, (VOCAB, HIDDEN)).astype(np.float16).astype(np.float32)
    n_ctx, chunks = 32, 3
    tokens = rng.integers(1, VOCAB, n_ctx * chunks + 5)
    hidden = {}

    def logits_of(window: np.ndarray) -> np.ndarray:
        key = tuple(window)
        hidden[key] = rng.normal(0, 2, (len(window), HIDDEN))
        return (hidden[key] @ output.T + rng.normal(0, 5)).astype(np.float32)

    meta = {"vocab_size": VOCAB, "bos_id": 0}
    cache = build_reference(logits_of, tokens, output, n_ctx, chunks, meta)
    assert cache.output.dtype == np.float16  # lossless for these weights, so stored in 16 bits
    assert cache.meta["logit_error_max"] < 1e-4
    first, last = scored_range(n_ctx)
    for c in range(chunks):
        window = cache.window(c)
        assert window[0] == 0 and list(window[1:]) == list(tokens[c * n_ctx + 1 : (c + 1) * n_ctx])
        truth = hidden[tuple(window)][first:last] @ output.T
        rebuilt = cache.logits(c)
        shift = (rebuilt - truth).mean(axis=1, keepdims=True)
        assert np.abs(rebuilt - truth - shift).max() <= cache.error[c].max() * 1.01 + 1e-6
        # The KLD of a perturbed candidate from the rebuilt logits is within the stated bound.
        candidate = truth + rng.normal(0, 0.2, truth.shape)
        targets = cache.targets(c)
        exact = compare(candidate, targets, truth, np.zeros(len(targets)))
        cached = compare(candidate, targets, rebuilt, cache.error[c])
        assert np.all(np.abs(cached.kld - exact.kld) <= cached.kld_error + 1e-12)

    save_cache(cache, tmp_path, "k")
    loaded, status = load_cache(tmp_path, "k")
    assert status == "reused" and np.array_equal(loaded.coordinates, cache.coordinates)
    data = tmp_path / "k.safetensors"
    blob = bytearray(data.read_bytes())
    blob[-3] ^= 0xFF
    data.write_bytes(bytes(blob))
    loaded, status = load_cache(tmp_path, "k")
    assert loaded is None and "sha256" in status
