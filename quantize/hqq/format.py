"""HQQ (Half-Quadratic Quantization) through the hqq library's own API: no calibration text.

Each variant loads the source in float16, lets `AutoHQQHFModel.quantize_model` replace every linear
layer of the decoder blocks by an `HQQLinear` (weights in `bits`, one float16 scale and zero per
`group_size` consecutive input columns, axis 1), and saves with hqq's `save_quantized`: the
`config.json` + `qmodel.pt` layout that `AutoHQQHFModel.from_quantized` loads. Embeddings, norms and
lm_head stay float16 (hqq never quantizes lm_head).

transformers' own HQQ path is not used: with transformers 5.x, `from_pretrained(...,
quantization_config=HqqConfig(...))` raises `NotImplementedError: QuantizationMethod.HQQ is not
available yet`, so the artifact follows hqq's native layout, which hqq loads on any version.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import util
from pathlib import Path
from typing import Any

from quantize.artifact import Artifact, base_manifest, now, plan_outputs, publish, staged
from quantize.errors import MissingDependencyError, QuantizeError
from quantize.registry import ExportRequest, Progress, find_variant, stage
from quantize.transformers_runner import torch_threads

REQUIRED_MODULES = ("hqq", "torch", "transformers", "accelerate", "safetensors")
LIBRARIES = ("hqq", "torch", "transformers", "accelerate")
CONFIG_FILE = "config.json"  # hqq's BaseHQQModel.get_config_file
WEIGHTS_FILE = "qmodel.pt"  # hqq's BaseHQQModel.get_weight_file
# hqq keeps scales, zeros and unquantized tensors in the compute dtype it quantized with;
# float16 is its default and what its CUDA backends expect.
STORAGE_DTYPE = "float16"


@dataclass(frozen=True)
class Variant:
    bits: int
    group_size: int

    @property
    def name(self) -> str:
        return f"{self.bits}bit-g{self.group_size}"


VARIANTS = tuple(Variant(bits, group) for bits in (8, 4, 3, 2) for group in (64, 128))


class HQQ:
    name = "hqq"
    extra = "hqq"

    def variants(self) -> Sequence[str]:
        return [v.name for v in VARIANTS]

    def needs_imatrix(self, variant: str) -> bool:
        return False  # HQQ fits scales and zeros to the weights alone

    def missing(self) -> list[str]:
        return [module for module in REQUIRED_MODULES if not util.find_spec(module)]

    def check(self) -> None:
        if missing := self.missing():
            raise MissingDependencyError(
                f"HQQ export needs {', '.join(missing)}: pip install 'bielik-quant[{self.extra}]'"
            )

    def variant(self, name: str) -> Variant:
        return find_variant(self.name, VARIANTS, name)

    def open(self, artifact: Path, n_ctx: int = 4096) -> Any:
        self.check()
        from quantize.hqq.runner import hqq_runner

        if not (artifact / WEIGHTS_FILE).is_file():
            raise QuantizeError(f"{artifact} has no {WEIGHTS_FILE}; not an HQQ artifact")
        return hqq_runner(artifact)

    def export(self, request: ExportRequest, progress: Progress | None = None) -> list[Artifact]:
        variants = [self.variant(name) for name in request.variants]  # unknown names fail first
        self.check()
        source = request.source
        for variant in variants:
            # hqq quantizes every nn.Linear but lm_head: the decoder blocks' projections.
            source.check_group_size(variant.name, variant.group_size)
        finals = plan_outputs(request, self.name, [v.name for v in variants])
        artifacts = []
        with torch_threads(request.threads):
            for variant in variants:
                started_at = now()
                started = time.monotonic()
                with staged(finals[variant.name], request.overwrite) as staging:
                    on_layer = stage(progress, f"quantize → {variant.name}")
                    counts = quantize_and_save(source.path, variant, staging, on_layer)
                    source.copy_side_files(staging)
                    manifest = self._manifest(request, variant, staging, counts, started_at)
                    manifest["export_seconds"] = round(time.monotonic() - started, 1)
                    publish(staging, manifest, usage_snippet(finals[variant.name].name))
                artifacts.append(Artifact(finals[variant.name], manifest))
        return artifacts

    def _manifest(
        self,
        request: ExportRequest,
        variant: Variant,
        staging: Path,
        counts: WeightCounts,
        started_at: str,
    ) -> dict[str, Any]:
        tokenizer = next(
            (name for name in ("tokenizer.model", "tokenizer.json") if (staging / name).is_file()),
            None,
        )
        manifest = base_manifest(
            request,
            self.name,
            variant.name,
            files={"config": CONFIG_FILE, "weights": WEIGHTS_FILE, "tokenizer": tokenizer},
            size_bytes=sum(f.stat().st_size for f in staging.iterdir() if f.is_file()),
            n_weights=counts.weights,
            n_bytes=counts.bytes,
            libraries=LIBRARIES,
            started_at=started_at,
        )
        manifest["quantization"] = {
            "method": "hqq",
            "bits": variant.bits,
            "group_size": variant.group_size,
            "axis": 1,  # groups run along a layer's input columns
            "storage_dtype": STORAGE_DTYPE,
            "quantized_parameters": counts.quantized_weights,
            # The quantized layers alone: bits + 2 float16 (scale, zero) per group.
            "quantized_bits_per_weight": round(
                8 * counts.quantized_bytes / counts.quantized_weights, 4
            ),
            "unquantized": "embeddings, norms and lm_head (float16)",
        }
        return manifest


@dataclass(frozen=True)
class WeightCounts:
    """Weights and the bytes they take as saved, for the model and for its quantized layers."""

    weights: int
    bytes: int
    quantized_weights: int
    quantized_bytes: int


def quantize_and_save(
    model_dir: Path, variant: Variant, out: Path, on_layer: Any = None
) -> WeightCounts:
    """Quantize the checkpoint with hqq on the CPU and save it with hqq's own saver."""
    import torch
    from hqq.core.quantize import BaseQuantizeConfig
    from transformers import AutoModelForCausalLM

    from quantize.hqq.runner import hqq_model_class

    dtype = getattr(torch, STORAGE_DTYPE)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    hqq_model = hqq_model_class(on_layer)
    config = BaseQuantizeConfig(nbits=variant.bits, group_size=variant.group_size, axis=1)
    hqq_model.quantize_model(model, quant_config=config, compute_dtype=dtype, device="cpu")
    counts = weight_counts(model)
    hqq_model.save_quantized(model, str(out))
    return counts


