"""The MLX format: mlx-lm's own converter, `mlx_lm.convert`, from the local checkpoint.

A variant is one `convert` call: affine quantization at 2…8 bits with a group size of 32, 64 or
128 ("4bit-g64"), one of mlx-lm's mixed recipes ("mixed_3_6": v_proj/down_proj in some layers and
lm_head at the higher width, the rest at the lower, like llama.cpp's _M mixes), or an unquantized
conversion ("bf16", "fp16"). Quantization is round-to-nearest per group (a scale and a bias each),
so no calibration text is used. The artifact directory is what `mlx_lm.load` opens unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import util
from math import prod
from pathlib import Path
from typing import Any

from quantize.artifact import Artifact, base_manifest, now, plan_outputs, publish, staged
from quantize.errors import MissingDependencyError, QuantizeError, UnknownVariantError
from quantize.quiet import library_output
from quantize.registry import ExportRequest, Progress, stage
from quantize.source import ModelSource, stored_tensors

BITS = (2, 3, 4, 5, 6, 8)  # the widths mx.quantize's affine mode takes
GROUP_SIZES = (32, 64, 128)
# mlx_lm.convert.QUANT_RECIPES as of mlx-lm 0.32; export checks the installed version has them.
RECIPES = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")
RECIPE_GROUP_SIZE = 64  # mlx-lm's default group size, which its recipes are tuned with
UNQUANTIZED = {"bf16": "bfloat16", "fp16": "float16"}  # variant → mlx_lm.convert dtype
MODE = "affine"
ANY_MATRIX = re.compile(".")  # mlx-lm quantizes embeddings and lm_head too
LIBRARIES = ("mlx", "mlx-metal", "mlx-cpu", "mlx-lm", "transformers")


@dataclass(frozen=True)
class MlxVariant:
    name: str
    bits: int | None = None  # None: unquantized
    group_size: int | None = None
    recipe: str | None = None
    dtype: str | None = None  # the dtype of unquantized conversions

    @property
    def quantized(self) -> bool:
        return self.dtype is None

    @classmethod
    def parse(cls, name: str) -> MlxVariant:
        variant = _VARIANTS.get(name)
        if variant is None:
            raise UnknownVariantError(
                f"unknown MLX variant {name!r}; available: {', '.join(_VARIANTS)}"
            )
        return variant


def _all_variants() -> dict[str, MlxVariant]:
    variants = [
        MlxVariant(f"{bits}bit-g{group}", bits, group) for bits in BITS for group in GROUP_SIZES
    ]
    variants += [MlxVariant(recipe, None, RECIPE_GROUP_SIZE, recipe) for recipe in RECIPES]
    variants += [MlxVariant(name, dtype=dtype) for name, dtype in UNQUANTIZED.items()]
    return {variant.name: variant for variant in variants}


_VARIANTS = _all_variants()


class MLX:
    name = "mlx"
    extra = "mlx"

    def variants(self) -> Sequence[str]:
        return tuple(_VARIANTS)

    def needs_imatrix(self, variant: str) -> bool:
        return False  # round-to-nearest: nothing is calibrated

    def missing(self) -> list[str]:
        return [module for module in ("mlx", "mlx_lm") if not util.find_spec(module)]

    def check(self) -> None:
        if missing := self.missing():
            raise MissingDependencyError(
                f"MLX export needs {', '.join(missing)}: pip install 'bielik-quant[mlx]' "
                "(on Linux this installs mlx[cpu])"
            )

    def open(self, artifact: Path, n_ctx: int = 4096) -> Any:
        self.check()
        from quantize.mlx.runner import MLXRunner

        return MLXRunner(artifact, n_ctx=n_ctx)

    def export(self, request: ExportRequest, progress: Progress | None = None) -> list[Artifact]:
        variants = [MlxVariant.parse(name) for name in request.variants]  # before any work
        self.check()
        _check_recipes(variants)
        started_at = now()
        source = request.source
        for variant in variants:
            if variant.group_size:
                # mlx-lm quantizes every matrix whose width allows it and silently leaves the
                # others dense: the artifact would not be the variant its name says.
                source.check_group_size(variant.name, variant.group_size, ANY_MATRIX)
        finals = plan_outputs(request, self.name, [v.name for v in variants])
        artifacts = []
        for variant in variants:
            final = finals[variant.name]
            with staged(final, request.overwrite) as staging:
                _convert(source, staging, variant, stage(progress, f"convert → {variant.name}"))
                manifest = self._manifest(request, variant, staging, started_at)
                # Our card replaces the stub mlx-lm writes.
                publish(staging, manifest, USAGE.format(path=final.name))
            artifacts.append(Artifact(final, manifest))
        return artifacts

    def _manifest(
        self, request: ExportRequest, variant: MlxVariant, artifact: Path, started_at: str
    ) -> dict[str, Any]:
        config = json.loads((artifact / "config.json").read_text("utf-8"))
        count = count_weights(artifact, config.get("quantization"))
        weight_files = sorted(artifact.glob("model*.safetensors"))
        manifest = base_manifest(
            request, self.name, variant.name,
            files={
                "model": ", ".join(file.name for file in weight_files),
                "config": "config.json",
                "tokenizer": "tokenizer.json",
            },
            size_bytes=sum(file.stat().st_size for file in weight_files),
            n_weights=count.n_weights, n_bytes=count.n_bytes, libraries=LIBRARIES,
            started_at=started_at,
        )  # fmt: skip
        manifest["mlx"] = {
            "mode": MODE if variant.quantized else None,
            "bits": variant.bits,
            "group_size": variant.group_size,
            "recipe": variant.recipe,
            "dtype": variant.dtype,
            # What bits_per_weight counts: every tensor's stored bytes (packed weights, their
            # scales and biases, unquantized norms) over the model's weights, quantized ones
            # counted as the values they stand for (packed uint32 x 32 / bits).
            "quantized_weights": count.n_quantized,
            "other_weights": count.n_weights - count.n_quantized,
            "layers_by_bits": count.layers_by_bits,
        }
        return manifest


USAGE = """pip install mlx-lm
mlx_lm.generate --model {path} --prompt "Opowiedz mi o Krakowie." --max-tokens 100"""


def _check_recipes(variants: list[MlxVariant]) -> None:
    """The installed mlx-lm must offer each recipe asked for (its list moves between releases)."""
    asked = [v.recipe for v in variants if v.recipe]
    if not asked:
        return
    from mlx_lm.convert import QUANT_RECIPES

    if unknown := [recipe for recipe in asked if recipe not in QUANT_RECIPES]:
        raise MissingDependencyError(
            f"the installed mlx-lm has no recipe {', '.join(unknown)} "
            f"(it offers {', '.join(QUANT_RECIPES)}); pip install -U 'bielik-quant[mlx]'"
        )


def _convert(source: ModelSource, staging: Path, variant: MlxVariant, on_step: Any | None) -> None:
    from mlx_lm.convert import convert

    if on_step:
        on_step(0, 1)
    # mlx_lm.convert refuses a directory that exists; staged() made an empty one, so hand it the
    # path free (a failure is still cleaned up by staged()).
    staging.rmdir()
    with library_output():  # its "[INFO]" lines would break the CLI's bars
        convert(
            str(source.path),
            mlx_path=str(staging),
            quantize=variant.quantized,
            q_bits=variant.bits,
            q_group_size=variant.group_size,
            q_mode=MODE,
            quant_predicate=variant.recipe,
            dtype=variant.dtype,
        )
    # mlx-lm re-saves the tokenizer through transformers (tokenizer.json); the source's own
    # files go next to it unchanged, SentencePiece model included, for tools that read only that.
    source.copy_side_files(staging)
    if on_step:
        on_step(1, 1)


@dataclass(frozen=True)
class WeightCount:
    n_bytes: int  # every tensor as stored
    n_weights: int  # model weights, quantized ones counted unpacked
    n_quantized: int  # of which in quantized layers
    layers_by_bits: dict[str, int]  # "4" → number of quantized layers at 4 bits


def count_weights(artifact: Path, quantization: dict[str, Any] | None) -> WeightCount:
    """Bytes and weights of an MLX artifact, from the safetensors headers (no tensor is read)."""
    tensors: dict[str, tuple[tuple[int, ...], int]] = {}
    for file in sorted(artifact.glob("model*.safetensors")):
        tensors.update(stored_tensors(file))
    n_bytes = sum(size for _, size in tensors.values())
    n_weights = n_quantized = 0
    layers_by_bits: dict[str, int] = {}
    for name, (shape, _) in tensors.items():
        layer, _, kind = name.rpartition(".")
        quantized_layer = f"{layer}.scales" in tensors
        if quantized_layer and kind in ("scales", "biases"):
            continue  # quantization metadata: bytes, not weights
        if quantized_layer and kind == "weight":
            bits = _layer_bits(quantization, layer)
            count = prod(shape) * 32 // bits  # uint32 words, 32 / bits values each
            n_quantized += count
            layers_by_bits[str(bits)] = layers_by_bits.get(str(bits), 0) + 1
        else:
            count = prod(shape)
        n_weights += count
    return WeightCount(n_bytes, n_weights, n_quantized, dict(sorted(layers_by_bits.items())))


def _layer_bits(quantization: dict[str, Any] | None, layer: str) -> int:
    if not quantization:
        raise QuantizeError(f"{layer} is quantized but config.json has no quantization settings")
    specific = quantization.get(layer)
    return int(specific["bits"] if isinstance(specific, dict) else quantization["bits"])
