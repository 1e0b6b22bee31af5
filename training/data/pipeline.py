"""Run a data step over a corpus: read documents, process shards in parallel, write shards.

Input is a `.txt` file (one document), a `.jsonl` file (one record per line, the text in
`text_field`), a `.parquet` file (a `text_field` column), or a directory of such files. Documents
are cut into shards of `shard_size`; each shard is processed by the same function in a worker
process (`num_proc`), so a distributed engine could map that function later. Each output shard is
`<out>/shard-NNNNN.jsonl`, written to a temporary name and renamed; `summary.json`, written last,
says what each step removed or changed, and its presence means the output is complete.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

SUFFIXES = (".txt", ".jsonl", ".parquet")
SUMMARY = "summary.json"


class PipelineError(ValueError):
    """Unreadable input, a missing text column, an existing output: what and where."""


@dataclass
class ShardResult:
    index: int
    documents_in: int
    documents_out: int
    counts: Counter[str] = field(default_factory=Counter)


def input_files(source: Path) -> list[Path]:
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise PipelineError(f"{source} holds no {', '.join(SUFFIXES)} files")
        return files
    if not source.is_file():
        raise PipelineError(f"{source} does not exist")
    if source.suffix not in SUFFIXES:
        raise PipelineError(f"{source}: unsupported file type; use {', '.join(SUFFIXES)}")
    return [source]


def read_documents(source: Path, text_field: str = "text") -> Iterator[dict[str, Any]]:
    """Records with at least `text_field`; every record keeps its other fields."""
    for path in input_files(source):
        if path.suffix == ".txt":
            try:
                yield {"id": path.stem, text_field: path.read_text("utf-8")}
            except UnicodeDecodeError as err:
                raise PipelineError(f"{path} is not UTF-8 text ({err.reason})") from err
        elif path.suffix == ".jsonl":
            yield from _read_jsonl(path, text_field)
        else:
            yield from _read_parquet(path, text_field)


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line; a bad line is named by file and number."""
    try:
        with path.open(encoding="utf-8", errors="strict") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        yield number, json.loads(line)
                    except json.JSONDecodeError as err:
                        raise PipelineError(f"{path}:{number} is not JSON ({err.msg})") from err
    except UnicodeDecodeError as err:
        raise PipelineError(f"{path} is not UTF-8 text ({err.reason})") from err


def _read_jsonl(path: Path, text_field: str) -> Iterator[dict[str, Any]]:
    for number, record in read_jsonl(path):
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            fields = ", ".join(record) if isinstance(record, dict) else "none"
            raise PipelineError(
                f"{path}:{number} has no text field {text_field!r} (fields: {fields}); "
                "choose it with --text-field"
            )
        yield record


