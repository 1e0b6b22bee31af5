"""The EXL2 format: exllamav2's own converter, driven as its command line documents it.

exllamav2 quantizes and runs only on CUDA. Everything that does not need the GPU is ours and runs
anywhere: variant names, the calibration text written as the Parquet file the converter reads, the
converter's arguments, the manifest and the model card. `check()` refuses clearly on a machine
without a CUDA device, before any work.

The converter works in two passes: a measurement pass (how much each layer suffers at each bit
width), then a quantization pass that picks per-layer settings meeting the target average. The
measurement does not depend on the target, so several variants share one (`-om` once, `-m` after).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import util
from pathlib import Path
from typing import Any

from quantize.artifact import Artifact, base_manifest, now, plan_outputs, publish, staged
from quantize.errors import MissingDependencyError, QuantizeError, UnknownVariantError
from quantize.registry import ExportRequest, Progress
from quantize.source import stored_tensors

TARGET_BITS = ("2.5", "3.0", "3.5", "4.0", "4.5", "5.0", "6.0", "8.0")
HEAD_BITS = (6, 8)  # exllamav2 offers 2..8 for the output layer; only 6 and 8 are useful
_VARIANT = re.compile(r"^(\d\.\d)bpw-h(\d)$")
CALIBRATION_FILE = "calibration.parquet"
MEASUREMENT_FILE = "measurement.json"
MEASUREMENT_ROWS = 16  # exllamav2's default for the measurement pass
_STATUS = re.compile(r"\[STATUS\](.*)\[/STATUS\]")  # what the converter prints with -so


@dataclass(frozen=True)
class Exl2Variant:
    bits: float
    head_bits: int

    @property
    def name(self) -> str:
        return f"{self.bits:.1f}bpw-h{self.head_bits}"

    @classmethod
    def parse(cls, name: str) -> Exl2Variant:
        match = _VARIANT.match(name)
        if not match or match[1] not in TARGET_BITS or int(match[2]) not in HEAD_BITS:
            raise UnknownVariantError(
                f"unknown EXL2 variant {name!r}; valid: {', '.join(variant_names())}"
            )
        return cls(float(match[1]), int(match[2]))


def variant_names() -> list[str]:
    return [f"{bits}bpw-h{head}" for bits in TARGET_BITS for head in HEAD_BITS]


def write_calibration_parquet(texts: Sequence[str], path: Path) -> Path:
    """Our calibration documents as the one-column Parquet file exllamav2's `-c` reads.

    The converter concatenates every row into one string and takes its first rows x length
    tokens, so document order is kept and documents are separated by a blank line.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [text + "\n\n" for text in texts]}), path)
    return path


@dataclass(frozen=True)
class ConvertJob:
    """One run of exllamav2's converter, as command-line arguments."""

    source: Path
    work_dir: Path
    calibration: Path
    rows: int = 100
    length: int = 2048
    measurement_rows: int = MEASUREMENT_ROWS
    measurement_length: int = 2048

    def measure(self) -> list[str]:
        """Arguments for the measurement pass alone (its result goes to `measurement.json`)."""
        return [*self._common(), "-om", str(self.work_dir / MEASUREMENT_FILE)]

    def quantize(self, variant: Exl2Variant, out_dir: Path) -> list[str]:
        """Arguments that quantize to `variant` with the saved measurement, into `out_dir`."""
        return [
            *self._common(),
            "-m", str(self.work_dir / MEASUREMENT_FILE),
            "-b", f"{variant.bits:.1f}",
            "-hb", str(variant.head_bits),
            "-cf", str(out_dir),
        ]  # fmt: skip

    def _common(self) -> list[str]:
        return [
            sys.executable, "-m", "exllamav2.conversion.convert_exl2",
            "-i", str(self.source),
            "-o", str(self.work_dir / "job"),
            "-nr",  # a fresh job: an interrupted export starts clean (our staging does the rest)
            "-so",  # machine-readable [STATUS] lines, which become our progress bars
            "-c", str(self.calibration),
            "-r", str(self.rows), "-l", str(self.length),
            "-mr", str(self.measurement_rows), "-ml", str(self.measurement_length),
        ]  # fmt: skip


