"""The GGUF format: convert once to F16, compute one importance matrix, quantize every variant.

For a request with several variants the expensive inputs are shared: one F16 intermediate and one
imatrix, kept in a hidden work directory under the output root and removed at the end. Each variant
becomes its own artifact directory, written through `quantize.artifact.staged`.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from importlib import util
from pathlib import Path
from typing import Any

from quantize.artifact import Artifact, base_manifest, now, plan_outputs, publish, staged
from quantize.errors import ImatrixError, MissingDependencyError, QuantizeError
from quantize.gguf.llama_quantize import (
    FTYPE_NAMES,
    TensorTypeOverride,
    ftype,
    imatrix_metadata,
    quantize_gguf,
    requires_imatrix,
)
from quantize.registry import ExportRequest, Progress, stage

UNQUANTIZED = ("F32", "F16", "BF16")  # written by our converter directly
IMATRIX_FILE = "imatrix.gguf"


class GGUF:
    name = "gguf"
    extra = "gguf"

    def variants(self) -> Sequence[str]:
        return FTYPE_NAMES

    def needs_imatrix(self, variant: str) -> bool:
        return requires_imatrix(variant)

    def missing(self) -> list[str]:
        return [m for m in ("gguf", "llama_cpp", "torch", "safetensors") if not util.find_spec(m)]

    def check(self) -> None:
        if missing := self.missing():
            raise MissingDependencyError(
                f"GGUF export needs {', '.join(missing)}: pip install 'bielik-quant[gguf]' "
                "(llama-cpp-python compiles llama.cpp, ~10 minutes)"
            )

    def open(self, artifact: Path, n_ctx: int = 4096) -> Any:
        from quantize.gguf.runner import GGUFRunner

        files = sorted(p for p in artifact.glob("*.gguf") if p.name != IMATRIX_FILE)
        if len(files) != 1:
            raise QuantizeError(
                f"{artifact} should hold exactly one model .gguf, found {len(files)}"
            )
        return GGUFRunner(files[0], n_ctx=n_ctx)

    def export(self, request: ExportRequest, progress: Progress | None = None) -> list[Artifact]:
        self.check()
        started_at = now()
        source = request.source
        for variant in request.variants:
            ftype(variant)  # unknown names fail here, before any work
        overrides = [TensorTypeOverride.parse(text) for text in request.tensor_types]
        finals = plan_outputs(request, self.name, request.variants)
        quantized = [v for v in request.variants if v not in UNQUANTIZED]
        imatrix = self._imatrix_choice(request, quantized, overrides)

        work = request.out_root / f".{source.name}-GGUF.work"
        shutil.rmtree(work, ignore_errors=True)  # left behind by a killed export
        work.mkdir(parents=True)
        artifacts = []
        try:
            matrix = None
            if imatrix is not None and quantized:
                matrix = self._imatrix(request, imatrix, work, progress)
            intermediate = None
            # Unquantized variants first: a requested F16 artifact doubles as the intermediate.
            for variant in sorted(request.variants, key=lambda v: v not in UNQUANTIZED):
                with staged(finals[variant], request.overwrite) as staging:
                    model_file = staging / f"{finals[variant].name}.gguf"
                    if variant in UNQUANTIZED:
                        self._convert(source, model_file, variant, progress)
                        used = None
                    else:
                        if intermediate is None:
                            intermediate = self._convert(source, work / "F16.gguf", "F16", progress)
                        self._quantize(
                            intermediate, model_file, variant, matrix, overrides, request, progress
                        )
                        used = matrix
                        if used is not None:
                            shutil.copy2(work / IMATRIX_FILE, staging / IMATRIX_FILE)
                    manifest = self._manifest(
                        request, variant, model_file, used, overrides, started_at
                    )
                    publish(staging, manifest, f"llama-cli -m {model_file.name} -cnv")
                artifacts.append(Artifact(finals[variant], manifest))
                if variant == "F16":
                    intermediate = finals[variant] / model_file.name
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return artifacts

    def _imatrix_choice(
        self, request: ExportRequest, quantized: list[str], overrides: list[TensorTypeOverride]
    ) -> str | Path | None:
        choice = request.imatrix
        if choice is None:
            needing = [v for v in quantized if requires_imatrix(v, overrides)]
            if needing:
                raise ImatrixError(
                    f"{', '.join(needing)} need an importance matrix; use --imatrix auto "
                    "(computed from the calibration text) or --imatrix FILE"
                )
            return None
        if choice == "auto":
            if request.calibration is None:
                raise ImatrixError("--imatrix auto needs calibration text (--calibration)")
            return "auto"
        from quantize.imatrix import load_imatrix

        load_imatrix(Path(choice))  # a bad file fails now, not after the conversion
        return Path(choice)

    def _imatrix(
        self, request: ExportRequest, choice: str | Path, work: Path, progress: Progress | None
    ) -> Any:
        from quantize.imatrix import compute_imatrix, load_imatrix, save_imatrix

        if choice != "auto":
            matrix = load_imatrix(Path(choice))
        else:
            calibration = request.calibration
            assert calibration is not None
            matrix = compute_imatrix(
                request.source.path,
                calibration.texts,
                n_ctx=request.n_ctx,
                dataset_name=calibration.name,
                on_window=stage(progress, "importance matrix"),
            )
        save_imatrix(matrix, work / IMATRIX_FILE)
        return matrix

    def _convert(
        self, source: Any, out_file: Path, out_type: str, progress: Progress | None
    ) -> Path:
        from quantize.gguf.convert import convert_to_gguf

        return convert_to_gguf(source, out_file, out_type, stage(progress, f"convert → {out_type}"))

    def _quantize(
        self,
        intermediate: Path,
        model_file: Path,
        variant: str,
        matrix: Any,
        overrides: list[TensorTypeOverride],
        request: ExportRequest,
        progress: Progress | None,
    ) -> None:
        values, metadata = None, None
        if matrix is not None:
            values = matrix.values()
            # The artifact ships the imatrix used as IMATRIX_FILE beside the model: that is the
            # file the model names, as llama-quantize names the one it was given.
            metadata = imatrix_metadata(
                IMATRIX_FILE, matrix.datasets, len(values), matrix.chunk_count
            )
        quantize_gguf(
            intermediate,
            model_file,
            variant,
            imatrix=values,
            overrides=overrides,
            threads=request.threads,
            metadata=metadata,
            on_tensor=stage(progress, f"quantize → {variant}"),
        )

    def _manifest(
        self,
        request: ExportRequest,
        variant: str,
        model_file: Path,
        matrix: Any,
        overrides: list[TensorTypeOverride],
        started_at: str,
    ) -> dict[str, Any]:
        import gguf

        reader = gguf.GGUFReader(model_file)
        manifest = base_manifest(
            request,
            self.name,
            variant,
            files={"model": model_file.name, "imatrix": IMATRIX_FILE if matrix else None},
            size_bytes=model_file.stat().st_size,
            n_weights=sum(int(t.n_elements) for t in reader.tensors),
            n_bytes=sum(int(t.n_bytes) for t in reader.tensors),
            libraries=("gguf", "llama-cpp-python", "torch", "transformers", "safetensors"),
            started_at=started_at,
            # The text is part of this artifact's recipe only through an imatrix made from it;
            # a given imatrix file names its own datasets below.
            calibration=request.calibration if matrix and request.imatrix == "auto" else None,
        )
        manifest["versions"]["llama.cpp"] = llama_cpp_build()
        manifest["imatrix"] = None if matrix is None else {
            "sha256": matrix.sha256(),
            "chunk_count": matrix.chunk_count,
            "chunk_size": matrix.chunk_size,
            "datasets": matrix.datasets,
        }  # fmt: skip
        manifest["tensor_type_overrides"] = [str(o) for o in overrides]
        return manifest


def llama_cpp_build() -> str:
    """llama.cpp as built into llama-cpp-python: its ggml library version and CPU features."""
    import llama_cpp

    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml.so.*.*"))
    ggml = libs[-1].name.removeprefix("libggml.so.") if libs else "unknown"
    return f"vendored by llama-cpp-python {llama_cpp.__version__} (ggml {ggml})"
