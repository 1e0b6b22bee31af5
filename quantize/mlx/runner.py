"""Run an MLX artifact on the CPU: loaded by mlx-lm, its quantized layers made dense.

mlx's quantized matrix kernels are built for Apple GPUs; on a CPU its quantized forward is about
50x slower than the dense one. The quantization is weight-only and affine (w = scale * q + bias per
group), so replacing every QuantizedLinear/QuantizedEmbedding by a dense layer holding
`mx.dequantize` of its weights gives the quantized model's function at dense speed. Everything is
computed in float32, like the FP16 reference's runner, so the comparison measures quantization and
not the rounding of bf16 arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quantize.transformers_runner import HFText, HFTextRunner


class MLXRunner(HFTextRunner):
    def __init__(self, path: Path, n_ctx: int = 4096) -> None:
        from mlx_lm import load

        self.path = Path(path)
        self.n_ctx = n_ctx
        self.model, self.tokenizer = load(str(self.path))
        self.n_dequantized = densify(self.model)
        self.text = HFText(self.path)
        self._vocab_size = int(self.model.args.vocab_size)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        import mlx.core as mx

        out = self.model(mx.array([list(tokens)], dtype=mx.int32))[0].astype(mx.float32)
        mx.eval(out)
        return np.array(out)

    def generate(self, prompt: str, max_tokens: int) -> str:
        from mlx_lm import generate

        return generate(self.model, self.tokenizer, prompt, max_tokens=max_tokens)


def densify(model: Any) -> int:
    """Replace the model's quantized layers by float32 dense ones; returns how many were."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_unflatten

    dense = []
    for name, module in model.named_modules():
        if isinstance(module, nn.QuantizedLinear):
            weight = _dequantized(module)
            layer = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in module)
            if "bias" in module:
                layer.bias = module.bias
        elif isinstance(module, nn.QuantizedEmbedding):
            weight = _dequantized(module)
            layer = nn.Embedding(weight.shape[0], weight.shape[1])
        else:
            continue
        layer.weight = weight
        dense.append((name, layer))
    if dense:
        model.update_modules(tree_unflatten(dense))
    model.set_dtype(mx.float32)  # norms and unquantized layers too
    mx.eval(model.parameters())
    return len(dense)


def _dequantized(module: Any) -> Any:
    import mlx.core as mx

    # Scales and biases are stored in bf16; upcast them first, so w = scale * q + bias is
    # evaluated exactly in float32 rather than rounded to bf16.
    biases = module.get("biases")
    return mx.dequantize(
        module.weight,
        module.scales.astype(mx.float32),
        None if biases is None else biases.astype(mx.float32),
        group_size=module.group_size,
        bits=module.bits,
        mode=module.mode,
    )
