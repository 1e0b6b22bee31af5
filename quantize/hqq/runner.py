"""Load an HQQ artifact with hqq's own loader and run it on the CPU in float32.

`AutoHQQHFModel.from_quantized` rebuilds the transformers model from `config.json` and puts an
`HQQLinear` (packed weights, dequantized on each forward by the PYTORCH backend) in place of every
quantized layer; the rest is ordinary transformers, so generation and logits come from there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantize.transformers_runner import TransformersRunner


def hqq_model_class(on_layer: Callable[[int, int], None] | None = None) -> Any:
    """hqq's `AutoHQQHFModel`, quiet, reporting `(done, total)` per linear layer it patches.

    hqq draws its own tqdm bars on every quantize and load and takes no option to stop it; its
    patching hooks are classmethods meant to be overridden, so the subclass turns the bars off
    and reports to our progress callback instead. Loading and saving stay hqq's own code.
    """
    from hqq.models.hf.base import AutoHQQHFModel
    from torch import nn

    class ReportingHQQModel(AutoHQQHFModel):
        @classmethod
        def patch_nonlinearlayers(cls, model: Any, patch_fct: Any, verbose: bool = True) -> None:
            super().patch_nonlinearlayers(model, patch_fct, verbose=False)

        @classmethod
        def patch_linearlayers(
            cls, model: Any, patch_fct: Any, patch_params: Any, verbose: bool = True
        ) -> None:
            if on_layer is None:
                super().patch_linearlayers(model, patch_fct, patch_params, verbose=False)
                return
            total = sum(isinstance(m, nn.Linear) for m in model.modules())
            done = 0

            def reporting(layer: Any, params: Any) -> Any:
                nonlocal done
                patched = patch_fct(layer, params)
                done += 1
                on_layer(done, total)
                return patched

            super().patch_linearlayers(model, reporting, patch_params, verbose=False)

    return ReportingHQQModel


def load_hqq_model(path: Path, dtype: str = "float32") -> Any:
    """The artifact as hqq loads it, on the CPU, computing in `dtype`."""
    import torch
    from hqq.core.quantize import HQQBackend, HQQLinear

    # PYTORCH dequantizes in plain torch: the only backend that runs without CUDA kernels.
    HQQLinear.set_backend(HQQBackend.PYTORCH)
    model = hqq_model_class().from_quantized(
        str(path), compute_dtype=getattr(torch, dtype), device="cpu"
    )
    model.eval()
    return model


def hqq_runner(path: Path) -> TransformersRunner:
    """The Runner contract over the hqq-loaded model (logits and generation are transformers')."""
    return TransformersRunner(path, model=load_hqq_model(path))
