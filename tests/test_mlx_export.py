"""MLX: mlx-lm's converter from our checkpoint, its own loader, and our dense-forward runner."""

import json
import shutil
from importlib import import_module, util
from pathlib import Path

import numpy as np
import pytest

from quantize.errors import (
    MissingDependencyError,
    OutputExistsError,
    QuantizeError,
    UnknownVariantError,
)
from quantize.mlx import format as mlx_format
from quantize.mlx.format import MLX, MlxVariant
from quantize.registry import ExportRequest
from quantize.source import ModelSource
from tests.dequant import (
    PRODUCTS,
    UNIT_ROUNDOFF,
    WIDTH,
    assert_runs_stored_weights,
    float32_tolerance,
    group_range_bound,
    mlx_grids,
    read_checkpoint,
    reference_logits,
    rounding_violations,
)

# Bits at one group size (the KLD ladder), group sizes at one width, a mixed recipe, unquantized.
LADDER = ("2bit-g64", "3bit-g64", "4bit-g64", "6bit-g64", "8bit-g64")
VARIANTS = (*LADDER, "4bit-g32", "4bit-g128", "mixed_3_6", "bf16")
QUANTIZED = tuple(v for v in VARIANTS if v != "bf16")


def request(model: Path, out: Path, *variants: str, overwrite: bool = False) -> ExportRequest:
    return ExportRequest(
        source=ModelSource.open(model), out_root=out, variants=variants, overwrite=overwrite
    )


