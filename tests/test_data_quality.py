"""The quality classifier on the corpus's labelled set, and filtering with it through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration_data import load_records
from tests.cli import invoke
from training.data import features
from training.data.quality import QualityError, QualityModel, metrics


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`bielik-quant data train-quality` on the built-in labelled set (325 documents)."""
    out = tmp_path_factory.mktemp("quality") / "classifier"
    result = invoke("data", "train-quality", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_the_classifier_beats_the_majority_baseline(classifier: Path) -> None:
    meta = json.loads((classifier / "quality.json").read_text())
    report = meta["metrics"]
    print({label: row["f1"] for label, row in report["per_class"].items()}, report["accuracy"])
    assert report["accuracy"] > report["majority_baseline"] + 0.25
    assert report["per_class"]["HIGH"]["f1"] > 0.7
    assert meta["feature_version"] == features.FEATURE_VERSION
    assert meta["feature_names"] == features.feature_names()
    assert (classifier / "confusion.png").stat().st_size > 1000


def test_reported_metrics_equal_a_recomputation() -> None:
    y = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 2, 0, 2])
    report = metrics(y, predicted, folds=2)
    high = report["per_class"]["HIGH"]
    assert high["precision"] == 1.0 and high["recall"] == 0.75
    assert high["f1"] == pytest.approx(2 * 1.0 * 0.75 / 1.75)
    low = report["per_class"]["LOW"]
    assert low["precision"] == 0.5 and low["recall"] == 0.5
    assert report["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 3]]
    assert report["accuracy"] == 6 / 8 and report["majority_baseline"] == 4 / 8


def test_filter_keeps_high_and_drops_low(classifier: Path, tmp_path: Path) -> None:
    records = load_records("quality")
    # Mixed set: documents the classifier was trained on stand in for a new corpus here; the
    # out-of-fold metrics above are the held-out measure.
    mixed = [r for r in records if r["label"] in ("HIGH", "LOW")]
    source = tmp_path / "mixed.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in mixed), "utf-8")
    out = tmp_path / "kept"
    result = invoke("data", "filter", str(source), "--model", str(classifier), "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = [line for p in sorted(out.glob("shard-*")) for line in p.read_text().splitlines()]
    kept = [json.loads(line) for line in lines]
    labels = [r["label"] for r in kept]
    high_total = sum(r["label"] == "HIGH" for r in mixed)
    assert labels.count("HIGH") >= 0.8 * high_total and labels.count("LOW") == 0
    assert all(r["p_high"] > 0.9 for r in kept)


def test_a_classifier_of_another_feature_version_is_refused(
    classifier: Path, tmp_path: Path
) -> None:
    stale = tmp_path / "stale"
    stale.mkdir()
    for name in ("model.json", "quality.json"):
        (stale / name).write_bytes((classifier / name).read_bytes())
    meta = json.loads((stale / "quality.json").read_text())
    meta["feature_version"] = "0-old"
    (stale / "quality.json").write_text(json.dumps(meta))
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"text": "Ala ma kota."}) + "\n")
    out = tmp_path / "out"
    result = invoke("data", "filter", str(source), "--model", str(stale), "--out", str(out))
    assert result.returncode == 1 and "features version 0-old" in result.stderr
    assert not out.exists()
    with pytest.raises(QualityError, match="not a quality classifier"):
        QualityModel.load(tmp_path)
