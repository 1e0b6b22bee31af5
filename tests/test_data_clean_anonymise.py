"""Cleanup rules and anonymisation patterns, each with Polish positive and negative examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from calibration_data import load_records
from tests.cli import invoke
from training.data.anonymise import anonymise, iban_valid, pesel_valid
from training.data.clean import RULE_NAMES, clean, select_rules

# Cleanup ---------------------------------------------------------------------------------------


def only(name: str) -> tuple:
    return select_rules([name])


def test_mojibake_round_trip() -> None:
    original = "Zażółć gęślą jaźń. Źdźbło, łódź i pięć żółwi."
    broken = original.encode("utf-8").decode("cp1252")  # UTF-8 read as Windows-1252
    assert broken.startswith("Za\u00c5\u00bc\u00c3\u00b3\u00c5\u201a")  # the example
    fixed, counts = clean(broken, only("encoding"))
    assert fixed == original and counts == {"encoding": 1}
    typography = "Powiedział: \u201eTak\u201d \u2013 i wyszedł\u2026"
    assert clean(typography, only("encoding")) == (typography, {})  # clean text is left alone


def test_unicode_and_control_characters() -> None:
    decomposed = "z\u0307ółw"  # z + combining dot above
    assert clean(decomposed, only("unicode"))[0] == "żółw"
    text, counts = clean("Ala\x00 ma\u200b kota\x1b.\tTab\nzostaje", only("control"))
    assert text == "Ala ma kota.\tTab\nzostaje" and counts == {"control": 3}


def test_html_tags_and_entities() -> None:
    text, counts = clean(
        '<p class="x">Kraków &amp; Wisła&nbsp;to&#8211;miasto</p><br/>', only("html")
    )
    assert text.strip() == "Kraków & Wisła to\u2013miasto" and counts["html"] == 6
    prose = "Wynik: 3 < 5 oraz 7 > 2, a x&y to nie encja."
    assert clean(prose, only("html")) == (prose, {})


@pytest.mark.parametrize(
    "line",
    ["Strona główna | O nas | Oferta | Kontakt", "© 2024 Firma sp. z o.o.",
     "Ta strona używa plików cookies. Akceptuję", "Czytaj więcej »",
     "Wszelkie prawa zastrzeżone."],
)  # fmt: skip
def test_boilerplate_lines_go(line: str) -> None:
    text, counts = clean(f"Pierwsze zdanie artykułu.\n{line}\nDrugie zdanie.", only("boilerplate"))
    assert line not in text and counts["boilerplate"] == 1
    assert "Pierwsze zdanie artykułu." in text and "Drugie zdanie." in text


@pytest.mark.parametrize(
    "line",
    ["Kontakt z naturą leczy, pisał autor.", "Cena 12,50 zł | 15% rabatu",
     "Menu w restauracji było krótkie, ale dobre.", "Wynik 3 | 4 to remis."],
)  # fmt: skip
def test_prose_that_looks_like_boilerplate_stays(line: str) -> None:
    assert clean(line, only("boilerplate")) == (line, {})


def test_repeated_lines_and_whitespace() -> None:
    header = "Gazeta Codzienna — wydanie regionalne, strona"
    text, counts = clean(f"{header}\nAkapit pierwszy.\n{header}\nAkapit drugi.", only("repeated"))
    assert text.count(header) == 1 and counts["repeated"] == 1
    short = "Tak.\nNie.\nTak."  # short lines repeat legitimately
    assert clean(short, only("repeated")) == (short, {})
    text, _ = clean("  Dwa   słowa\t\ttu.  \n\n\n\nKoniec.  ", only("whitespace"))
    assert text == "Dwa słowa tu.\n\nKoniec."
    assert clean("Jedno zdanie.", only("whitespace")) == ("Jedno zdanie.", {})


def test_rules_are_switchable_by_name() -> None:
    assert [r.name for r in select_rules(skip=["html"])] == [n for n in RULE_NAMES if n != "html"]
    with pytest.raises(ValueError, match="unknown cleanup rule 'htm'; rules: encoding"):
        select_rules(["htm"])
    result = invoke("data", "clean", "--help")
    assert all(name in result.stdout for name in RULE_NAMES)  # the help names every rule


# Anonymisation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Pisz na jan.nowak+praca@poczta.example.pl.", "EMAIL"),
        ("Zobacz https://example.com/a?b=1, a potem", "URL"),
        ("Strona www.sklep.example/oferta.", "URL"),
        ("Dzwoń: +48 601 234 567", "PHONE"),
        ("tel. 601-234-567", "PHONE"),
        ("tel. (22) 555 12 34", "PHONE"),
        ("numer 32-555-11-22 w godzinach", "PHONE"),
        ("kom. 600123456", "PHONE"),
        ("+48 22 555 98 76", "PHONE"),
        ("mieszkam przy ul. Jana Pawła II 45/3, 31-864 Kraków", "ADDRESS"),
        ("os. Słoneczne 7 m. 12, 61-001 Poznań", "ADDRESS"),
        ("biuro: pl. Wolności 3", "ADDRESS"),
        ("PESEL 44051401359", "PESEL"),
        ("konto PL61 1090 1014 0000 0712 1981 2874", "IBAN"),
        ("konto 61 1090 1014 0000 0712 1981 2874", "IBAN"),
    ],
)
def test_personal_data_is_replaced(text: str, kind: str) -> None:
    out, counts = anonymise(text)
    assert f"[{kind}]" in out and counts[kind] == 1, out


@pytest.mark.parametrize(
    "text",
    [
        "Spotkanie 12.03.2024 o 17:00.", "Cena 1 249,99 zł, rabat 15%.", "W roku 1989 i 2024.",
        "ISBN 978-83-240-1234-5", "zamówienie nr 48213", "art. 15 ust. 2 pkt 3",
        "kod produktu 123456789", "PESEL-podobne 44051401358",
        "konto 61 1090 1014 0000 0712 1981 2875",
        "W 2023 r. było 1 234 567 mieszkańców.", "Wynik 3:1, 22 555 kibiców",
        "Ustawa z dnia 10 maja 2018 r. (Dz.U. 2018 poz. 1000)",
    ],
)  # fmt: skip
def test_numbers_that_are_not_personal_data_stay(text: str) -> None:
    assert anonymise(text) == (text, {}), anonymise(text)[0]


def test_checksums() -> None:
    assert pesel_valid("44051401359") and not pesel_valid("44051401358")
    assert not pesel_valid("44151401359")  # month 15 does not exist
    assert iban_valid("PL61 1090 1014 0000 0712 1981 2874") and iban_valid(
        "61109010140000071219812874"
    )
    assert not iban_valid("61 1090 1014 0000 0712 1981 2875")


def test_precision_and_recall_on_the_corpus_set() -> None:
    """Every annotated entity replaced, every phrase marked to keep intact (55 documents)."""
    found = missed = kept = hurt = 0
    for record in load_records("anonymisation"):
        out, _ = anonymise(record["text"])
        for entity in record["entities"]:
            missed += entity["text"] in out
            found += entity["text"] not in out
        for phrase in record["keep"]:
            hurt += phrase not in out
            kept += phrase in out
    recall = found / (found + missed)
    keep_rate = kept / (kept + hurt)
    print(f"anonymisation: recall {recall:.3f} ({found}/{found + missed}), "
          f"kept {keep_rate:.3f} ({kept}/{kept + hurt})")  # fmt: skip
    assert recall >= 0.97 and keep_rate >= 0.99


def test_cli_anonymize_streams_shards(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    records = [{"id": f"d{i}", "body": f"Napisz na osoba{i}@example.com, tel. 601 234 56{i}."}
               for i in range(5)]  # fmt: skip
    source.write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    out = tmp_path / "out"
    args = ["data", "anonymize", str(source), "--out", str(out), "--text-field", "body"]
    result = invoke(*args, "--shard-size", "2")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "shard-00000.jsonl", "shard-00001.jsonl", "shard-00002.jsonl", "summary.json"]  # fmt: skip
    rows = [
        json.loads(line) for p in sorted(out.glob("shard-*")) for line in p.read_text().splitlines()
    ]
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    assert all(r["body"] == "Napisz na [EMAIL], tel. [PHONE]." for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"EMAIL": 5, "PHONE": 5} and summary["documents_out"] == 5


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [('{"tekst": "a"}\n', ".jsonl", "no text field 'text' (fields: tekst)"),
     ("not json\n", ".jsonl", ":1 is not JSON"), ("", ".jsonl", "holds no documents"),
     ("x", ".csv", "unsupported file type")],
)  # fmt: skip
def test_bad_input_is_one_line_and_leaves_nothing(
    tmp_path: Path, content: str, suffix: str, message: str
) -> None:
    source = tmp_path / f"in{suffix}"
    source.write_text(content, "utf-8")
    out = tmp_path / "out"
    result = invoke("data", "clean", str(source), "--out", str(out))
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]  # no out, no .partial


def test_two_processes_write_what_one_does(tmp_path: Path) -> None:
    from calibration_data import load

    source = tmp_path / "in.jsonl"
    texts = load("pl-en").texts[:30]
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), "utf-8")
    outputs = []
    for procs in ("1", "2"):
        out = tmp_path / f"out{procs}"
        args = ["data", "clean", str(source), "--out", str(out), "--shard-size", "7"]
        assert invoke(*args, "--num-proc", procs).returncode == 0
        outputs.append({p.name: p.read_text() for p in sorted(out.iterdir())})
    assert outputs[0] == outputs[1] and len(outputs[0]) == 6  # 5 shards + summary


def test_features_command_writes_every_feature(tmp_path: Path) -> None:
    from training.data.features import feature_names

    source = tmp_path / "in.jsonl"
    records = [{"id": "a", "text": "Ala ma kota. Kot ma Alę."}, {"id": "b", "text": "Tak."}]
    source.write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    out = tmp_path / "features"
    result = invoke("data", "features", str(source), "--out", str(out), "--no-morphology")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "shard-00000.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["a", "b"]
    assert list(rows[0])[1:] == feature_names() and rows[0]["word_count"] == 6


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "table.parquet"
    pq.write_table(pa.table({"body": ["Ala ma kota."]}), table)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Zażółć".encode("cp1250"))
    cases = [(table, "has no column 'text' (columns: body)"), (broken, "not a readable Parquet"),
             (latin, "is not UTF-8 text")]  # fmt: skip
    for source, message in cases:
        out = tmp_path / f"out-{source.stem}"
        result = invoke("data", "clean", str(source), "--out", str(out))
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert not out.exists() and not out.with_name(f".{out.name}.partial").exists()
    result = invoke(
        "data", "clean", str(table), "--out", str(tmp_path / "ok"), "--text-field", "body"
    )
    assert result.returncode == 0, result.stderr