def weight_counts(model: Any) -> WeightCounts:
    """What the saved tensors cost: packed weights, scales and zeros, and the other parameters."""
    from hqq.core.quantize import HQQLinear

    weights = n_bytes = quantized_weights = quantized_bytes = 0
    for module in model.modules():
        if isinstance(module, HQQLinear):
            rows, columns = module.meta["shape"]
            tensors = [module.W_q, module.bias, *module.meta.values()]
            size = sum(t.numel() * t.element_size() for t in tensors if _is_tensor(t))
            quantized_weights += rows * columns
            quantized_bytes += size
            weights += rows * columns
            n_bytes += size
        else:
            for parameter in module.parameters(recurse=False):
                weights += parameter.numel()
                n_bytes += parameter.numel() * parameter.element_size()
    return WeightCounts(weights, n_bytes, quantized_weights, quantized_bytes)


def _is_tensor(value: object) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def usage_snippet(directory: str) -> str:
    """The card's shell snippet: hqq's own loader, on a GPU or (PYTORCH backend) a CPU."""
    return (
        "pip install hqq\n"
        "python - <<'EOF'\n"
        "import torch\n"
        "from hqq.models.hf.base import AutoHQQHFModel\n"
        "from transformers import AutoTokenizer\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{directory}")\n'
        "model = AutoHQQHFModel.from_quantized(\n"
        f'    "{directory}", compute_dtype=torch.float16, device="cuda"  # CPU: float32, "cpu"\n'
        ")\n"
        'inputs = tokenizer("Najwyższy szczyt Polski to", return_tensors="pt").to(model.device)\n'
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0]))\n"
        "EOF"
    )
