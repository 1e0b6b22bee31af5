"""`bielik-quant export --format gguf`: llama.cpp's mixes, the imatrix, overrides, artifacts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf
import numpy as np
import pytest

from calibration_data import load
from quantize.gguf.convert import convert_to_gguf
from quantize.gguf.llama_quantize import (
    FTYPE_NAMES,
    TensorTypeOverride,
    quantize_gguf,
    requires_imatrix,
)
from quantize.gguf.runner import GGUFRunner
from quantize.imatrix import load_imatrix
from quantize.source import ModelSource
from tests.cli import invoke
from tests.conftest import EXPORTED_VARIANTS

# `[  36/  39] blk.3.ffn_down.weight - [...], type = f16, size = ... -> ... (q6_K)`; tensors that
# stay as they are (norms) have no `(target)`.
PLAN_LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+-.*type =\s*(\w+)(?:.*\((\w+)\)|.*)$")


@pytest.fixture(scope="module")
def f16(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("f16") / "model-F16.gguf"
    return convert_to_gguf(ModelSource.open(tiny_model), out, "F16")


def planned_types(
    f16: Path, variant: str, overrides: list[TensorTypeOverride] = (), imatrix: Path | None = None
) -> dict[str, str]:
    """llama.cpp's own per-tensor choice for `variant`, from its dry run's log.

    Some mixes (IQ3_XXS, ...) pick different types when an imatrix is present, so the dry run
    gets the same imatrix the export used.
    """
    values = load_imatrix(imatrix).values() if imatrix else None
    lines = quantize_gguf(f16, f16.with_name("unused.gguf"), variant, imatrix=values,
                          overrides=overrides, dry_run=True)  # fmt: skip
    plan = {}
    for line in lines:
        if match := PLAN_LINE.match(line):
            name, source_type, target_type = match.groups()
            plan[name] = (target_type or source_type).upper()
    assert plan, lines[-5:]
    return plan


def model_file(artifact: Path) -> Path:
    return artifact / f"{artifact.name}.gguf"


def written_types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize("variant", EXPORTED_VARIANTS)
def test_tensor_types_are_llama_cpps_mix(
    gguf_exports: dict[str, Path], f16: Path, variant: str
) -> None:
    artifact = gguf_exports[variant]
    written = written_types(model_file(artifact))
    if variant in ("F16", "BF16"):  # our converter: matrices in the type, norms in F32
        assert {t for name, t in written.items() if "norm" not in name} == {variant}
        return
    assert written == planned_types(f16, variant, imatrix=artifact / "imatrix.gguf")


@pytest.mark.parametrize("variant", EXPORTED_VARIANTS)
def test_every_variant_loads_and_generates(gguf_exports: dict[str, Path], variant: str) -> None:
    runner = GGUFRunner(model_file(gguf_exports[variant]), n_ctx=128)
    text = runner.generate("Kraków jest", max_tokens=12)
    assert text.strip()
    logits = runner.logits(runner.tokenize("Kraków jest miastem"))
    assert np.isfinite(logits).all() and logits.shape[1] == runner.vocab_size


def test_imatrix_table_agrees_with_llama_cpp(f16: Path) -> None:
    """Which file types refuse without an imatrix: our predicate versus llama.cpp's dry run."""
    for variant in FTYPE_NAMES:
        if variant in ("F32", "F16", "BF16"):
            continue
        lines = quantize_gguf(f16, f16.with_name("unused.gguf"), variant, dry_run=True)
        llama_says = any("will require an imatrix" in line for line in lines)
        assert requires_imatrix(variant) == llama_says, variant