@pytest.fixture(scope="module")
def mlx_exports(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("mlx")
    artifacts = MLX().export(request(tiny_model, out, *VARIANTS))
    return {artifact.manifest["variant"]: artifact.path for artifact in artifacts}


def test_variant_names() -> None:
    names = MLX().variants()
    assert {"2bit-g32", "4bit-g64", "8bit-g128", "mixed_3_6", "mixed_2_6", "bf16"} <= set(names)
    variant = MlxVariant.parse("3bit-g128")
    assert (variant.bits, variant.group_size, variant.recipe, variant.quantized) == (
        3, 128, None, True)  # fmt: skip
    assert MlxVariant.parse("mixed_4_6").group_size == 64
    for bad in ("4bit", "4bit-g16", "7bit-g64", "Q4_K_M", "mixed_5_6"):
        with pytest.raises(UnknownVariantError, match=r"available: 2bit-g32, .*mixed_3_6"):
            MlxVariant.parse(bad)


def test_installed_mlx_lm_offers_every_recipe() -> None:
    from mlx_lm.convert import QUANT_RECIPES

    assert set(mlx_format.RECIPES) <= set(QUANT_RECIPES)


def test_manifest_counts_what_is_stored(mlx_exports: dict[str, Path], tiny_model: Path) -> None:
    from mlx_lm.utils import compute_bits_per_weight, load

    source = ModelSource.open(tiny_model)
    bits_per_weight = {}
    for variant, path in mlx_exports.items():
        manifest = json.loads((path / "bielik-quant.json").read_text("utf-8"))
        assert manifest["format"] == "mlx" and manifest["variant"] == variant
        assert manifest["n_parameters"] == source.n_parameters
        assert manifest["source"]["sha256"] == source.sha256
        assert manifest["calibration"] is None
        assert {"mlx", "mlx-lm", "python"} <= set(manifest["versions"])
        assert manifest["size_bytes"] == (path / "model.safetensors").stat().st_size
        assert (path / "README.md").read_text("utf-8").count("mlx_lm.generate --model") == 1
        bits_per_weight[variant] = manifest["bits_per_weight"]
    # Our count from the files is mlx-lm's own count from the loaded model.
    model, _ = load(str(mlx_exports["mixed_3_6"]))
    assert bits_per_weight["mixed_3_6"] == pytest.approx(compute_bits_per_weight(model), abs=1e-3)
    # 4 bits + a bf16 scale and bias per 64 weights, the norms at 16 bits.
    assert bits_per_weight["4bit-g64"] == pytest.approx(4.5, abs=0.01)
    assert bits_per_weight["bf16"] == 16.0
    ladder = [bits_per_weight[v] for v in LADDER]
    assert ladder == sorted(ladder)
    assert bits_per_weight["4bit-g32"] > bits_per_weight["4bit-g64"] > bits_per_weight["4bit-g128"]
    mixed = json.loads((mlx_exports["mixed_3_6"] / "bielik-quant.json").read_text())["mlx"]
    assert mixed["recipe"] == "mixed_3_6" and set(mixed["layers_by_bits"]) == {"3", "6"}
    assert not list(mlx_exports["bf16"].parent.glob(".*")), "staging directories left behind"


def test_mlx_lm_loads_and_generates(mlx_exports: dict[str, Path]) -> None:
    import mlx.nn as nn
    from mlx_lm import generate, load

    model, tokenizer = load(str(mlx_exports["mixed_3_6"]))
    assert isinstance(model.lm_head, nn.QuantizedLinear) and model.lm_head.bits == 6
    assert model.model.layers[0].mlp.up_proj.bits == 3
    text = generate(model, tokenizer, "Dzień dobry, ", max_tokens=4)
    assert isinstance(text, str) and text


def test_runner_text_matches_the_source(mlx_exports: dict[str, Path], tiny_model: Path) -> None:
    from quantize.transformers_runner import HFText

    runner = MLX().open(mlx_exports["4bit-g64"])
    source = HFText(tiny_model)
    text = "Zażółć gęślą jaźń. Dzień dobry!\n\nHello  world 123 ✓"
    assert runner.tokenize(text) == source.tokenize(text)
    assert runner.tokenize(text)[0] == runner.bos_token_id == source.bos_token_id
    assert runner.vocab_size == 4096
    assert np.array_equal(runner.token_bytes(), source.token_bytes(runner.vocab_size))
    assert isinstance(runner.generate("Dzień dobry, ", 4), str)


def test_dense_runner_is_the_quantized_model(mlx_exports: dict[str, Path]) -> None:
    """Dequantized weights give the logits of mlx's own quantized kernels (run in float32)."""
    import mlx.core as mx
    from mlx_lm import load

    path = mlx_exports["mixed_3_6"]
    runner = MLX().open(path)
    assert runner.n_dequantized == 4 * 7 + 2  # every linear layer, the embedding, lm_head
    tokens = runner.tokenize("Kraków leży nad Wisłą. " * 4)
    model, _ = load(str(path))
    model.set_dtype(mx.float32)  # scales and biases: the quantized kernels then run in float32
    expected = np.array(model(mx.array([tokens]))[0])
    logits = runner.logits(tokens)
    assert logits.dtype == np.float32 and logits.shape == (len(tokens), runner.vocab_size)
    tolerance = float32_tolerance(expected, PRODUCTS, WIDTH)  # two float32 evaluations
    assert np.abs(logits - expected).max() <= 2 * tolerance


def test_stored_codes_round_the_source_weights(
    mlx_exports: dict[str, Path], tiny_model: Path
) -> None:
    """model.safetensors, dequantized by MLX's affine formula w = scale * q + bias, vs the source.

    mx.quantize (affine) is round-to-nearest per group on a grid with one end exactly at the
    group's extreme of larger magnitude and the other within a step of the opposite extreme:
    every code inside the grid is the nearest one, and no weight is further than one step of
    (max - min) / (2^bits - 1) from its value (half a step inside, up to one where the far end
    clips). Both within the bfloat16 rounding of the stored scale and bias.
    """
    source = read_checkpoint(tiny_model)
    matrices = {name.removesuffix(".weight") for name, w in source.items() if w.ndim == 2}
    for variant in QUANTIZED:
        grids = mlx_grids(mlx_exports[variant])
        assert set(grids) == matrices, variant  # every matrix, embeddings and lm_head included
        for name, grid in grids.items():
            original = source[f"{name}.weight"]
            assert grid.storage == "bfloat16"
            violations = rounding_violations(grid, original)
            assert violations == {"interior": 0.0, "ends_inside": 0.0}, (variant, name, violations)
            group = MlxVariant.parse(variant).group_size
            # bfloat16 scales move the top of the grid by up to levels * u steps.
            slack = 1 + (grid.levels + 1) * UNIT_ROUNDOFF["bfloat16"]
            assert group_range_bound(grid, original, group).max() <= slack, (variant, name)
    # Unquantized: the source's weights, bit for bit.
    converted = read_checkpoint(mlx_exports["bf16"])
    for name, weight in source.items():
        assert np.array_equal(converted[name], weight), name


def test_runner_is_the_stored_model(mlx_exports: dict[str, Path], tiny_model: Path) -> None:
    """Our dense MLX runner computes the function of the stored weights, not the source's.

    The expected logits are transformers' float64 forward pass of the source with every matrix
    replaced by our dequantization; the runner computes in float32 (float32_tolerance), while
    the source model's own logits must differ by far more.
    """
    from quantize.transformers_runner import HFText

    tokens = HFText(tiny_model).tokenize("Kraków leży nad Wisłą. " * 4)
    source = reference_logits(tiny_model, tokens)
    for variant in ("4bit-g64", "mixed_3_6"):
        path = mlx_exports[variant]
        weights = {name: grid.weight for name, grid in mlx_grids(path).items()}
        logits = MLX().open(path).logits(tokens)
        assert_runs_stored_weights(logits, tiny_model, tokens, weights, source, variant)


def test_kld_falls_with_more_bits(
    mlx_exports: dict[str, Path], tiny_model: Path, tmp_path: Path
) -> None:
    from eval_quant.suite import Settings, load_text, run_suite

    variants = [*LADDER, "4bit-g32", "4bit-g128", "mixed_3_6", "bf16"]
    results = run_suite(
        tiny_model,
        [mlx_exports[v] for v in variants],
        load_text("pl-en"),
        Settings(n_ctx=256, chunks=8, cache_dir=tmp_path / "cache"),
    )
    kld = {
        v: row["statistics"]["kld"]["mean"]
        for v, row in zip(variants, results["candidates"], strict=True)
    }
    print({v: f"{value:.6f}" for v, value in kld.items()})
    # Unquantized below every quantized variant; fewer bits, larger groups: more loss.
    ladder = [kld[v] for v in LADDER]
    assert ladder == sorted(ladder, reverse=True) and kld["bf16"] < kld["8bit-g64"]
    assert kld["4bit-g32"] < kld["4bit-g64"] < kld["4bit-g128"]
    assert kld["mixed_3_6"] < kld["3bit-g64"]


def test_unknown_variant_fails_before_any_work(tmp_path: Path, tiny_model: Path) -> None:
    with pytest.raises(UnknownVariantError, match="4bit-g64"):
        MLX().export(request(tiny_model, tmp_path / "out", "4bit-g64", "Q4_K_M"))
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A one-layer Mistral whose MLP is 96 wide: 32 divides it, 64 and 128 do not."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    out = tmp_path_factory.mktemp("odd") / "odd-mistral"
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=4096, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
    )  # fmt: skip
    MistralForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        if (tiny_model / name).is_file():
            shutil.copy2(tiny_model / name, out / name)
    return out


