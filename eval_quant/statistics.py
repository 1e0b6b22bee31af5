"""Streaming statistics of a candidate against the reference, as `llama-perplexity --kl-divergence`.

Per scored token the suite hands over five numbers (see `TokenStats`); `KLDStatistics` keeps the
running sums llama.cpp keeps (in double precision) plus every per-token KLD and Δp (float32, as
llama.cpp does) for the percentiles. The formulas for means, uncertainties, covariance and
percentiles follow llama.cpp's `tools/perplexity/perplexity.cpp` of the version llama-cpp-python
vendors, so a number printed here means what the same line printed by llama-perplexity means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The percentile lines llama-perplexity prints, highest first (the median is printed separately).
KLD_PERCENTILES = (0.999, 0.99, 0.95, 0.90, 0.10, 0.05, 0.01, 0.001)
P_DIFF_PERCENTILES = (0.999, 0.99, 0.95, 0.90, 0.75, 0.25, 0.10, 0.05, 0.01, 0.001)
# llama-perplexity prints the summary blocks only from this many tokens on.
MIN_TOKENS_FOR_SUMMARY = 100


@dataclass(frozen=True)
class TokenStats:
    """What one batch of scored tokens contributes; every array has one entry per token."""

    nll: np.ndarray  # -ln p_candidate(true token)
    nll_base: np.ndarray  # -ln p_reference(true token)
    kld: np.ndarray  # KL(reference ‖ candidate) over the full vocabulary
    kld_error: np.ndarray  # bound on |kld - exact KL| from the cached reference's rounding
    p_diff: np.ndarray  # p_candidate(true) - p_reference(true)
    same_top: np.ndarray  # bool: arg-max of candidate == arg-max of reference

    def __len__(self) -> int:
        return len(self.nll)


def mean_and_uncertainty(total: float, total2: float, count: int) -> tuple[float, float]:
    """Mean and its standard error from running sums; none below 11 values (llama.cpp)."""
    if count < 1:
        return 0.0, 0.0
    mean = total / count
    variance = total2 / count - mean * mean
    error = math.sqrt(variance / (count - 1)) if variance > 0 and count > 10 else 0.0
    return mean, error


def covariance(total_a: float, total_b: float, total_ab: float, count: int) -> float:
    """Covariance of the two means (not of the values): divided by count - 1 once more."""
    if count < 10:
        return 0.0
    return (total_ab / count - (total_a / count) * (total_b / count)) / (count - 1)


def percentile(sorted_values: np.ndarray, fraction: float) -> float:
    """llama.cpp's percentile: linear interpolation at fraction·(n-1), computed in float32."""
    if fraction <= 0:
        return float(sorted_values[0])
    if fraction >= 1:
        return float(sorted_values[-1])
    position = np.float32(fraction) * np.float32(len(sorted_values) - 1)
    index = int(position)
    weight = position - np.float32(index)
    upper = sorted_values[min(index + 1, len(sorted_values) - 1)]
    return float((np.float32(1) - weight) * sorted_values[index] + weight * upper)


