"""`calibration_data.load`: the built-in corpus and a user's own .txt/.jsonl/.parquet files."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from calibration_data import CalibrationError, load


def test_builtin_filters() -> None:
    calib = load("pl-en", split="calib", language="pl", domain="food")
    assert calib.name == "pl-en:calib:pl:food"
    assert calib.documents
    assert {(d.split, d.language, d.domain) for d in calib.documents} == {("calib", "pl", "food")}
    assert all(doc.text.strip() for doc in calib.documents)


def test_hash_depends_on_content_and_is_stable() -> None:
    assert load("pl-en", split="eval").sha256 == load("pl-en", split="eval").sha256
    assert load("pl-en", split="eval").sha256 != load("pl-en", split="calib").sha256


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "test"}, "unknown split 'test'; valid: train, calib, eval"),
        ({"language": "de"}, "unknown language 'de'"),
        ({"domain": "poetry"}, "unknown domain 'poetry'"),
    ],
)
def test_builtin_rejects_unknown_selections(kwargs: dict, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        load("pl-en", **kwargs)


def test_txt_is_one_document(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("Zażółć gęślą jaźń.\n\nDruga linia.", "utf-8")
    calibration = load(path)
    assert calibration.texts == ["Zażółć gęślą jaźń.\n\nDruga linia."]
    assert calibration.name == str(path)


def test_jsonl_reads_text_field_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    lines = [json.dumps({"text": "pierwszy", "id": 1}), "", json.dumps({"text": "drugi"})]
    path.write_text("\n".join(lines) + "\n", "utf-8")
    assert load(path).texts == ["pierwszy", "drugi"]
    path.write_text(json.dumps({"body": "x"}) + "\n", "utf-8")
    assert load(path, text_field="body").texts == ["x"]


def test_parquet_reads_text_column(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["jeden", "dwa", ""], "n": [1, 2, 3]}), path)
    assert load(path).texts == ["jeden", "dwa"]  # empty documents are dropped


def write_bad(tmp_path: Path, name: str, content: bytes | None) -> Path:
    path = tmp_path / name
    if name.endswith(".parquet") and content is None:
        pq.write_table(pa.table({"body": ["x"]}), path)
    elif content is not None:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "neither a built-in text set"),
        ("latin2.txt", "zażółć".encode("iso-8859-2"), r"not valid UTF-8 \(byte 2\)"),
        ("empty.txt", b"  \n\n", "contains no text"),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": \n', r"bad.jsonl:2: invalid JSON"),
        ("field.jsonl", b'{"content": "x"}\n', "expected an object with a string field 'text'"),
        ("list.jsonl", b'["text"]\n', "expected an object"),
        ("column.parquet", None, "no column 'text' \\(columns: body\\)"),
        ("broken.parquet", b"PAR1 not really", "not a readable Parquet file"),
        ("table.csv", b"text\nx\n", "unsupported file type '.csv'"),
    ],
)
def test_bad_files_give_clear_errors(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    path = write_bad(tmp_path, name, content)
    with pytest.raises(CalibrationError, match=message):
        load(path)


def test_file_sources_take_no_corpus_filters(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("tekst", "utf-8")
    with pytest.raises(CalibrationError, match="built-in corpus only"):
        load(path, split="eval")
