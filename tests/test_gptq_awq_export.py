"""GPTQ and AWQ artifacts of the tiny model: made by GPTQModel, loaded by transformers unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from calibration_data import load
from quantize.artifact import MANIFEST, MODEL_CARD
from quantize.errors import (
    MissingDependencyError,
    OutputExistsError,
    QuantizeError,
    UnknownVariantError,
)
from quantize.gptqmodel import format as gptqmodel_format
from quantize.gptqmodel.format import AWQ, GPTQ, Variant
from quantize.registry import ExportRequest
from quantize.source import ModelSource
from tests.dequant import (
    assert_runs_stored_weights,
    awq_weight,
    gptq_weight,
    mean_kld,
    read_checkpoint,
    reference_logits,
    round_to_nearest,
    unpack_bits,
)

# Few short windows: enough for GPTQ's Hessians on a 256-wide model, and seconds per variant.
SAMPLES, SAMPLE_TOKENS = 16, 128
GPTQ_EXPORTED = ("w8g128", "w4g128", "w3g128", "w4g128-actorder")


def request(model: Path, out: Path, variants: tuple[str, ...], **kwargs: Any) -> ExportRequest:
    return ExportRequest(
        source=ModelSource.open(model),
        out_root=out,
        variants=variants,
        calibration=kwargs.pop("calibration", load("pl-en", split="calib")),
        calibration_samples=SAMPLES,
        n_ctx=SAMPLE_TOKENS,
        **kwargs,
    )


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gptq-awq")
    made = GPTQ().export(request(tiny_model, out, GPTQ_EXPORTED))
    made += AWQ().export(request(tiny_model, out, ("w4g128",)))
    return {f"{a.manifest['format']}:{a.manifest['variant']}": a.path for a in made}


def test_artifacts_follow_the_library_conventions(
    exports: dict[str, Path], tiny_model: Path
) -> None:
    calib = load("pl-en", split="calib")
    for key, path in exports.items():
        fmt, variant = key.split(":")
        assert path.name == f"{tiny_model.name}-{fmt.upper()}-{variant}"
        manifest = json.loads((path / MANIFEST).read_text("utf-8"))
        assert manifest["format"] == fmt and manifest["variant"] == variant
        assert manifest["calibration"]["sha256"] == calib.sha256
        assert manifest["source"]["sha256"] == ModelSource.open(tiny_model).sha256
        assert "gptqmodel" in manifest["versions"]
        assert (path / MODEL_CARD).read_text("utf-8").startswith("---")
        # The source's own tokenizer, SentencePiece model included, byte for byte.
        for name in ("tokenizer.model", "tokenizer_config.json"):
            assert (path / name).read_bytes() == (tiny_model / name).read_bytes()
        config = json.loads((path / "config.json").read_text("utf-8"))["quantization_config"]
        settings = manifest["quantization"]
        assert config["quant_method"] == fmt
        assert (config["bits"], config["group_size"]) == (settings["bits"], 128)
        if fmt == "awq":
            assert (config["version"], config["zero_point"]) == ("gemm", True)
        else:
            assert config["desc_act"] == variant.endswith("actorder")
        # Embeddings and lm_head stay bf16 in a model this small, so bits per weight sit well
        # above the nominal bits, but still follow them.
        assert settings["bits"] < manifest["bits_per_weight"] < 16
    bpw = {k: json.loads((p / MANIFEST).read_text())["bits_per_weight"] for k, p in exports.items()}
    assert bpw["gptq:w3g128"] < bpw["gptq:w4g128"] < bpw["gptq:w8g128"]


def test_transformers_loads_and_generates(exports: dict[str, Path]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for key in ("gptq:w4g128", "gptq:w4g128-actorder", "awq:w4g128"):
        path = exports[key]
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)  # no arguments: as a user would
        q_proj = model.model.layers[0].self_attn.q_proj
        assert not isinstance(q_proj, torch.nn.Linear), key  # a packed quantized layer
        inputs = tokenizer("Warszawa jest", return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 4, key


def test_runner_tokenizes_like_the_source(exports: dict[str, Path], tiny_model: Path) -> None:
    from quantize.transformers_runner import TransformersRunner

    runner = GPTQ().open(exports["gptq:w4g128"])
    reference = TransformersRunner(tiny_model)
    text = "Zażółć gęślą jaźń. The quick brown fox."
    assert runner.tokenize(text) == reference.tokenize(text)
    assert runner.tokenize(text)[0] == runner.bos_token_id
    assert runner.vocab_size == reference.vocab_size
    logits = runner.logits(runner.tokenize(text))
    assert logits.shape == (len(runner.tokenize(text)), runner.vocab_size)
    assert str(logits.dtype) == "float32"
    assert isinstance(runner.generate("Warszawa jest", 3), str)


def dequantized(path: Path) -> dict[str, np.ndarray]:
    """The model an artifact stores: packed layers dequantized by the format's formula, the rest
    as stored (AWQ folds its input scales into the norms and projections before each layer).

    Both formats' kernels form W in float16, the dtype of the scales, so W is rounded to it.
    """
    settings = json.loads((path / "config.json").read_text("utf-8"))["quantization_config"]
    bits, group = settings["bits"], settings["group_size"]
    tensors = read_checkpoint(path)
    modules = [name.removesuffix(".qweight") for name in tensors if name.endswith(".qweight")]
    if settings["quant_method"] == "awq":
        packed = {m: awq_weight(tensors, m, bits, group) for m in modules}
    else:
        packed = {m: gptq_weight(tensors, m, bits) for m in modules}
    model = {n.removesuffix(".weight"): w for n, w in tensors.items() if n.endswith(".weight")}
    model.update({m: w.astype(np.float16) for m, w in packed.items()})
    return model


def test_stored_layers_are_the_recipe(exports: dict[str, Path], tiny_model: Path) -> None:
    """The packed tensors hold what each recipe promises, read without the library.

    GPTQ here is symmetric: every zero is the grid's middle, 2^(bits-1). Without act-order the
    groups are consecutive input rows; with it, g_idx assigns each row a group of exactly
    group_size rows. Every projection of every block is quantized, and nothing else.
    """
    source = read_checkpoint(tiny_model)
    linear = {n.removesuffix(".weight") for n in source if ".layers." in n and "_proj" in n}
    for key, path in exports.items():
        fmt, variant = key.split(":")
        tensors = read_checkpoint(path)
        packed = {name.removesuffix(".qweight") for name in tensors if name.endswith(".qweight")}
        assert packed == linear, key
        for name, weight in dequantized(path).items():
            assert weight.shape == source[f"{name}.weight"].shape, (key, name)
        if fmt != "gptq":
            continue
        bits = json.loads((path / MANIFEST).read_text())["quantization"]["bits"]
        for name in linear:
            columns = tensors[f"{name}.scales"].shape[1]
            zeros = unpack_bits(tensors[f"{name}.qzeros"], bits, columns) + 1
            assert (zeros == 2 ** (bits - 1)).all(), (key, name)
            g_idx = tensors[f"{name}.g_idx"]
            if variant.endswith("actorder"):
                assert (np.bincount(g_idx) == 128).all(), (key, name)
            else:
                assert np.array_equal(g_idx, np.arange(len(g_idx)) // 128), (key, name)


def test_transformers_runs_the_stored_weights(exports: dict[str, Path], tiny_model: Path) -> None:
    """The loaded artifact computes the function of the weights its files store.

    The expected logits are transformers' float64 forward pass of `dequantized(path)`; the
    runner computes in float32 (float32_tolerance), while the source model's own logits must
    differ by far more.
    """
    from quantize.transformers_runner import TransformersRunner

    tokens = TransformersRunner(tiny_model).tokenize("Kraków leży nad Wisłą. " * 4)
    source = reference_logits(tiny_model, tokens)
    for key in ("gptq:w4g128", "gptq:w3g128", "gptq:w4g128-actorder", "awq:w4g128"):
        path = exports[key]
        logits = (AWQ() if key.startswith("awq") else GPTQ()).open(path).logits(tokens)
        assert_runs_stored_weights(logits, tiny_model, tokens, dequantized(path), source, key)


def test_calibration_beats_round_to_nearest(exports: dict[str, Path], tiny_model: Path) -> None:
    """GPTQ and AWQ spend the calibration text on where rounding errors cost least; on the same
    bits and groups, plain round-to-nearest of the source must lose more on held-out text.

    The peer: GPTQ's symmetric grid, AWQ's grid spanning each group, every projection rounded
    to its nearest code. KLD against the source over the eval split (not the calibration text).
    """
    from eval_quant.suite import load_text
    from quantize.transformers_runner import HFText

    ids = HFText(tiny_model).tokenize(load_text("pl-en").text)
    windows = [ids[start : start + 256] for start in range(0, 6 * 256, 256)]
    source = read_checkpoint(tiny_model)
    linear = [n.removesuffix(".weight") for n in source if ".layers." in n and "_proj" in n]
    for key, bits, symmetric in (("gptq:w4g128", 4, True), ("gptq:w3g128", 3, True),
                                 ("awq:w4g128", 4, False)):  # fmt: skip
        peer = {m: round_to_nearest(source[f"{m}.weight"], bits, 128, symmetric) for m in linear}
        calibrated = mean_kld(tiny_model, windows, dequantized(exports[key]))
        assert calibrated < mean_kld(tiny_model, windows, peer), key


def test_kld_follows_the_bits(exports: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    from eval_quant.suite import Settings, load_text, run_suite

    keys = ["gptq:w8g128", "gptq:w4g128", "gptq:w3g128", "gptq:w4g128-actorder", "awq:w4g128"]
    settings = Settings(n_ctx=256, chunks=8, cache_dir=tmp_path / "cache")
    results = run_suite(tiny_model, [exports[k] for k in keys], load_text("pl-en"), settings)
    kld = {
        key: candidate["statistics"]["kld"]["mean"]
        for key, candidate in zip(keys, results["candidates"], strict=True)
    }
    # Fewer bits, a coarser grid, more loss: every 4-bit recipe lies between 8 and 3 bits.
    for four_bits in ("gptq:w4g128", "gptq:w4g128-actorder", "awq:w4g128"):
        assert kld["gptq:w8g128"] < kld[four_bits] < kld["gptq:w3g128"], (four_bits, kld)


# Error paths: each is refused before any work and leaves no artifact directory behind.


def test_unknown_variant(tiny_model: Path, tmp_path: Path) -> None:
    for fmt, valid in ((GPTQ(), "w4g128-actorder"), (AWQ(), "w4g128")):
        with pytest.raises(UnknownVariantError, match=valid):
            fmt.export(request(tiny_model, tmp_path, ("w4g128", "w5g64")))
    assert list(tmp_path.iterdir()) == []


def test_group_size_that_does_not_divide_a_layer(tiny_model: Path, tmp_path: Path) -> None:

    class OddGroups(GPTQ):
        _variants = (Variant("w4g96", 4, 96),)  # 96 divides the FFN's 768 but not hidden 256

    refused = r"group size 96 .* width 256 of model\.layers\.\d+\.\S+_proj\.weight"
    with pytest.raises(QuantizeError, match=refused):
        OddGroups().export(request(tiny_model, tmp_path, ("w4g96",)))
    assert list(tmp_path.iterdir()) == []


def test_existing_artifact_is_kept(tiny_model: Path, tmp_path: Path) -> None:
    existing = tmp_path / f"{tiny_model.name}-AWQ-w4g128"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        AWQ().export(request(tiny_model, tmp_path, ("w4g128",)))
    assert [p.name for p in tmp_path.iterdir()] == [existing.name]
    assert (existing / "keep.txt").read_text() == "mine"


def test_missing_library(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = gptqmodel_format.util.find_spec
    monkeypatch.setattr(
        gptqmodel_format.util,
        "find_spec",
        lambda name, *args: None if name == "gptqmodel" else real(name, *args),
    )
    for fmt in (GPTQ(), AWQ()):
        assert fmt.missing() == ["gptqmodel"]
        with pytest.raises(MissingDependencyError, match=rf"bielik-quant\[{fmt.extra}\]"):
            fmt.export(request(tiny_model, tmp_path, ("w4g128",)))
    assert list(tmp_path.iterdir()) == []


def test_calibration_is_required(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="calibration"):
        GPTQ().export(request(tiny_model, tmp_path, ("w4g128",), calibration=None))
    assert list(tmp_path.iterdir()) == []