def median(sorted_values: np.ndarray) -> float:
    n = len(sorted_values)
    if n % 2:
        return float(sorted_values[n // 2])
    return float(np.float32(0.5) * (sorted_values[n // 2] + sorted_values[n // 2 - 1]))


def _key(fraction: float) -> str:
    """0.999 → "p99_9", 0.9 → "p90", 0.001 → "p0_1": the results.json field names."""
    return "p" + f"{100 * fraction:g}".replace(".", "_")


@dataclass
class KLDStatistics:
    """Running sums over every scored token of one candidate (llama.cpp's kl_divergence_result)."""

    count: int = 0
    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_kld_error: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    n_same_top: int = 0
    kld_values: list[np.ndarray] = field(default_factory=list)
    p_diff_values: list[np.ndarray] = field(default_factory=list)

    def add(self, batch: TokenStats) -> None:
        # llama.cpp rounds each per-token value to float and sums in double; so do we.
        nll = batch.nll.astype(np.float32).astype(np.float64)
        nll_base = batch.nll_base.astype(np.float32).astype(np.float64)
        kld = batch.kld.astype(np.float32).astype(np.float64)
        p_diff = batch.p_diff.astype(np.float32).astype(np.float64)
        self.count += len(batch)
        self.sum_nll += float(nll.sum())
        self.sum_nll2 += float((nll * nll).sum())
        self.sum_nll_base += float(nll_base.sum())
        self.sum_nll_base2 += float((nll_base * nll_base).sum())
        self.sum_nll_nll_base += float((nll * nll_base).sum())
        self.sum_kld += float(kld.sum())
        self.sum_kld2 += float((kld * kld).sum())
        self.sum_kld_error += float(batch.kld_error.sum())
        self.sum_p_diff += float(p_diff.sum())
        self.sum_p_diff2 += float((p_diff**2).sum())
        self.sum_p_diff4 += float((p_diff**4).sum())
        self.n_same_top += int(batch.same_top.sum())
        self.kld_values.append(kld.astype(np.float32))
        self.p_diff_values.append(p_diff.astype(np.float32))

    def sorted_kld(self) -> np.ndarray:
        return np.sort(np.concatenate(self.kld_values)) if self.kld_values else np.zeros(0)

    def summary(self) -> dict[str, Any]:
        """Every statistic llama-perplexity prints, as the `statistics` object of results.json."""
        if self.count == 0:
            raise ValueError("no tokens were scored")
        n = self.count
        log_ppl, log_ppl_unc = mean_and_uncertainty(self.sum_nll, self.sum_nll2, n)
        log_base, log_base_unc = mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, n)
        cov = covariance(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base, n)
        ppl, ppl_base = math.exp(log_ppl), math.exp(log_base)
        ppl_unc, ppl_base_unc = ppl * log_ppl_unc, ppl_base * log_base_unc
        denominator = log_ppl_unc * log_base_unc
        ratio_unc = _sqrt(log_ppl_unc**2 + log_base_unc**2 - 2 * cov)
        diff_unc = _sqrt(ppl_unc**2 + ppl_base_unc**2 - 2 * ppl * ppl_base * cov)
        kld_mean, kld_unc = mean_and_uncertainty(self.sum_kld, self.sum_kld2, n)
        p_mean, p_unc = mean_and_uncertainty(self.sum_p_diff, self.sum_p_diff2, n)
        mse, mse_unc = mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, n)
        rms = math.sqrt(mse)
        same_top = self.n_same_top / n
        kld = self.sorted_kld()
        p_diff = np.sort(np.concatenate(self.p_diff_values))
        return {
            "count": n,
            "ppl": {"value": ppl, "uncertainty": ppl_unc},
            "ppl_base": {"value": ppl_base, "uncertainty": ppl_base_unc},
            "correlation": cov / denominator if denominator else float("nan"),
            "ln_ppl_ratio": {"value": log_ppl - log_base, "uncertainty": ratio_unc},
            "ppl_ratio": {
                "value": math.exp(log_ppl - log_base),
                "uncertainty": math.exp(log_ppl - log_base) * ratio_unc,
            },
            "ppl_diff": {"value": ppl - ppl_base, "uncertainty": diff_unc},
            "kld": {
                "mean": kld_mean,
                "uncertainty": kld_unc,
                "error_bound": self.sum_kld_error / n,
                "max": float(kld[-1]),
                **{_key(f): percentile(kld, f) for f in KLD_PERCENTILES[:4]},
                "median": median(kld),
                **{_key(f): percentile(kld, f) for f in KLD_PERCENTILES[4:]},
                "min": float(kld[0]),
            },
            "p_diff": {
                "mean": p_mean,
                "uncertainty": p_unc,
                "max": float(p_diff[-1]),
                **{_key(f): percentile(p_diff, f) for f in P_DIFF_PERCENTILES[:5]},
                "median": median(p_diff),
                **{_key(f): percentile(p_diff, f) for f in P_DIFF_PERCENTILES[5:]},
                "min": float(p_diff[0]),
            },
            "rms_p_diff": {"value": rms, "uncertainty": 0.5 / rms * mse_unc if rms else 0.0},
            "same_top": {
                "value": same_top,
                "uncertainty": _sqrt(same_top * (1 - same_top) / (n - 1)) if n > 1 else 0.0,
            },
        }

    def quantiles(self, points: int = 101) -> list[float]:
        """Per-token KLD at fractions 0, 1/(points-1), ..., 1: the report's distribution plot."""
        kld = self.sorted_kld()
        return [percentile(kld, i / (points - 1)) for i in range(points)]


def _sqrt(value: float) -> float:
    """sqrt that treats rounding below zero (variance of identical inputs) as zero."""
    return math.sqrt(value) if value > 0 else 0.0


def format_blocks(stats: dict[str, Any]) -> str:
    """The three summary blocks llama-perplexity prints at the end, with the same layout."""
    kld, p_diff = stats["kld"], stats["p_diff"]

    def pair(name: str, label: str) -> str:
        return f"{label:<30}: {stats[name]['value']:10.6f} ± {stats[name]['uncertainty']:10.6f}"

    lines = [
        "====== Perplexity statistics ======",
        pair("ppl", "Mean PPL(Q)"),
        pair("ppl_base", "Mean PPL(base)"),
        f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * stats['correlation']:6.2f}%",
        pair("ln_ppl_ratio", "Mean ln(PPL(Q)/PPL(base))"),
        pair("ppl_ratio", "Mean PPL(Q)/PPL(base)"),
        pair("ppl_diff", "Mean PPL(Q)-PPL(base)"),
        "",
        "====== KL divergence statistics ======",
        f"Mean    KLD: {kld['mean']:10.6f} ± {kld['uncertainty']:10.6f}",
        f"Maximum KLD: {kld['max']:10.6f}",
    ]
    lines += [f"{_label(f)}   KLD: {kld[_key(f)]:10.6f}" for f in KLD_PERCENTILES[:4]]
    lines.append(f"Median  KLD: {kld['median']:10.6f}")
    lines += [f"{_label(f)}   KLD: {kld[_key(f)]:10.6f}" for f in KLD_PERCENTILES[4:]]
    lines += [
        f"Minimum KLD: {kld['min']:10.6f}",
        f"KLD error  : {kld['error_bound']:10.3g}  (bound on the mean's error from the cached "
        "reference)",
        "",
        "====== Token probability statistics ======",
        f"Mean    Δp: {100 * p_diff['mean']:6.3f} ± {100 * p_diff['uncertainty']:5.3f} %",
        f"Maximum Δp: {100 * p_diff['max']:6.3f}%",
    ]
    lines += [f"{_label(f)}   Δp: {100 * p_diff[_key(f)]:6.3f}%" for f in P_DIFF_PERCENTILES[:5]]
    lines.append(f"Median  Δp: {100 * p_diff['median']:6.3f}%")
    lines += [f"{_label(f)}   Δp: {100 * p_diff[_key(f)]:6.3f}%" for f in P_DIFF_PERCENTILES[5:]]
    rms, same = stats["rms_p_diff"], stats["same_top"]
    lines += [
        f"Minimum Δp: {100 * p_diff['min']:6.3f}%",
        f"RMS Δp    : {100 * rms['value']:6.3f} ± {100 * rms['uncertainty']:5.3f} %",
        f"Same top p: {100 * same['value']:6.3f} ± {100 * same['uncertainty']:5.3f} %",
    ]
    if "bits_per_byte" in stats:
        lines.append(
            f"Bits/byte : {stats['bits_per_byte']:6.4f} (base {stats['bits_per_byte_base']:6.4f})"
        )
    return "\n".join(lines)


def _label(fraction: float) -> str:
    return f"{100 * fraction:4.1f}%"