def calibration_rows(source: Path, texts: Sequence[str], length: int, limit: int) -> int:
    """How many rows of `length` tokens the text fills, at most `limit`.

    exllamav2 tokenizes the Parquet rows one by one and reshapes the first rows x length tokens;
    asked for more than the text holds it fails late with a reshape error, so ask for what fits.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    total = sum(len(tokenizer(t + "\n\n", add_special_tokens=False)["input_ids"]) for t in texts)
    rows = min(limit, total // length)
    if rows == 0:
        raise QuantizeError(
            f"the calibration text has {total} tokens, fewer than one row of {length}; "
            "give more text or a smaller --n-ctx"
        )
    return rows


def run_converter(
    args: list[str], expected: Path, log: Path, on_status: Callable[[str, float], None] | None
) -> None:
    """Run the converter, its output to `log` and its [STATUS] lines to `on_status`.

    The converter ends many refusals with a message and exit status 0, so success means the
    file or directory it should have written exists; otherwise the error carries its last lines.
    """
    tail: deque[str] = deque(maxlen=8)
    with (
        log.open("a", encoding="utf-8") as out,
        subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        ) as process,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            out.write(line)
            if status := _STATUS.search(line):
                if on_status:
                    fields = json.loads(status[1])
                    on_status(fields["stage"], float(fields["completion"]))
            elif line.strip():
                tail.append(line.rstrip())
    written = expected.is_file() or (expected.is_dir() and any(expected.glob("*.safetensors")))
    if process.returncode != 0 or not written:
        raise QuantizeError(
            f"exllamav2's converter failed (exit status {process.returncode}, full output in "
            f"{log}): " + " | ".join(tail)
        )


class EXL2:
    name = "exl2"
    extra = "exl2"

    def variants(self) -> Sequence[str]:
        return variant_names()

    def needs_imatrix(self, variant: str) -> bool:
        return False

    def missing(self) -> list[str]:
        missing = [m for m in ("exllamav2", "torch", "pyarrow") if not util.find_spec(m)]
        if "torch" not in missing and not _cuda_available():
            missing.append("a CUDA GPU")
        return missing

    def check(self) -> None:
        if missing := self.missing():
            raise MissingDependencyError(
                f"EXL2 export needs {', '.join(missing)}: exllamav2 quantizes and runs on CUDA "
                "only (pip install 'bielik-quant[exl2]' on a machine with an NVIDIA GPU)"
            )

    def export(self, request: ExportRequest, progress: Progress | None = None) -> list[Artifact]:
        variants = [Exl2Variant.parse(name) for name in request.variants]  # before any check
        self.check()
        if request.calibration is None:
            raise QuantizeError("EXL2 export needs calibration text (--calibration)")
        started_at = now()
        source = request.source
        finals = plan_outputs(request, self.name, [v.name for v in variants])
        texts = request.calibration.texts
        rows = calibration_rows(source.path, texts, request.n_ctx, request.calibration_samples)
        work = request.out_root / f".{source.name}-EXL2.work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        # The converter's log is kept next to the artifacts when it fails, for the bug report.
        log = request.out_root / f".{source.name}-EXL2.log"
        log.unlink(missing_ok=True)
        artifacts = []
        try:
            job = ConvertJob(
                source.path, work, write_calibration_parquet(texts, work / CALIBRATION_FILE),
                rows=rows, length=request.n_ctx,
                measurement_rows=min(MEASUREMENT_ROWS, rows), measurement_length=request.n_ctx,
            )  # fmt: skip
            measurement = work / MEASUREMENT_FILE
            run_converter(job.measure(), measurement, log, _bars(progress, "measure"))
            for variant in variants:
                with staged(finals[variant.name], request.overwrite) as staging:
                    on_status = _bars(progress, variant.name)
                    run_converter(job.quantize(variant, staging), staging, log, on_status)
                    manifest = self._manifest(request, variant, staging, job, started_at)
                    publish(staging, manifest, USAGE)
                artifacts.append(Artifact(finals[variant.name], manifest))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.unlink(missing_ok=True)
        return artifacts

    def _manifest(
        self,
        request: ExportRequest,
        variant: Exl2Variant,
        staging: Path,
        job: ConvertJob,
        started_at: str,
    ) -> dict[str, Any]:
        weights = sorted(staging.glob("*.safetensors"))
        manifest = base_manifest(
            request, self.name, variant.name,
            files={"model": ", ".join(file.name for file in weights)},
            size_bytes=sum(file.stat().st_size for file in weights),
            n_weights=request.source.n_parameters,
            n_bytes=sum(size for file in weights for _, size in stored_tensors(file).values()),
            libraries=("exllamav2", "torch", "pyarrow"), started_at=started_at,
            calibration=request.calibration,
        )  # fmt: skip
        manifest["exl2"] = {
            "target_bits": variant.bits,
            "head_bits": variant.head_bits,
            "calibration_rows": job.rows,
            "calibration_length": job.length,
            "measurement_rows": job.measurement_rows,
            "measurement_length": job.measurement_length,
        }
        return manifest

    def open(self, artifact: Path, n_ctx: int = 4096) -> Any:
        self.check()
        from quantize.exl2.runner import Exl2Runner

        return Exl2Runner(artifact, n_ctx)


USAGE = """python - <<'PY'
from exllamav2 import ExLlamaV2, ExLlamaV2Cache, ExLlamaV2Config, ExLlamaV2Tokenizer
from exllamav2.generator import ExLlamaV2DynamicGenerator
config = ExLlamaV2Config(".")
model = ExLlamaV2(config)
cache = ExLlamaV2Cache(model, lazy=True)
model.load_autosplit(cache)
tokenizer = ExLlamaV2Tokenizer(config)
generator = ExLlamaV2DynamicGenerator(model=model, cache=cache, tokenizer=tokenizer)
print(generator.generate(prompt="Stolica Polski to", max_new_tokens=32))
PY"""


def _bars(progress: Progress | None, label: str) -> Callable[[str, float], None] | None:
    """The converter's stages ("Measuring", "Quantizing", ...) as per-mille progress bars."""
    if progress is None:
        return None
    return lambda stage, done: progress(f"EXL2 {label}: {stage}", round(done * 1000), 1000)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
