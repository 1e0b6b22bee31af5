"""HQQ artifacts of the tiny model: quantized and saved by hqq, reloaded by hqq's own loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quantize.artifact import MANIFEST, MODEL_CARD
from quantize.errors import (
    MissingDependencyError,
    OutputExistsError,
    QuantizeError,
    UnknownVariantError,
)
from quantize.hqq import format as hqq_format
from quantize.hqq.format import HQQ
from quantize.registry import ExportRequest
from quantize.source import ModelSource
from tests.dequant import (
    assert_runs_stored_weights,
    hqq_grids,
    read_checkpoint,
    reference_logits,
    rounding_violations,
)

# Enough to see the ladder of bit widths and the effect of the group size at 4 bits.
EXPORTED = ("8bit-g64", "4bit-g64", "4bit-g128", "3bit-g64", "2bit-g64")


def request(model: Path, out: Path, variants: tuple[str, ...], **kwargs: Any) -> ExportRequest:
    # One torch thread: HQQ's solver is many small tensor ops, which a busy 2-core machine runs
    # far faster on one thread than on two that wait for each other.
    kwargs.setdefault("threads", 1)
    return ExportRequest(source=ModelSource.open(model), out_root=out, variants=variants, **kwargs)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("hqq")
    made = HQQ().export(request(tiny_model, out, EXPORTED))
    return {a.manifest["variant"]: a.path for a in made}


@pytest.fixture
def odd_width_model(tmp_path: Path, tiny_model: Path) -> Path:
    """A Mistral 192 wide (FFN 384): 64 divides every input width, 128 does not.

    Real checkpoints have such widths (hidden sizes like 2880 or 4160 are not multiples of 128);
    the tiny model's 256/768 divide both group sizes, so the refusal needs a model of its own.
    """
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    config = json.loads((tiny_model / "config.json").read_text("utf-8"))
    small = MistralConfig(
        vocab_size=config["vocab_size"], hidden_size=192, intermediate_size=384,
        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    out = tmp_path / "odd-width"
    MistralForCausalLM(small).to(torch.bfloat16).save_pretrained(out)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy2(tiny_model / name, out / name)
    return out


def test_variants_are_bits_and_group_sizes() -> None:
    names = HQQ().variants()
    assert names == [f"{b}bit-g{g}" for b in (8, 4, 3, 2) for g in (64, 128)]
    assert not any(HQQ().needs_imatrix(name) for name in names)


def test_artifacts_are_hqq_checkpoints(exports: dict[str, Path], tiny_model: Path) -> None:
    source = ModelSource.open(tiny_model)
    for variant, path in exports.items():
        assert path.name == f"{tiny_model.name}-HQQ-{variant}"
        manifest = json.loads((path / MANIFEST).read_text("utf-8"))
        bits, group = int(variant.split("bit")[0]), int(variant.split("-g")[1])
        assert (manifest["format"], manifest["variant"]) == ("hqq", variant)
        assert manifest["files"] == {
            "config": "config.json", "weights": "qmodel.pt", "tokenizer": "tokenizer.model"
        }  # fmt: skip
        assert manifest["source"]["sha256"] == source.sha256
        assert manifest["calibration"] is None
        assert {"hqq", "torch", "transformers"} <= set(manifest["versions"])
        assert manifest["n_parameters"] == source.n_parameters
        settings = manifest["quantization"]
        assert (settings["bits"], settings["group_size"], settings["axis"]) == (bits, group, 1)
        # Packed codes plus a float16 scale and zero per group; hqq packs 3-bit codes ten to an
        # int32 (3.2 bits), rows padded to a multiple of ten.
        overhead = 32 / group
        if bits == 3:
            assert 3.2 + overhead <= settings["quantized_bits_per_weight"] < 3.3 + overhead
        else:
            assert settings["quantized_bits_per_weight"] == pytest.approx(bits + overhead)
        # The whole model, float16 embeddings and lm_head included, as saved by torch.save.
        weights = (path / "qmodel.pt").stat().st_size
        assert manifest["bits_per_weight"] == pytest.approx(
            8 * weights / manifest["n_parameters"], rel=0.01
        )
        assert manifest["size_bytes"] >= weights
        assert (path / MODEL_CARD).read_text("utf-8").startswith("---")
        assert "AutoHQQHFModel.from_quantized" in (path / MODEL_CARD).read_text("utf-8")
        for name in ("tokenizer.model", "tokenizer_config.json"):
            assert (path / name).read_bytes() == (tiny_model / name).read_bytes()
    assert not [p for p in exports["8bit-g64"].parent.iterdir() if p.name.startswith(".")]
    bpw = {v: json.loads((p / MANIFEST).read_text())["bits_per_weight"] for v, p in exports.items()}
    assert bpw["2bit-g64"] < bpw["3bit-g64"] < bpw["4bit-g64"] < bpw["8bit-g64"]
    assert bpw["4bit-g128"] < bpw["4bit-g64"]


def test_hqq_loads_and_generates(exports: dict[str, Path]) -> None:
    """hqq's own loader, used as its README says (CPU: PYTORCH backend, float32)."""
    import torch
    from hqq.core.quantize import HQQBackend, HQQLinear
    from hqq.models.hf.base import AutoHQQHFModel
    from transformers import AutoTokenizer

    HQQLinear.set_backend(HQQBackend.PYTORCH)
    for variant in ("4bit-g128", "3bit-g64"):
        path = str(exports[variant])
        model = AutoHQQHFModel.from_quantized(path, compute_dtype=torch.float32, device="cpu")
        tokenizer = AutoTokenizer.from_pretrained(path)
        down = model.model.layers[0].mlp.down_proj
        assert isinstance(down, HQQLinear)
        assert (down.meta["nbits"], down.meta["group_size"]) == (
            int(variant[0]), int(variant.split("-g")[1])
        )  # fmt: skip
        inputs = tokenizer("Warszawa jest", return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 4, variant


def test_runner_matches_the_contract(exports: dict[str, Path], tiny_model: Path) -> None:
    from quantize.transformers_runner import TransformersRunner

    runner = HQQ().open(exports["8bit-g64"])
    reference = TransformersRunner(tiny_model)
    text = "Zażółć gęślą jaźń. The quick brown fox."
    tokens = runner.tokenize(text)
    assert tokens == reference.tokenize(text) and tokens[0] == runner.bos_token_id
    logits = runner.logits(tokens)
    assert logits.shape == (len(tokens), runner.vocab_size) and logits.dtype == np.float32
    # 8 bits: the argmax of nearly every position is the FP16 model's.
    agree = (logits.argmax(-1) == reference.logits(tokens).argmax(-1)).mean()
    assert agree >= 0.9
    assert np.array_equal(runner.token_bytes(), reference.token_bytes())
    assert isinstance(runner.generate("Kraków to", 4), str)


def test_stored_codes_round_the_source_weights(exports: dict[str, Path], tiny_model: Path) -> None:
    """qmodel.pt, dequantized by hqq's formula W = (W_q - zero) * scale, against the source.

    HQQ starts from the grid that spans each group, step (max - min) / (2^bits - 1), and its
    half-quadratic solver moves only the zero; the codes are then round-to-nearest on that
    grid. So: every step is its group's span over the levels, and every code inside the grid is
    the nearest one (within the float16 rounding of the stored scale and zero). A zero moved
    past the group's ends may clip weights there, which no bound of this kind covers.
    """
    source = read_checkpoint(tiny_model)
    for variant, path in exports.items():
        bits, group = int(variant.split("bit")[0]), int(variant.split("-g")[1])
        grids = hqq_grids(path)
        linear = {n.removesuffix(".weight") for n in source if ".layers." in n and "_proj" in n}
        assert set(grids) == linear, variant  # every projection of every block, nothing else
        for name, grid in grids.items():
            original = source[f"{name}.weight"].astype(np.float64)
            assert grid.levels == 2**bits - 1 and grid.storage == "float16"
            groups = original.reshape(-1, group)
            span = groups.max(axis=1) - groups.min(axis=1)
            # hqq 0.2.8's Quantizer.quantize caps the inverse step at 2e4 (float16's range) and
            # uses 1 where a group's span is below 1e-4.
            step = np.where(span <= 1e-4, 1.0, np.maximum(span / grid.levels, 1 / 2e4))
            np.testing.assert_allclose(grid.step.reshape(-1, group)[:, 0], step, rtol=2**-10)
            violations = rounding_violations(grid, original)
            assert violations == {"interior": 0.0, "ends_inside": 0.0}, (variant, name, violations)


def test_runner_is_the_stored_model(exports: dict[str, Path], tiny_model: Path) -> None:
    """hqq's loader computes the function of the weights qmodel.pt stores, not the source's.

    The expected logits are transformers' float64 forward pass of the source with every
    quantized layer replaced by our dequantization; the runner computes in float32, so they may
    differ by float32 rounding (`float32_tolerance`), while the source model's own logits must
    differ by far more (else the comparison could not tell the two apart).
    """
    from quantize.transformers_runner import TransformersRunner

    tokens = TransformersRunner(tiny_model).tokenize("Kraków leży nad Wisłą. " * 4)
    source = reference_logits(tiny_model, tokens)
    for variant in ("4bit-g128", "3bit-g64"):
        path = exports[variant]
        weights = {name: grid.weight for name, grid in hqq_grids(path).items()}
        logits = HQQ().open(path).logits(tokens)
        assert_runs_stored_weights(logits, tiny_model, tokens, weights, source, variant)


def test_kld_follows_the_bits(exports: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    from eval_quant.suite import Settings, load_text, run_suite

    settings = Settings(n_ctx=256, chunks=8, cache_dir=tmp_path / "cache")
    results = run_suite(tiny_model, list(exports.values()), load_text("pl-en"), settings)
    kld = {
        variant: row["statistics"]["kld"]["mean"]
        for variant, row in zip(exports, results["candidates"], strict=True)
    }
    print("HQQ mean KLD:", kld)
    assert 0 <= kld["8bit-g64"] < kld["4bit-g64"] < kld["3bit-g64"] < kld["2bit-g64"]
    assert kld["4bit-g64"] < kld["4bit-g128"]  # smaller groups fit the weights closer


def test_unknown_variant(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownVariantError, match=r"4bit-g32.*valid: 8bit-g64, .*, 2bit-g128"):
        HQQ().export(request(tiny_model, tmp_path, ("4bit-g64", "4bit-g32")))
    assert list(tmp_path.iterdir()) == []


def test_group_size_must_divide_input_width(odd_width_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(QuantizeError, match=r"group size 128 .* width 192 of model\.layers\.0\."):
        HQQ().export(request(odd_width_model, out, ("4bit-g64", "4bit-g128")))
    assert not out.exists()  # refused before the 4bit-g64 that would have worked


def test_existing_artifact_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    existing = tmp_path / f"{tiny_model.name}-HQQ-8bit-g64"
    existing.mkdir()
    (existing / "keep").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        HQQ().export(request(tiny_model, tmp_path, ("2bit-g128", "8bit-g64")))
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing.name]
    assert (existing / "keep").read_text() == "mine"


def test_missing_library(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = hqq_format.util.find_spec
    monkeypatch.setattr(
        hqq_format.util, "find_spec", lambda name, *a: None if name == "hqq" else real(name, *a)
    )
    assert HQQ().missing() == ["hqq"]
    with pytest.raises(MissingDependencyError, match=r"pip install 'bielik-quant\[hqq\]'"):
        HQQ().export(request(tiny_model, tmp_path, ("4bit-g64",)))
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_nothing(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    def half_written(model_dir: Path, variant: Any, out: Path, on_layer: Any = None) -> None:
        (out / "qmodel.pt").write_bytes(b"partial")
        raise RuntimeError("killed")

    monkeypatch.setattr(hqq_format, "quantize_and_save", half_written)
    with pytest.raises(RuntimeError, match="killed"):
        HQQ().export(request(tiny_model, tmp_path, ("4bit-g64",)))
    assert list(tmp_path.iterdir()) == []


def test_cli_export(tiny_model: Path, tmp_path: Path) -> None:
    """`bielik-quant export --format hqq`: the calibration text the CLI passes is not used."""
    from tests.cli import invoke

    args = ["export", str(tiny_model), "--format", "hqq", "--variant", "2bit-g128"]
    result = invoke(*args, "--out", str(tmp_path), "--threads", "1")
    assert result.returncode == 0, result.stderr
    path = tmp_path / f"{tiny_model.name}-HQQ-2bit-g128"
    manifest = json.loads((path / MANIFEST).read_text("utf-8"))
    assert manifest["calibration"] is None and "--format hqq" in manifest["command"]
    assert str(path) in result.stdout
