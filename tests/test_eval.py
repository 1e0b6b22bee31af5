"""`bielik-quant eval` on the tiny model: GGUF quants against the torch reference, and bad input."""

import hashlib
import json
from pathlib import Path

import pytest

from calibration_data import load
from quantize.source import ModelSource
from quantize.windows import DOCUMENT_SEPARATOR
from tests.cli import invoke

CTX = 256
CHUNKS = 64  # 64 windows x 127 scored tokens: 8,128 tokens per candidate
RANKED = ("Q8_0", "Q4_K_M", "Q2_K")
TWINS = ("Q3_K_M", "Q3_K_S", "Q2_K")  # with and without the importance matrix


@pytest.fixture(scope="session")
def plain_exports(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Path]:
    """The same quants as `gguf_exports`, made without an importance matrix."""
    out = tmp_path_factory.mktemp("plain")
    args = ["export", str(tiny_model), "--out", str(out), "--imatrix", "none"]
    result = invoke(*args, *[a for v in TWINS for a in ("--variant", v)])
    assert result.returncode == 0, result.stderr
    return {v: out / f"{tiny_model.name}-GGUF-{v}" for v in TWINS}


@pytest.fixture(scope="session")
def evaluation(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    gguf_exports: dict[str, Path],
    plain_exports: dict[str, Path],
) -> tuple[dict, str]:
    """One `bielik-quant eval` of F16, the ranked quants and the twins: (results, stdout)."""
    tmp = tmp_path_factory.mktemp("eval")
    candidates = [gguf_exports["F16"], *(gguf_exports[v] for v in RANKED + TWINS)]
    candidates += [plain_exports[v] for v in TWINS]
    args = ["eval", "--reference", str(tiny_model), "--out", str(tmp / "results.json")]
    args += ["--ctx", str(CTX), "--chunks", str(CHUNKS), "--cache-dir", str(tmp / "cache")]
    for candidate in dict.fromkeys(candidates):
        args += ["--candidate", str(candidate)]
    result = invoke(*args)
    assert result.returncode == 0, result.stderr
    return json.loads((tmp / "results.json").read_text("utf-8")), result.stdout


def rows(results: dict) -> dict[tuple[str, bool], dict]:
    return {(row["variant"], row["imatrix"]): row for row in results["candidates"]}


def kld(results: dict, variant: str, imatrix: bool = True) -> float:
    return rows(results)[(variant, imatrix)]["statistics"]["kld"]["mean"]


def test_f16_gguf_matches_the_torch_model(evaluation: tuple[dict, str]) -> None:
    stats = rows(evaluation[0])[("F16", False)]["statistics"]
    assert stats["kld"]["mean"] < 1e-5
    assert stats["same_top"]["value"] > 0.999
    assert abs(stats["ln_ppl_ratio"]["value"]) < 1e-3


def test_fewer_bits_lose_more(evaluation: tuple[dict, str]) -> None:
    values = [kld(evaluation[0], variant) for variant in RANKED]
    assert values == sorted(values), dict(zip(RANKED, values, strict=True))
    stats = {v: rows(evaluation[0])[(v, True)]["statistics"] for v in RANKED}
    assert stats["Q8_0"]["same_top"]["value"] > stats["Q2_K"]["same_top"]["value"]
    assert stats["Q8_0"]["rms_p_diff"]["value"] < stats["Q2_K"]["rms_p_diff"]["value"]


def test_the_importance_matrix_helps_at_3_bits_and_below(evaluation: tuple[dict, str]) -> None:
    results = evaluation[0]
    for variant in TWINS:
        with_imatrix, plain = kld(results, variant, True), kld(results, variant, False)
        assert with_imatrix < plain, f"{variant}: imatrix {with_imatrix:.5f}, plain {plain:.5f}"


