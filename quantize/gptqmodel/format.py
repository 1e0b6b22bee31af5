"""GPTQ and AWQ through GPTQModel: calibrate on our text, write checkpoints transformers loads.

Both formats share one pipeline: tokenize the calibration text once into windows that start with
BOS (as the imatrix does), let GPTQModel quantize the linear layers of every decoder block, save
in the library's own `quantization_config` convention (so `AutoModelForCausalLM.from_pretrained`,
vLLM and SGLang recognise the directory), copy the source's tokenizer files over the ones the
library re-saved, and write our manifest last inside a staged directory.

Resume: GPTQModel 7.7 can checkpoint a quantization layer by layer (`CheckpointConfig`), but only
for `model_type` llama and qwen3_moe (`validate_checkpoint_support`); Mistral/Bielik checkpoints are
refused, so an interrupted export here starts clean (the staged directory guarantees nothing
half-written looks complete).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import util
from pathlib import Path
from typing import Any

from quantize.artifact import Artifact, base_manifest, now, plan_outputs, publish, staged
from quantize.errors import MissingDependencyError, QuantizeError
from quantize.quiet import library_output, silently_import
from quantize.registry import ExportRequest, Progress, find_variant
from quantize.source import stored_tensors
from quantize.transformers_runner import TransformersRunner, torch_threads
from quantize.windows import token_windows, tokenize_for_windows

REQUIRED_MODULES = ("gptqmodel", "optimum", "torch", "safetensors")
LIBRARIES = ("gptqmodel", "optimum", "torch", "transformers", "safetensors", "accelerate")
SHARD_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class Variant:
    name: str
    bits: int
    group_size: int
    desc_act: bool = False  # GPTQ act-order: columns quantized by decreasing Hessian diagonal


GPTQ_VARIANTS = (
    Variant("w4g128", 4, 128),
    Variant("w4g128-actorder", 4, 128, desc_act=True),
    Variant("w8g128", 8, 128),
    Variant("w3g128", 3, 128),
)
AWQ_VARIANTS = (Variant("w4g128", 4, 128),)


class _GPTQModelFormat:
    name: str
    extra: str
    _variants: tuple[Variant, ...]

    def variants(self) -> Sequence[str]:
        return [v.name for v in self._variants]

    def needs_imatrix(self, variant: str) -> bool:
        return False  # the library calibrates on the text itself

    def missing(self) -> list[str]:
        return [module for module in REQUIRED_MODULES if not util.find_spec(module)]

    def check(self) -> None:
        if missing := self.missing():
            raise MissingDependencyError(
                f"{self.name.upper()} export needs {', '.join(missing)}: "
                f"pip install 'bielik-quant[{self.extra}]'"
            )

    def variant(self, name: str) -> Variant:
        return find_variant(self.name, self._variants, name)

    def open(self, artifact: Path, n_ctx: int = 4096) -> TransformersRunner:
        # transformers imports gptqmodel to build the quantized layers; import it first, so its
        # banner does not land among the results on stdout.
        _configure_gptqmodel()
        silently_import("gptqmodel")
        return TransformersRunner(artifact)

    def export(self, request: ExportRequest, progress: Progress | None = None) -> list[Artifact]:
        variants = [self.variant(name) for name in request.variants]  # unknown names fail first
        self.check()
        source = request.source
        for variant in variants:
            # GPTQModel quantizes the decoder blocks' projections; embeddings, norms and lm_head
            # stay in the source dtype.
            source.check_group_size(variant.name, variant.group_size)
        finals = plan_outputs(request, self.name, [v.name for v in variants])
        if request.calibration is None or not request.calibration.texts:
            raise QuantizeError(
                f"{self.name.upper()} export needs calibration text (--calibration)"
            )
        samples = calibration_samples(
            source.path, request.calibration.texts, request.n_ctx, request.calibration_samples
        )

        _configure_gptqmodel()
        artifacts = []
        description = f"{self.name} {', '.join(finals)}"
        with torch_threads(request.threads):
            for done, variant in enumerate(variants):
                if progress:
                    progress(description, done, len(variants))
                started_at = now()
                started = time.monotonic()
                with staged(finals[variant.name], request.overwrite) as staging:
                    self._quantize(request, variant, samples, staging)
                    manifest = self._manifest(request, variant, staging, samples, started_at)
                    manifest["export_seconds"] = round(time.monotonic() - started, 1)
                    publish(staging, manifest, self._usage(finals[variant.name]))
                artifacts.append(Artifact(finals[variant.name], manifest))
        if progress:
            progress(description, len(variants), len(variants))
        return artifacts

    def _config(self, variant: Variant, offload: Path) -> Any:
        raise NotImplementedError

    def _settings(self, variant: Variant) -> dict[str, Any]:
        return {"bits": variant.bits, "group_size": variant.group_size}

    def _quantize(
        self, request: ExportRequest, variant: Variant, samples: list[dict], staging: Path
    ) -> None:
        # GPTQModel offloads finished layers to disk and writes per-layer logs to ./logs; keep
        # both in a hidden sibling of the staging directory, so nothing lands in the user's
        # working directory, /tmp or the artifact, and a killed export leaves only hidden files.
        scratch = staging.with_name(staging.name + ".scratch")
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            with library_output():  # its banner, tables and bars
                from gptqmodel import GPTQModel
                from gptqmodel.looper import loop_processor

                loop_processor._PROJECT_LOG_DIR = scratch / "logs"  # a module constant, no option
                model = GPTQModel.load(
                    str(request.source.path), self._config(variant, scratch / "offload")
                )
                model.quantize(samples, batch_size=1)
                model.save(str(staging))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        # GPTQModel re-saves the tokenizer through its own fixer (it sets pad_token_id, drops
        # tokenizer.model); the artifact carries the source's files unchanged instead.
        request.source.copy_side_files(staging)

    def _manifest(
        self,
        request: ExportRequest,
        variant: Variant,
        staging: Path,
        samples: list[dict],
        started_at: str,
    ) -> dict[str, Any]:
        weights = sorted(staging.glob("*.safetensors"))
        n_bytes = sum(size for file in weights for _, size in stored_tensors(file).values())
        manifest = base_manifest(
            request,
            self.name,
            variant.name,
            # One file, or the index that names the shards when the model is large.
            files={"model": weights[0].name if len(weights) == 1 else SHARD_INDEX},
            size_bytes=sum(f.stat().st_size for f in staging.iterdir() if f.is_file()),
            n_weights=request.source.n_parameters,
            n_bytes=n_bytes,
            libraries=LIBRARIES,
            started_at=started_at,
            calibration=request.calibration,
        )
        manifest["quantization"] = {
            **self._settings(variant),
            "calibration_samples": len(samples),
            "sample_tokens": request.n_ctx,
        }
        return manifest

    def _usage(self, final: Path) -> str:
        return (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{final.name}")\n'
            f'model = AutoModelForCausalLM.from_pretrained("{final.name}")'
            "  # needs gptqmodel + optimum\n"
            f"# vLLM: vllm serve {final.name} --quantization {self.name}"
        )


class GPTQ(_GPTQModelFormat):
    name = "gptq"
    extra = "gptq"
    _variants = GPTQ_VARIANTS

    def _config(self, variant: Variant, offload: Path) -> Any:
        from gptqmodel import GPTQConfig

        # act_group_aware (GPTQModel's default group-aware reordering) is off unless act-order is
        # asked for, so "w4g128" is the classic GPTQ recipe every GPTQ kernel was written for.
        return GPTQConfig(
            bits=variant.bits,
            group_size=variant.group_size,
            desc_act=variant.desc_act,
            act_group_aware=False,
            sym=True,
            offload_to_disk_path=str(offload),
        )

    def _settings(self, variant: Variant) -> dict[str, Any]:
        return {**super()._settings(variant), "desc_act": variant.desc_act, "sym": True}


class AWQ(_GPTQModelFormat):
    name = "awq"
    extra = "awq"
    _variants = AWQ_VARIANTS

    def _config(self, variant: Variant, offload: Path) -> Any:
        from gptqmodel import AWQConfig

        # Asymmetric (zero_point: true) GEMM is the AutoAWQ convention vLLM and transformers expect.
        return AWQConfig(
            bits=variant.bits,
            group_size=variant.group_size,
            sym=False,
            format="gemm",
            offload_to_disk_path=str(offload),
        )

    def _settings(self, variant: Variant) -> dict[str, Any]:
        return {**super()._settings(variant), "version": "gemm", "zero_point": True}


def calibration_samples(
    model_dir: Path, texts: Sequence[str], n_ctx: int, limit: int
) -> list[dict[str, list[int]]]:
    """At most `limit` windows of `n_ctx` tokens, cut like the imatrix's (BOS first in each)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenize_for_windows(tokenizer, texts)
    windows = token_windows(ids, n_ctx, tokenizer.bos_token_id)[:limit]
    return [{"input_ids": window, "attention_mask": [1] * n_ctx} for window in windows]


def _configure_gptqmodel() -> None:
    """Environment GPTQModel reads at import time.

    Its device thread pool gives the CPU half the cores but a model-loader sub-pool two, and
    refuses to start on a 2-core machine (1 < 2): ask for at least two CPU workers.
    """
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, (os.cpu_count() or 2) // 2)))
