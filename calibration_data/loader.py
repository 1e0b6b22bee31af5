"""Load calibration or evaluation text: the built-in corpus by name, or a user's own file.

    load("pl-en", split="calib")            # the built-in corpus's calibration split
    load("pl-en", split="eval", language="en")
    load("my_texts.jsonl")                  # .txt, .jsonl ("text" field), .parquet ("text" column)

Every consumer (imatrix, AWQ/GPTQ calibration, the evaluation suite, training) goes through
`load`, so `--calibration NAME|FILE` means the same thing everywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from calibration_data.errors import CalibrationError
from calibration_data.manifest import (
    CORPUS_SPLITS,
    DATA_DIR,
    DOMAINS,
    LANGUAGES,
    RECORD_KINDS,
    read_manifest,
    read_records,
)
from calibration_data.readers import TEXT_FIELD, read_documents

BUILTIN = "pl-en"


@dataclass(frozen=True)
class Document:
    id: str  # path inside the corpus, or "<file>#<n>" for a user's file
    text: str
    language: str | None = None
    domain: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class Calibration:
    """A named, hashable sequence of documents."""

    name: str
    documents: tuple[Document, ...]

    @property
    def texts(self) -> list[str]:
        return [document.text for document in self.documents]

    @cached_property
    def sha256(self) -> str:
        """Hash of the texts in order; artifacts record it so a calibration can be traced."""
        digest = hashlib.sha256()
        for text in self.texts:
            encoded = text.encode("utf-8")
            digest.update(len(encoded).to_bytes(8, "little"))
            digest.update(encoded)
        return digest.hexdigest()


def _check_choice(what: str, value: str | None, valid: tuple[str, ...] | list[str]) -> None:
    if value is not None and value not in valid:
        raise CalibrationError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def load(
    source: str | Path = BUILTIN,
    *,
    split: str | None = None,
    language: str | None = None,
    domain: str | None = None,
    text_field: str = TEXT_FIELD,
) -> Calibration:
    """Documents of the built-in corpus (filtered by split, language, domain) or of a file."""
    if str(source) == BUILTIN:
        return _load_builtin(split, language, domain)
    path = Path(source)
    if not path.exists():
        raise CalibrationError(
            f"{source}: neither a built-in text set ({BUILTIN}) nor an existing file"
        )
    if split or language or domain:
        raise CalibrationError(
            "split, language and domain select parts of the built-in corpus only"
        )
    texts = read_documents(path, text_field)
    documents = tuple(Document(f"{path.name}#{n}", text) for n, text in enumerate(texts))
    return Calibration(str(path), documents)


def _load_builtin(split: str | None, language: str | None, domain: str | None) -> Calibration:
    _check_choice("split", split, CORPUS_SPLITS)
    _check_choice("language", language, LANGUAGES)
    _check_choice("domain", domain, list(DOMAINS))
    documents = tuple(
        Document(
            entry["path"],
            (DATA_DIR / entry["path"]).read_text("utf-8"),
            entry["language"],
            entry["domain"],
            entry["split"],
        )
        for entry in read_manifest()["files"]
        if entry["kind"] == "corpus"
        and split in (None, entry["split"])
        and language in (None, entry["language"])
        and domain in (None, entry["domain"])
    )
    if not documents:
        raise CalibrationError(f"no documents in {BUILTIN} for {split=}, {language=}, {domain=}")
    name = ":".join(part for part in (BUILTIN, split, language, domain) if part)
    return Calibration(name, documents)


def load_records(kind: str) -> list[dict[str, Any]]:
    """The records of a non-corpus set: "sft", "quality" or "anonymisation"."""
    _check_choice("record set", kind, list(RECORD_KINDS))
    return [
        record
        for entry in read_manifest()["files"]
        if entry["kind"] == kind
        for record in read_records(DATA_DIR / entry["path"])
    ]
