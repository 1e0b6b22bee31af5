"""The document quality classifier: XGBoost on stylometric features, HIGH / MEDIUM / LOW.

As in the Bielik paper (§3.1): a gradient-boosted classifier on per-document stylometric
features, trained on annotated documents; pretraining keeps the documents whose P(HIGH) exceeds
a threshold (0.9 by default). Validation is stratified k-fold: every document is predicted once
by a model that did not see it, and precision, recall, F1 (per class, and for HIGH) and the
confusion matrix come from those out-of-fold predictions. The model saved afterwards is fitted
on all documents. It is stored with its feature names and feature version, and refuses features
of another version.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data import features

LABELS = ("LOW", "MEDIUM", "HIGH")  # class indices 0, 1, 2
MODEL_FILE = "model.json"
META_FILE = "quality.json"
DEFAULT_THRESHOLD = 0.9


class QualityError(ValueError):
    """A classifier file is missing, damaged, or made for another feature version."""


def _classifier(seed: int) -> Any:
    from xgboost import XGBClassifier

    # Small trees and shrinkage: a few hundred labelled documents overfit deep trees at once.
    return XGBClassifier(
        n_estimators=300, max_depth=4, learning_rate=0.05, subsample=0.9,
        colsample_bytree=0.7, min_child_weight=2, random_state=seed, n_jobs=1,
        objective="multi:softprob", eval_metric="mlogloss",
    )  # fmt: skip


@dataclass
class QualityModel:
    booster: Any  # xgboost.XGBClassifier
    feature_names: list[str]
    feature_version: str
    morphology: bool
    metrics: dict[str, Any]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 3) probabilities of LOW, MEDIUM, HIGH."""
        matrix = features.compute_features(texts, morphology=self.morphology)
        return self.booster.predict_proba(matrix)

    def p_high(self, texts: Sequence[str]) -> np.ndarray:
        return self.predict_proba(texts)[:, LABELS.index("HIGH")]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(directory / MODEL_FILE)
        meta = {
            "labels": list(LABELS),
            "feature_version": self.feature_version,
            "feature_names": self.feature_names,
            "morphology": self.morphology,
            "metrics": self.metrics,
            "xgboost": _xgboost_version(),
        }
        # Written last: its presence means the classifier directory is complete.
        (directory / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", "utf-8")

    @classmethod
    def load(cls, directory: Path) -> QualityModel:
        meta_file = directory / META_FILE
        if not meta_file.is_file() or not (directory / MODEL_FILE).is_file():
            raise QualityError(f"{directory} is not a quality classifier (no {META_FILE})")
        try:
            meta = json.loads(meta_file.read_text("utf-8"))
        except json.JSONDecodeError as err:
            raise QualityError(f"{meta_file} is damaged ({err.msg})") from err
        if meta["feature_version"] != features.FEATURE_VERSION:
            raise QualityError(
                f"{directory} was trained on features version {meta['feature_version']}, this "
                f"installation computes version {features.FEATURE_VERSION}; retrain it with "
                "`bielik-quant data train-quality`"
            )
        if meta["feature_names"] != features.feature_names():
            raise QualityError(f"{directory} names other features than this installation's")
        booster = _classifier(0)
        booster.load_model(directory / MODEL_FILE)
        return cls(booster, meta["feature_names"], meta["feature_version"], meta["morphology"],
                   meta["metrics"])  # fmt: skip


def train_quality(
    texts: Sequence[str],
    labels: Sequence[str],
    folds: int = 5,
    seed: int = 0,
    morphology: bool = True,
) -> QualityModel:
    """Cross-validate, then fit on everything; the metrics are the out-of-fold ones."""
    from sklearn.model_selection import StratifiedKFold

    unknown = sorted(set(labels) - set(LABELS))
    if unknown:
        raise QualityError(f"labels must be {', '.join(LABELS)}; found {', '.join(unknown)}")
    y = np.asarray([LABELS.index(label) for label in labels])
    x = features.compute_features(texts, morphology=morphology)
    predicted = np.zeros_like(y)
    for train_rows, test_rows in StratifiedKFold(folds, shuffle=True, random_state=seed).split(
        x, y
    ):
        model = _classifier(seed).fit(x[train_rows], y[train_rows])
        predicted[test_rows] = model.predict(x[test_rows])
    booster = _classifier(seed).fit(x, y)
    return QualityModel(
        booster, features.feature_names(), features.FEATURE_VERSION, morphology,
        metrics(y, predicted, folds),
    )  # fmt: skip


def metrics(y: np.ndarray, predicted: np.ndarray, folds: int) -> dict[str, Any]:
    """Per-class precision/recall/F1, accuracy, the majority baseline and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    classes = list(range(len(LABELS)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y, predicted, labels=classes, zero_division=0
    )
    majority = np.bincount(y, minlength=len(LABELS)).max() / len(y)
    return {
        "folds": folds,
        "documents": len(y),
        "accuracy": float(accuracy_score(y, predicted)),
        "majority_baseline": float(majority),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(LABELS, precision, recall, f1, support, strict=True)
        },
        "confusion": confusion_matrix(y, predicted, labels=classes).tolist(),
        "confusion_axes": "rows: true label, columns: predicted, in the order of labels",
        "labels": list(LABELS),
    }


def plot_confusion(metrics_: dict[str, Any], path: Path) -> Path:
    """The out-of-fold confusion matrix as a PNG (counts, rows = truth), like the paper's Fig. 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(metrics_["confusion"])
    figure, axes = plt.subplots(figsize=(4.5, 4))
    axes.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        color = "white" if count > matrix.max() / 2 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=color)
    axes.set_xticks(range(len(LABELS)), LABELS)
    axes.set_yticks(range(len(LABELS)), LABELS)
    axes.set_xlabel("predicted")
    axes.set_ylabel("annotated")
    high = metrics_["per_class"]["HIGH"]
    axes.set_title(f"HIGH: P {high['precision']:.3f}  R {high['recall']:.3f}  F1 {high['f1']:.3f}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _xgboost_version() -> str:
    import xgboost

    return xgboost.__version__