def test_group_size_must_divide_every_input_width(tmp_path: Path, odd_model: Path) -> None:
    with pytest.raises(QuantizeError, match=r"group size 64 .* width 96 of .*down_proj\.weight"):
        MLX().export(request(odd_model, tmp_path, "4bit-g32", "4bit-g64"))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(QuantizeError, match="down_proj"):
        MLX().export(request(odd_model, tmp_path, "mixed_4_6"))  # recipes quantize at g64
    [artifact] = MLX().export(request(odd_model, tmp_path, "4bit-g32"))
    assert artifact.manifest["mlx"]["layers_by_bits"] == {"4": 9}  # no layer left unquantized


def test_existing_artifact_is_kept_unless_overwrite(tmp_path: Path, tiny_model: Path) -> None:
    [first] = MLX().export(request(tiny_model, tmp_path, "8bit-g128"))
    created = first.manifest["created_at"]
    with pytest.raises(OutputExistsError, match="--overwrite"):
        MLX().export(request(tiny_model, tmp_path, "4bit-g128", "8bit-g128"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.path.name]
    assert json.loads((first.path / "bielik-quant.json").read_text())["created_at"] == created
    [again] = MLX().export(request(tiny_model, tmp_path, "8bit-g128", overwrite=True))
    assert again.path == first.path and (again.path / "bielik-quant.json").is_file()


def test_a_failed_conversion_leaves_nothing(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `mlx_lm.convert` as an attribute is the function mlx_lm re-exports; patch the module.
    convert_module = import_module("mlx_lm.convert")

    def broken(hf_path: str, mlx_path: str, **kwargs: object) -> None:
        Path(mlx_path).mkdir()
        (Path(mlx_path) / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed")

    monkeypatch.setattr(convert_module, "convert", broken)
    with pytest.raises(RuntimeError, match="killed"):
        MLX().export(request(tiny_model, tmp_path, "4bit-g64"))
    assert list(tmp_path.iterdir()) == []


def test_missing_library_is_named(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = util.find_spec
    monkeypatch.setattr(
        mlx_format.util, "find_spec", lambda name: None if name == "mlx_lm" else real(name)
    )
    assert MLX().missing() == ["mlx_lm"]
    with pytest.raises(MissingDependencyError, match=r"pip install 'bielik-quant\[mlx\]'"):
        MLX().export(request(tiny_model, tmp_path, "4bit-g64"))
    with pytest.raises(MissingDependencyError, match="mlx_lm"):
        MLX().open(tmp_path)
    assert list(tmp_path.iterdir()) == []