def test_tensor_type_overrides_take_effect(tiny_model: Path, tmp_path: Path, f16: Path) -> None:
    result = invoke(
        "export", str(tiny_model), "--variant", "Q4_K_M", "--imatrix", "none",
        "--tensor-type", r"ffn_down=Q8_0", "--tensor-type", r"blk\.0\.attn_q=Q5_0",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    artifact = tmp_path / f"{tiny_model.name}-GGUF-Q4_K_M"
    written = written_types(model_file(artifact))
    assert {t for name, t in written.items() if "ffn_down" in name} == {"Q8_0"}
    assert written["blk.0.attn_q.weight"] == "Q5_0"
    assert written["blk.1.attn_q.weight"] == "Q4_K"  # untouched by the override
    overrides = [
        TensorTypeOverride.parse("ffn_down=Q8_0"),
        TensorTypeOverride.parse(r"blk\.0\.attn_q=Q5_0"),
    ]
    assert written == planned_types(f16, "Q4_K_M", overrides)
    manifest = json.loads((artifact / "bielik-quant.json").read_text())
    assert manifest["tensor_type_overrides"] == ["ffn_down=Q8_0", r"blk\.0\.attn_q=Q5_0"]
    assert manifest["imatrix"] is None and not (artifact / "imatrix.gguf").exists()


def weighted_error(reference: np.ndarray, quantized: np.ndarray, importance: np.ndarray) -> float:
    """Σ_rows Σ_columns importance_j · (w_ij - q_ij)²: the error the imatrix asks to minimise."""
    return float((((reference - quantized) ** 2) * importance[None, :]).sum())


@pytest.mark.parametrize("variant", ["Q4_K_S", "Q3_K_S", "Q2_K", "IQ4_XS"])
def test_imatrix_lowers_activation_weighted_error(
    gguf_exports: dict[str, Path], f16: Path, tmp_path: Path, variant: str
) -> None:
    """The mechanism, tensor by tensor: with our imatrix, llama.cpp's rounding favours the columns
    that carry activation energy (end-to-end KLD on a tiny model need not improve: ARCHITECTURE).
    """
    artifact = gguf_exports[variant]
    importance = load_imatrix(artifact / "imatrix.gguf").values()
    plain = tmp_path / "plain.gguf"
    quantize_gguf(f16, plain, variant)
    reference = {t.name: t for t in gguf.GGUFReader(f16).tensors}
    with_im = {t.name: t for t in gguf.GGUFReader(model_file(artifact)).tensors}
    without = {t.name: t for t in gguf.GGUFReader(plain).tensors}

    better = compared = 0
    for name, tensor in with_im.items():
        if name not in importance or tensor.tensor_type != without[name].tensor_type:
            continue
        if tensor.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            continue
        w = np.asarray(reference[name].data, dtype=np.float32)
        q_with = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(w.shape)
        q_without = gguf.quants.dequantize(without[name].data, tensor.tensor_type).reshape(w.shape)
        e_with = weighted_error(w, q_with, importance[name])
        e_without = weighted_error(w, q_without, importance[name])
        compared += 1
        better += e_with < e_without
    assert compared >= 20
    assert better >= 0.9 * compared, f"{better}/{compared} tensors improved"


def test_manifest_and_model_card(gguf_exports: dict[str, Path], tiny_model: Path) -> None:
    artifact = gguf_exports["Q4_K_M"]
    manifest = json.loads((artifact / "bielik-quant.json").read_text())
    path = model_file(artifact)
    assert manifest["format"] == "gguf" and manifest["variant"] == "Q4_K_M"
    assert manifest["size_bytes"] == path.stat().st_size
    tensors = gguf.GGUFReader(path).tensors
    bits = 8 * sum(int(t.n_bytes) for t in tensors) / sum(int(t.n_elements) for t in tensors)
    assert manifest["bits_per_weight"] == pytest.approx(bits, abs=1e-3)
    assert 4.5 < manifest["bits_per_weight"] < 6.5
    assert manifest["source"]["sha256"] == ModelSource.open(tiny_model).sha256
    assert manifest["calibration"]["sha256"] == load("pl-en", split="calib").sha256
    assert manifest["imatrix"]["sha256"] == load_imatrix(artifact / "imatrix.gguf").sha256()
    assert manifest["imatrix"]["chunk_size"] == 256
    versions = manifest["versions"]
    assert {"gguf", "llama-cpp-python", "torch", "llama.cpp", "bielik-quant"} <= set(versions)
    assert manifest["command"].startswith("bielik-quant export")
    assert manifest["started_at"] <= manifest["created_at"]

    card = (artifact / "README.md").read_text()
    front = card.split("---")[1]
    assert f"base_model: {tiny_model.name}" in front and "- pl" in front and "- gguf" in front
    assert f"llama-cli -m {path.name}" in card
    # The shared work directory is gone; no hidden leftovers sit next to the artifacts.
    assert [p.name for p in artifact.parent.iterdir() if p.name.startswith(".")] == []


def test_imatrix_command_writes_a_file_export_accepts(tiny_model: Path, tmp_path: Path) -> None:
    imatrix = tmp_path / "imatrix.gguf"
    result = invoke("imatrix", str(tiny_model), "--out", str(imatrix), "--n-ctx", "128",
                    "--max-windows", "8")  # fmt: skip
    assert result.returncode == 0, result.stderr
    matrix = load_imatrix(imatrix)
    assert matrix.chunk_count == 8 and matrix.chunk_size == 128
    result = invoke("export", str(tiny_model), "-v", "IQ2_XXS", "--imatrix", str(imatrix),
                    "--out", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    artifact = tmp_path / "out" / f"{tiny_model.name}-GGUF-IQ2_XXS"
    manifest = json.loads((artifact / "bielik-quant.json").read_text())
    assert manifest["imatrix"]["sha256"] == matrix.sha256()
    assert manifest["calibration"] is None  # a given file: the calibration text is its own