def _read_parquet(path: Path, text_field: str) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise PipelineError(f"{path} is not a readable Parquet file ({err})") from err
    if text_field not in table.schema_arrow.names:
        raise PipelineError(
            f"{path} has no column {text_field!r} (columns: {', '.join(table.schema_arrow.names)});"
            " choose it with --text-field"
        )
    for batch in table.iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def shards(records: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    shard: list[dict[str, Any]] = []
    for record in records:
        shard.append(record)
        if len(shard) == size:
            yield shard
            shard = []
    if shard:
        yield shard


# A shard step: records in, records out, and what it changed.
Step = Callable[[list[dict[str, Any]], str], tuple[list[dict[str, Any]], Counter[str]]]


def run_step(
    step: Step,
    source: Path,
    out: Path,
    text_field: str = "text",
    shard_size: int = 1000,
    num_proc: int = 1,
    overwrite: bool = False,
    on_shard: Callable[[ShardResult], None] | None = None,
) -> dict[str, Any]:
    """Apply `step` to every shard of `source`, writing `out`; returns the summary."""
    if out.exists() and not overwrite:
        raise PipelineError(f"{out} already exists; pass --overwrite to replace it")
    input_files(source)  # a missing or unsupported input fails before `out` is touched
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    total = ShardResult(-1, 0, 0)
    work = partial(_process_shard, step, text_field, staging)
    try:
        jobs = enumerate(shards(read_documents(source, text_field), shard_size))
        if num_proc > 1:
            with ProcessPoolExecutor(num_proc) as pool:
                results = pool.map(work, jobs)
                total = _collect(results, total, on_shard)
        else:
            total = _collect(map(work, jobs), total, on_shard)
        if total.documents_in == 0:
            raise PipelineError(f"{source} holds no documents")
        summary = {
            "source": str(source), "documents_in": total.documents_in,
            "documents_out": total.documents_out, "counts": dict(sorted(total.counts.items())),
        }  # fmt: skip
        (staging / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n", "utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return summary


def _collect(
    results: Iterable[ShardResult], total: ShardResult, on_shard: Callable | None
) -> ShardResult:
    for result in results:
        total.documents_in += result.documents_in
        total.documents_out += result.documents_out
        total.counts.update(result.counts)
        if on_shard:
            on_shard(result)
    return total


def _process_shard(
    step: Step, text_field: str, staging: Path, job: tuple[int, list[dict[str, Any]]]
) -> ShardResult:
    index, records = job
    kept, counts = step(records, text_field)
    path = staging / f"shard-{index:05d}.jsonl"
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", encoding="utf-8") as out:
        for record in kept:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    temporary.rename(path)
    return ShardResult(index, len(records), len(kept), counts)


# The steps -----------------------------------------------------------------------------------


def clean_step(
    records: list[dict[str, Any]], text_field: str, rules: tuple[str, ...] = (),
    skip: tuple[str, ...] = (),
) -> tuple[list[dict[str, Any]], Counter[str]]:  # fmt: skip
    """Clean each text; a document left empty is dropped ("emptied")."""
    from training.data.clean import clean, select_rules

    selected = select_rules(rules or None, skip)
    counts: Counter[str] = Counter()
    kept = []
    for record in records:
        text, changed = clean(record[text_field], selected)
        counts.update({f"{name} (changes)": n for name, n in changed.items()})
        counts.update({f"{name} (documents)": 1 for name in changed})
        if text:
            kept.append({**record, text_field: text})
        else:
            counts["emptied (documents dropped)"] += 1
    return kept, counts


def anonymise_step(
    records: list[dict[str, Any]], text_field: str
) -> tuple[list[dict[str, Any]], Counter[str]]:
    from training.data.anonymise import anonymise

    counts: Counter[str] = Counter()
    kept = []
    for record in records:
        text, found = anonymise(record[text_field])
        counts.update(found)
        kept.append({**record, text_field: text})
    return kept, counts


def filter_step(
    records: list[dict[str, Any]], text_field: str, model_dir: str, threshold: float
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Keep documents whose P(HIGH) exceeds `threshold`, each with its `p_high`."""
    from training.data.quality import QualityModel

    model = _cached_model(model_dir, QualityModel)
    p_high = model.p_high([record[text_field] for record in records])
    kept = [{**r, "p_high": round(float(p), 4)} for r, p in zip(records, p_high, strict=True)
            if p > threshold]  # fmt: skip
    return kept, Counter({"dropped (P(HIGH) at or below threshold)": len(records) - len(kept)})


_MODELS: dict[str, Any] = {}


def _cached_model(model_dir: str, kind: Any) -> Any:
    """One load per worker process, not per shard."""
    if model_dir not in _MODELS:
        _MODELS[model_dir] = kind.load(Path(model_dir))
    return _MODELS[model_dir]


def features_step(
    records: list[dict[str, Any]], text_field: str, morphology: bool = True
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Each document's id (or position) and its stylometric features, one column per feature."""
    from training.data.features import compute_features, feature_names

    matrix = compute_features([record[text_field] for record in records], morphology=morphology)
    names = feature_names()
    rows = [
        {"id": record.get("id"), **{n: _json_float(v) for n, v in zip(names, row, strict=True)}}
        for record, row in zip(records, matrix, strict=True)
    ]
    return rows, Counter()


def _json_float(value: float) -> float | None:
    return None if value != value else round(float(value), 6)  # NaN is not JSON
