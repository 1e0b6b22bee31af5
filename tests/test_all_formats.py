"""Every format through the command line: export, one evaluation against one reference, one report.

The per-format test files check each exporter in depth; this one checks what a user does with all
of them together: `export --format X` for each CPU format, then `eval` and `report` over the lot.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantize.artifact import MANIFEST
from quantize.registry import format_names, get_format
from tests.cli import invoke
from tests.cuda import EXL2_RUNS_HERE, needs_exl2, without_exl2
from tests.test_export_errors import assert_fails_cleanly

# One ~4-bit variant per CPU format, made through the command line (GGUF's comes from the
# session's export of every GGUF variant).
CLI_EXPORTS = {"gptq": "w4g128", "awq": "w4g128", "hqq": "4bit-g64", "mlx": "4bit-g64"}
# Fast calibration for GPTQ/AWQ on the tiny model: 16 windows of 128 tokens.
FAST = ("--samples", "16", "--n-ctx", "128", "--threads", "1")
# llama.cpp's own quants of the same model bracket every ~4-bit artifact: with twice the bits of a
# 2-bit quant each weight has four times as many levels, with half those of an 8-bit one sixteen
# times fewer. A 4-bit export must lose more than Q8_0 and less than Q2_K (2.6 bits per weight).
LADDER = ("Q8_0", "Q2_K")


@pytest.fixture(scope="module")
def artifacts(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, gguf_exports: dict[str, Path]
) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("formats")
    made = {"gguf": gguf_exports["Q4_K_M"]}
    for fmt, variant in CLI_EXPORTS.items():
        args = ["export", str(tiny_model), "--format", fmt, "-v", variant, "--out", str(out)]
        result = invoke(*args, *FAST)
        assert result.returncode == 0, (fmt, result.stderr)
        made[fmt] = out / f"{tiny_model.name}-{fmt.upper()}-{variant}"
        assert str(made[fmt]) in result.stdout
    return made


def test_every_format_is_exported_with_its_manifest(artifacts: dict[str, Path]) -> None:
    for fmt, path in artifacts.items():
        manifest = json.loads((path / MANIFEST).read_text("utf-8"))
        assert manifest["format"] == fmt
        assert 4 <= manifest["bits_per_weight"] < 16, (fmt, manifest["bits_per_weight"])
        assert manifest["size_bytes"] > 0 and manifest["started_at"] <= manifest["created_at"]
        assert f"--format {fmt}" in manifest["command"] or fmt == "gguf"
        # Calibration text is recorded exactly where it was used.
        uses_text = fmt in ("gguf", "gptq", "awq")
        assert (manifest["calibration"] is not None) == uses_text, fmt
        card = (path / "README.md").read_text("utf-8")
        assert card.startswith("---") and "## Usage" in card
        assert ("Importance matrix" in card) == (fmt == "gguf"), fmt


def evaluate(
    candidates: dict[str, Path], tiny_model: Path, gguf_exports: dict[str, Path], tmp_path: Path
) -> tuple[dict[str, dict], Path]:
    """`bielik-quant eval` of the candidates and of the llama.cpp ladder, rows by name."""
    names = [*candidates, *LADDER]
    paths = [*candidates.values(), *(gguf_exports[variant] for variant in LADDER)]
    results = tmp_path / "results.json"
    args = ["eval", "--reference", str(tiny_model), "--out", str(results)]
    for path in paths:
        args += ["--candidate", str(path)]
    args += ["--ctx", "256", "--chunks", "4", "--cache-dir", str(tmp_path / "cache")]
    result = invoke(*args)
    assert result.returncode == 0, result.stderr
    rows = json.loads(results.read_text("utf-8"))["candidates"]
    manifests = [json.loads((path / MANIFEST).read_text("utf-8")) for path in paths]
    assert [(row["format"], row["variant"]) for row in rows] == [
        (manifest["format"], manifest["variant"]) for manifest in manifests
    ]
    # Same tokens for everyone: the scored-token count is the reference's.
    assert len({row["statistics"]["count"] for row in rows}) == 1
    return dict(zip(names, rows, strict=True)), results


def assert_between_the_ladder(rows: dict[str, dict], name: str) -> None:
    kld = {key: row["statistics"]["kld"]["mean"] for key, row in rows.items()}
    assert kld["Q8_0"] < kld[name] < kld["Q2_K"], (name, kld)


def test_one_evaluation_and_one_report_cover_every_format(
    artifacts: dict[str, Path], tiny_model: Path, gguf_exports: dict[str, Path], tmp_path: Path
) -> None:
    rows, results = evaluate(artifacts, tiny_model, gguf_exports, tmp_path)
    assert [rows[fmt]["format"] for fmt in artifacts] == list(artifacts)
    for fmt in artifacts:
        assert_between_the_ladder(rows, fmt)

    report = invoke("report", str(results), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    table = (tmp_path / "report" / "report.md").read_text("utf-8")
    for row in rows.values():
        assert row["variant"] in table and row["format"].upper() in table.upper()


@needs_exl2
def test_exl2_export_is_evaluated_like_the_others(
    tiny_model: Path, gguf_exports: dict[str, Path], tmp_path: Path
) -> None:
    """On a CUDA machine with exllamav2: the real converter, then the same eval and ladder."""
    out, variant = tmp_path / "out", "4.0bpw-h6"
    args = ["export", str(tiny_model), "--format", "exl2", "-v", variant, "--out", str(out)]
    result = invoke(*args, "--n-ctx", "256")
    assert result.returncode == 0, result.stderr
    path = out / f"{tiny_model.name}-EXL2-{variant}"
    rows, _ = evaluate({"exl2": path}, tiny_model, gguf_exports, tmp_path)
    assert (rows["exl2"]["format"], rows["exl2"]["variant"]) == ("exl2", variant)
    assert_between_the_ladder(rows, "exl2")


def test_info_lists_every_format_and_what_is_missing() -> None:
    result = invoke("info")
    assert result.returncode == 0, result.stderr
    assert set(format_names()) >= {"gguf", "gptq", "awq", "hqq", "mlx", "exl2"}
    for name in format_names():
        fmt = get_format(name)
        assert name in result.stdout
        assert fmt.variants()[0] in result.stdout
        if fmt.missing():
            assert "no: missing" in result.stdout
    # EXL2 is usable exactly where a CUDA device and exllamav2 are; the CPU formats everywhere.
    assert (not get_format("exl2").missing()) == EXL2_RUNS_HERE
    assert not any(get_format(n).missing() for n in ("gguf", "gptq", "awq", "hqq", "mlx"))


@pytest.mark.parametrize("fmt", ["gguf", "gptq", "awq", "hqq", "mlx"])
def test_unknown_variant_is_one_line_and_no_artifact(
    fmt: str, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["export", str(tiny_model), "--format", fmt, "-v", "Q9_Z", "--out", str(out)]
    assert_fails_cleanly(args, out, "Q9_Z", get_format(fmt).variants()[0])


@without_exl2
def test_exl2_where_it_cannot_run_names_what_is_missing(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["export", str(tiny_model), "--format", "exl2", "-v", "4.0bpw-h6", "--out", str(out)]
    assert_fails_cleanly(args, out, "CUDA", "bielik-quant[exl2]")


def test_unknown_format_lists_the_known_ones(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["export", str(tiny_model), "--format", "onnx", "-v", "x", "--out", str(out)]
    assert_fails_cleanly(args, out, "unknown format 'onnx'", "gptq", "exl2")