def test_results_record_what_was_compared(evaluation: tuple[dict, str], tiny_model: Path) -> None:
    results, stdout = evaluation
    text = DOCUMENT_SEPARATOR.join(load("pl-en", split="eval").texts)
    assert results["schema"] == "bielik-quant.eval/1"
    assert results["text"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert results["reference"]["sha256"] == ModelSource.open(tiny_model).sha256
    assert results["reference"]["format"] == "hf"
    assert results["n_ctx"] == CTX and results["chunks"] == CHUNKS
    assert results["tokens"]["scored"] == CHUNKS * (CTX - 1 - CTX // 2)
    assert results["tokens"]["scored_bytes"] > results["tokens"]["scored"]
    assert "llama-cpp-python" in results["versions"]
    assert results["cache"]["logit_error_max"] < 1e-3
    for row in results["candidates"]:
        stats = row["statistics"]
        assert len(row["chunks"]) == CHUNKS and len(row["kld_quantiles"]) == 101
        assert stats["count"] == results["tokens"]["scored"]
        assert stats["kld"]["error_bound"] < 0.01 * stats["kld"]["mean"] + 1e-9
        assert stats["bits_per_byte"] > 0
        assert row["size_bytes"] > 0 and row["bits_per_weight"] > 1
    assert stdout.count("====== KL divergence statistics ======") == len(results["candidates"])


def eval_args(reference: Path, candidate: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["eval", "--reference", str(reference), "--candidate", str(candidate),
            "--out", str(out), "--cache-dir", str(cache), "--ctx", str(CTX), *extra]  # fmt: skip


def test_the_reference_cache_is_reused_and_rebuilt_when_corrupt(
    tmp_path: Path, tiny_model: Path, gguf_exports: dict[str, Path]
) -> None:
    cache = tmp_path / "cache"
    args = eval_args(
        tiny_model, gguf_exports["Q4_K_M"], tmp_path / "a.json", cache, "--chunks", "4"
    )
    first = invoke(*args)
    assert first.returncode == 0, first.stderr
    assert "reference cache built" in first.stderr
    second = invoke(*args, "--overwrite")
    assert "reference cache reused" in second.stderr
    [data] = cache.glob("*.safetensors")
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0x55
    data.write_bytes(bytes(blob))
    third = invoke(*args, "--overwrite")
    assert third.returncode == 0 and "does not match its recorded sha256" in third.stderr
    stats = [json.loads((tmp_path / "a.json").read_text())["candidates"][0]["statistics"]]
    assert stats[0]["kld"]["mean"] > 0
    fourth = invoke(*args, "--overwrite")
    assert "reference cache reused" in fourth.stderr


def test_an_f16_gguf_can_be_the_reference(
    tmp_path: Path, gguf_exports: dict[str, Path], evaluation: tuple[dict, str]
) -> None:
    [f16] = gguf_exports["F16"].glob("*.gguf")
    out = tmp_path / "r.json"
    result = invoke(*eval_args(f16, gguf_exports["Q4_K_M"], out, tmp_path / "c", "--chunks", "8"))
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    assert results["reference"]["format"] == "gguf" and results["reference"]["variant"] == "F16"
    # Against the F16 GGUF the Q4_K_M's KLD is the same as against torch (F16 ≈ torch).
    ours = results["candidates"][0]["statistics"]["kld"]["mean"]
    assert ours == pytest.approx(kld(evaluation[0], "Q4_K_M"), rel=0.5)


def test_a_text_too_short_for_one_window_is_refused(
    tmp_path: Path, tiny_model: Path, gguf_exports: dict[str, Path]
) -> None:
    text = tmp_path / "short.txt"
    text.write_text("Ala ma kota, a kot ma Alę.", "utf-8")
    out = tmp_path / "r.json"
    result = invoke(*eval_args(tiny_model, gguf_exports["Q8_0"], out, tmp_path / "c"),
                    "--text", str(text))  # fmt: skip
    assert result.returncode == 1
    assert f"needs {CTX}" in result.stderr and "tokens" in result.stderr
    assert not out.exists()


def test_a_missing_candidate_fails_before_any_work(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "r.json"
    result = invoke(*eval_args(tiny_model, tmp_path / "nope", out, tmp_path / "c"))
    assert result.returncode == 1 and "does not exist" in result.stderr
    assert not out.exists() and not (tmp_path / "c").exists()


def other_model(tmp_path: Path, vocab: int, split: str) -> Path:
    """A 1-step tiny Mistral with its own tokenizer (trained on another split or vocab size)."""
    from training.tiny_model import TinyMistral, build_tiny_mistral
    from training.tokenizer import train_sentencepiece

    texts = load("pl-en", split=split).texts
    tokenizer = train_sentencepiece(texts, tmp_path / "tokenizer", vocab)
    return build_tiny_mistral(tokenizer, texts, tmp_path / "other", TinyMistral(train_steps=1))


def test_a_candidate_with_another_vocabulary_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    other = other_model(tmp_path, 2048, "train")
    out = tmp_path / "r.json"
    result = invoke(*eval_args(tiny_model, other, out, tmp_path / "c", "--chunks", "2"))
    assert result.returncode == 1
    assert "vocabulary of 2048 tokens, the reference has 4096" in result.stderr
    assert not out.exists()


def test_a_candidate_with_another_tokenizer_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    other = other_model(tmp_path, 4096, "calib")
    out = tmp_path / "r.json"
    result = invoke(*eval_args(tiny_model, other, out, tmp_path / "c", "--chunks", "2"))
    assert result.returncode == 1 and "tokenizes the text differently" in result.stderr
    assert not out.exists()


def test_report_of_an_evaluation(tmp_path: Path, evaluation: tuple[dict, str]) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(evaluation[0]), "utf-8")
    result = invoke("report", str(results), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "report" / "report.md").read_text("utf-8")
    for row in evaluation[0]["candidates"]:
        kld_text = f"| {row['variant']} | {'yes' if row['imatrix'] else 'no'} |"
        assert kld_text in markdown
    html = (tmp_path / "report" / "report.html").read_text("utf-8")
    assert html.count("data:image/png;base64,") == 3


def test_report_refuses_results_of_another_text(
    tmp_path: Path, evaluation: tuple[dict, str]
) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(evaluation[0]), "utf-8")
    other = {**evaluation[0], "text": {**evaluation[0]["text"], "sha256": "0" * 64}}
    second.write_text(json.dumps(other), "utf-8")
    out = tmp_path / "report"
    result = invoke("report", str(first), str(second), "--out", str(out))
    assert result.returncode == 1 and str(second) in result.stderr
    assert not (out / "report.html").exists()
