"""One window's scored tokens: candidate logits against the cached reference.

The reference's logits are rebuilt from the cache (`eval_quant.reference`) to within a measured
error ε per token: |rebuilt - true| ≤ ε for every logit. Log-probabilities then move by at most
2ε, every probability by a factor within e^{±2ε}, and for the KL divergence

    |KL(P̂‖Q) - KL(P‖Q)| ≤ |Σ (p̂ - p)(ln p - ln q)| + KL(P̂‖P)
                         ≤ e^{2ε}(e^{2ε} - 1) (Σ p̂ |ln p̂ - ln q| + 2ε) + (e^{2ε} - 1)²

(the last term bounds KL(P̂‖P) by the χ² divergence). That bound, computed per token, is the
`kld_error` reported next to the KLD.
"""

from __future__ import annotations

import numpy as np

from eval_quant.statistics import TokenStats


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (the sums over a 32k vocabulary need the precision)."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def compare(
    logits: np.ndarray, targets: np.ndarray, reference: np.ndarray, error: np.ndarray
) -> TokenStats:
    """Statistics of the candidate's `logits` (n, vocab) against the `reference` logits (n, vocab),
    known to within `error` (n,) per logit, for next tokens `targets` (n,)."""
    logq = log_softmax(logits)
    logp = log_softmax(reference)
    p = np.exp(logp)
    rows = np.arange(len(targets))
    nll = -logq[rows, targets]
    nll_base = -logp[rows, targets]
    kld = (p * (logp - logq)).sum(axis=-1)
    spread = np.expm1(2 * error.astype(np.float64))  # e^{2ε} - 1
    kld_error = (1 + spread) * spread * ((p * np.abs(logp - logq)).sum(axis=-1) + 2 * error)
    kld_error += spread**2
    return TokenStats(
        nll=nll,
        nll_base=nll_base,
        kld=kld,
        kld_error=kld_error,
        p_diff=np.exp(-nll) - np.exp(-nll_base),
        same_top=logits.argmax(axis=-1) == reference.argmax(axis=-1),
    )
