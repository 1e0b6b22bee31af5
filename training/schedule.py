"""The learning rate: linear warmup, cosine decay to a floor, and the adaptive LR (ALR) on top.

Both are plain functions of the step, so a resumed run recomputes exactly the rate an
uninterrupted one would use; nothing about the schedule has to be saved.
"""

from __future__ import annotations

import math


def cosine_lr(step: int, peak: float, floor: float, warmup: int, total: int) -> float:
    """The scheduled LR of optimizer step `step` (0-based).

    Warmup rises linearly from peak/warmup at step 0 to `peak` at step `warmup - 1`; the cosine
    then falls from `peak` at step `warmup` to `floor` at step `total - 1`, and stays there.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    decay_steps = max(1, total - 1 - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def adaptive_lr(lr: float, loss_tokens: int, baseline_tokens: int) -> float:
    """ALR: `lr` * sqrt(T / BS), T the loss tokens of this optimizer step, BS the baseline.

    A step whose batch holds fewer loss tokens than the baseline (short SFT answers, heavy
    masking) takes a proportionally smaller step, the square root being the usual rule for
    scaling a rate with batch size under Adam. `baseline_tokens` 0 leaves `lr` unchanged.
    """
    if baseline_tokens <= 0:
        return lr
    return lr * math.sqrt(loss_tokens / baseline_tokens)
