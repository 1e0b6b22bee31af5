"""The data pipeline's reading and writing: null texts, bounded parallel work, atomic outputs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from calibration_data import load_records
from tests.cli import invoke
from training.data import pipeline
from training.data.quality import QualityModel

RECORDS = [
    {"id": "a", "text": "Ala ma kota. Napisz na jan.kowalski@example.pl."},
    {"id": "b", "text": None},
    {"id": "c", "text": "Kot ma Alę i pięć żółwi."},
    {"id": "d", "text": None},
    {"id": "e", "text": "Pies szczeka, a karawana jedzie dalej."},
]
KEPT_IDS = ["a", "c", "e"]
LABELS = ("LOW", "MEDIUM", "HIGH")


def write_source(directory: Path, suffix: str, records: list[dict[str, Any]]) -> Path:
    path = directory / f"in{suffix}"
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def read_output(out: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for p in sorted(out.glob("shard-*.jsonl"))
        for line in p.read_text("utf-8").splitlines()
    ]


@pytest.fixture(scope="module")
def small_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier from 60 labelled documents without morphology: quick, and enough to filter."""
    records = load_records("quality")
    chosen = [r for label in LABELS for r in [r for r in records if r["label"] == label][:20]]
    directory = tmp_path_factory.mktemp("small-quality")
    source = write_source(directory, ".jsonl", chosen)
    out = directory / "classifier"
    result = invoke(
        "data", "train-quality", str(source), "--out", str(out), "--folds", "2", "--no-morphology"
    )
    assert result.returncode == 0, result.stderr
    return out


# Item 8: null texts are skipped and counted, in every step, for .parquet and .jsonl alike.


@pytest.mark.parametrize("num_proc", ["1", "2"])
@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
@pytest.mark.parametrize("command", ["clean", "anonymize", "features", "filter"])
def test_null_texts_are_skipped_and_counted(
    tmp_path: Path, command: str, suffix: str, num_proc: str, request: pytest.FixtureRequest
) -> None:
    source = write_source(tmp_path, suffix, RECORDS)
    out = tmp_path / "out"
    extra = {
        "features": ["--no-morphology"],
        "filter": ["--model", str(request.getfixturevalue("small_classifier")), "--threshold", "0"],
    }.get(command, [])
    result = invoke(
        "data", command, str(source), "--out", str(out), "--shard-size", "2",
        "--num-proc", num_proc, *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [row["id"] for row in read_output(out)] == KEPT_IDS
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    assert summary["counts"]["null text skipped"] == 2
    assert summary["documents_in"] == len(RECORDS)
    assert "null text skipped" in result.stdout


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_only_null_texts_is_no_documents(tmp_path: Path, suffix: str) -> None:
    source = write_source(tmp_path, suffix, [{"id": "x", "text": None}])
    result = invoke("data", "clean", str(source), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "holds no documents" in result.stderr, result.stderr
    assert "1 with null text skipped" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]


def test_a_text_of_another_type_is_refused_by_file_and_line(tmp_path: Path) -> None:
    source = write_source(tmp_path, ".jsonl", [RECORDS[0], {"id": "n", "text": 5}])
    result = invoke("data", "clean", str(source), "--out", str(tmp_path / "out"))
    assert result.returncode == 1, result.stderr
    assert f"{source}:2" in result.stderr and "int" in result.stderr
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), table)
    result = invoke("data", "clean", str(table), "--out", str(tmp_path / "out2"))
    assert result.returncode == 1 and "int64" in result.stderr, result.stderr


# Item 12: the parallel pipeline holds a bounded number of shards, not the whole corpus.


def test_shards_in_flight_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Count shards read from the source against shards whose result came back.

    Submitting every shard up front (Executor.map) reads all 40 before the first result.
    """
    records = [{"id": f"d{i}", "text": f"Dokument numer {i}."} for i in range(40)]
    source = write_source(tmp_path, ".jsonl", records)
    read, collected, in_flight = [0], [0], []
    original = pipeline.shards

    def counting_shards(*args: Any) -> Iterator[list[dict[str, Any]]]:
        for shard in original(*args):
            read[0] += 1
            in_flight.append(read[0] - collected[0])
            yield shard

    def on_shard(result: pipeline.ShardResult) -> None:
        collected[0] += 1

    monkeypatch.setattr(pipeline, "shards", counting_shards)
    summary = pipeline.run_step(
        pipeline.anonymise_step, source, tmp_path / "out", shard_size=1, num_proc=2,
        on_shard=on_shard,
    )  # fmt: skip
    assert summary["documents_out"] == 40 and read[0] == collected[0] == 40
    assert max(in_flight) <= 2 * 2, in_flight  # the bound: twice the worker processes
    assert [r["id"] for r in read_output(tmp_path / "out")] == [r["id"] for r in records]


# Item 9: a replaced output directory is never a mix of old and new, nor a damaged old one.


def test_interrupted_overwrite_leaves_a_complete_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replacing `out` is interrupted while a complete directory is being removed.

    Whatever is left at `out` must be a whole output: its summary's count equals its shards' rows.
    """
    old = write_source(
        tmp_path, ".jsonl", [{"id": f"o{i}", "text": "Stary tekst."} for i in range(6)]
    )
    out = tmp_path / "out"
    assert invoke("data", "clean", str(old), "--out", str(out), "--shard-size", "2").returncode == 0
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"id": "n", "text": "Nowy tekst."}) + "\n", "utf-8")
    real_rmtree, calls = shutil.rmtree, [0]

    def interrupted_rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        path = Path(path)
        if (path / "summary.json").is_file():  # a complete output: remove part of it, then stop
            calls[0] += 1
            (path / "shard-00000.jsonl").unlink()
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", interrupted_rmtree)
    # click turns KeyboardInterrupt into "Aborted!" and exit 130
    assert invoke("data", "clean", str(new), "--out", str(out), "--overwrite").returncode == 130
    assert calls[0] == 1
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    assert len(read_output(out)) == summary["documents_out"]
    assert [r["id"] for r in read_output(out)] == ["n"]  # the new output was in place first
    # The next run clears what the interruption left and leaves no hidden debris.
    assert invoke("data", "clean", str(old), "--out", str(out), "--overwrite").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "new.jsonl", "out"]


def test_interrupted_train_quality_keeps_the_old_classifier(
    small_classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train-quality --overwrite` stopped between model.json and quality.json."""
    out = tmp_path / "classifier"
    shutil.copytree(small_classifier, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    records = load_records("quality")
    others = [r for label in LABELS for r in [r for r in records if r["label"] == label][20:34]]
    source = write_source(tmp_path, ".jsonl", others)

    calls = [0]

    def interrupted() -> str:  # called after model.json is written, before quality.json
        calls[0] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr("training.data.quality._xgboost_version", interrupted)
    result = invoke(
        "data", "train-quality", str(source), "--out", str(out), "--folds", "2",
        "--no-morphology", "--overwrite",
    )  # fmt: skip
    assert result.returncode == 130 and calls[0] == 1  # click: KeyboardInterrupt is "Aborted!"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    QualityModel.load(out)
    monkeypatch.undo()
    result = invoke(
        "data", "train-quality", str(source), "--out", str(out), "--folds", "2",
        "--no-morphology", "--overwrite",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert QualityModel.load(out).metrics["documents"] == len(others)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier", "in.jsonl"]
