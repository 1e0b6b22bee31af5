"""`bielik-quant tokenizer-stats`, checked against a brute-force count."""

import json
from pathlib import Path

import sentencepiece

from calibration_data import load
from tests.cli import run_cli


def brute_force(model: Path, language: str) -> dict[str, int]:
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model))
    texts = load("pl-en", split="eval", language=language).texts
    return {
        "documents": len(texts),
        "tokens": sum(len(processor.encode(text)) for text in texts),
        "characters": sum(len(text) for text in texts),
        "words": sum(len(text.split()) for text in texts),
    }


def test_stats_equal_a_brute_force_count(tiny_tokenizer: Path, tmp_path: Path) -> None:
    out = tmp_path / "stats.json"
    model = tiny_tokenizer / "tokenizer.model"
    result = run_cli(
        "tokenizer-stats", "-t", str(tiny_tokenizer), "-t", str(model),
        "--split", "eval", "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Tokens/word" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(row["tokenizer"], row["language"]) for row in rows] == [
        (str(tiny_tokenizer), "pl"),
        (str(tiny_tokenizer), "en"),
        (str(model), "pl"),
        (str(model), "en"),
    ]
    for row in rows:
        expected = brute_force(model, row["language"])
        assert {key: row[key] for key in expected} == expected
        assert row["chars_per_token"] == expected["characters"] / expected["tokens"]
        assert row["tokens_per_word"] == expected["tokens"] / expected["words"]
    # The tokenizer was trained on mostly Polish text, so Polish words need fewer pieces.
    polish, english = rows[0], rows[1]
    assert polish["chars_per_token"] > 2.0 and english["chars_per_token"] > 1.5


def test_user_file_forms_one_group(tiny_tokenizer: Path, tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("Ala ma kota, a kot ma Alę.", "utf-8")
    out = tmp_path / "stats.json"
    result = run_cli(
        "tokenizer-stats", "-t", str(tiny_tokenizer), "--text", str(text), "--json", str(out)
    )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["language"], row["documents"], row["words"]) == ("all", 1, 7)


def test_bad_tokenizer_path_is_one_clear_line(tmp_path: Path) -> None:
    result = run_cli("tokenizer-stats", "-t", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error:")
    assert "expected a tokenizer directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_split_is_one_clear_line(tiny_tokenizer: Path) -> None:
    result = run_cli("tokenizer-stats", "-t", str(tiny_tokenizer), "--split", "dev")
    assert result.returncode == 1
    assert "unknown split 'dev'; valid: train, calib, eval" in result.stderr
    assert "Traceback" not in result.stderr


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("bielik-quant ")


def test_train_tokenizer_command(tmp_path: Path) -> None:
    text = tmp_path / "t.jsonl"
    sentences = [
        f"Zdanie numer {n} o rzece Wiśle i górach Tatrach, {n * 7} km." for n in range(200)
    ]
    text.write_text("\n".join(json.dumps({"text": s}, ensure_ascii=False) for s in sentences))
    out = tmp_path / "tok"
    result = run_cli(
        "train-tokenizer", "--out", str(out), "--text", str(text), "--vocab-size", "320"
    )
    assert result.returncode == 0, result.stderr
    processor = sentencepiece.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert processor.vocab_size() == 320
    assert processor.decode(processor.encode("Wiśle i Tatrach")) == "Wiśle i Tatrach"
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()

    again = run_cli("train-tokenizer", "--out", str(out), "--text", str(text))
    assert again.returncode == 1
    assert "already exists" in again.stderr

    too_big = run_cli("train-tokenizer", "--out", str(tmp_path / "t2"), "--text", str(text))
    assert too_big.returncode == 1
    assert "Vocabulary size too high (4096)" in too_big.stderr
    assert "Traceback" not in too_big.stderr
