"""Hugging Face parameter names → GGUF tensor names, from gguf-py's table (one source of truth)."""

from __future__ import annotations

from functools import cache

import gguf

from quantize.errors import UnsupportedArchitectureError

GGUF_ARCH = gguf.MODEL_ARCH.LLAMA  # Llama and Mistral checkpoints both become GGUF arch "llama"


@cache
def _name_map(n_blocks: int) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(GGUF_ARCH, n_blocks)


def gguf_tensor_name(hf_name: str, n_blocks: int) -> str:
    """`model.layers.0.self_attn.q_proj.weight` → `blk.0.attn_q.weight`; unknown names raise."""
    name = _name_map(n_blocks).get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise UnsupportedArchitectureError(
            f"tensor {hf_name!r} has no GGUF counterpart in a Llama/Mistral model"
        )
    return name
