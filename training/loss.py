"""Quality-weighted, masked token cross-entropy.

Each position's label is the next token, or `IGNORE_INDEX` where it must not be learned (user
and system turns, chat control tokens, BOS, padding). Each sample carries a quality weight,
broadcast to all of its tokens. One optimizer step sums `weight * cross-entropy` over every loss
token of every micro-batch on every process, and divides by T, the number of loss tokens in the
whole step:

    loss = sum_i w_i * CE_i / T

Why T and not sum(w) or a per-micro-batch mean: every loss token counts the same wherever it
falls, so gradient accumulation and data parallelism give the gradient of one big batch, and a
low-quality sample's weight lowers its pull on the model instead of being normalised away. T is
also what the adaptive LR scales with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # transformers' and torch's convention


def weighted_token_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of w * CE over loss tokens, number of loss tokens, number predicted right).

    `logits` (batch, seq, vocab) at position t predict `labels[:, t]`, which the data already
    shifted; `weights` is (batch,). The caller divides the sum by the step's total token count.
    """
    losses = F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(labels.shape)
    mask = labels != IGNORE_INDEX
    weighted = (losses * weights[:, None].to(losses.dtype) * mask).sum()
    correct = ((logits.argmax(-1) == labels) & mask).sum()
    return weighted, mask.sum(), correct
