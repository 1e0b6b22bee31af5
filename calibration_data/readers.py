"""Readers for a user's own text files: `.txt`, `.jsonl` and `.parquet`.

Each reader returns the documents of one file as plain strings. They are strict on purpose: a
calibration set that silently lost half its lines, or decoded bytes as the wrong encoding, would
give an importance matrix that looks fine and is not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from calibration_data.errors import CalibrationError

TEXT_FIELD = "text"


def read_utf8(path: Path) -> str:
    """The whole file as text; non-UTF-8 bytes are an error, not something to guess around."""
    if not path.is_file():
        raise CalibrationError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CalibrationError(
            f"{path}: not valid UTF-8 (byte {err.start}); re-encode it, e.g. `iconv -t UTF-8`"
        ) from None


def read_txt(path: Path, text_field: str = TEXT_FIELD) -> list[str]:
    """A `.txt` file is one document."""
    return [read_utf8(path)]


def read_jsonl(path: Path, text_field: str = TEXT_FIELD) -> list[str]:
    """One JSON object per line with a string field `text_field`; blank lines are skipped."""
    texts = []
    for number, line in enumerate(read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CalibrationError(f"{path}:{number}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise CalibrationError(
                f"{path}:{number}: expected an object with a string field {text_field!r}"
            )
        texts.append(record[text_field])
    return texts


def read_parquet(path: Path, text_field: str = TEXT_FIELD) -> list[str]:
    """The string column `text_field` of a Parquet file, one document per row."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise CalibrationError(f"{path}: no such file")
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several unrelated types for a damaged file
        raise CalibrationError(f"{path}: not a readable Parquet file ({err})") from None
    if text_field not in table.column_names:
        raise CalibrationError(
            f"{path}: no column {text_field!r} (columns: {', '.join(table.column_names)})"
        )
    values = table.column(text_field).to_pylist()
    if not all(isinstance(value, str) for value in values):
        raise CalibrationError(f"{path}: column {text_field!r} must hold strings only")
    return values


READERS: dict[str, Callable[[Path, str], list[str]]] = {
    ".txt": read_txt,
    ".jsonl": read_jsonl,
    ".parquet": read_parquet,
}


def read_documents(path: Path, text_field: str = TEXT_FIELD) -> list[str]:
    """Documents of a user file, chosen by its extension; empty documents are dropped."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise CalibrationError(
            f"{path}: unsupported file type {path.suffix or '(none)'!r}; use one of "
            + ", ".join(sorted(READERS))
        )
    texts = [text for text in reader(path, text_field) if text.strip()]
    if not texts:
        raise CalibrationError(f"{path}: contains no text")
    return texts
