"""Run a data step over a corpus: read documents, process shards in parallel, write shards.

Input is a `.txt` file (one document), a `.jsonl` file (one record per line, the text in
`text_field`), a `.parquet` file (a `text_field` column), or a directory of such files. Documents
are cut into shards of `shard_size`; each shard is processed by the same function in a worker
process (`num_proc`), so a distributed engine could map that function later. Each output shard is
`<out>/shard-NNNNN.jsonl`; `summary.json`, written last, says what each step removed or changed.
The whole directory is filled under a hidden name and renamed into place when complete
(`staged_output`), so `<out>` is always a whole output, the old or the new one, or absent.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

SUFFIXES = (".txt", ".jsonl", ".parquet")
SUMMARY = "summary.json"
NULL_TEXT = "null text skipped"


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


def read_documents(
    source: Path, text_field: str = "text", skipped: Counter[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Records whose `text_field` is a string; every record keeps its other fields.

    A record whose text is null (a missing value in a Parquet column, `null` in JSON) is skipped
    and counted in `skipped` under NULL_TEXT, for .jsonl and .parquet alike: real datasets carry
    missing values, and one of them should not stop a run over millions of documents (datatrove's
    readers drop them the same way). A missing field or a text of another type means the wrong
    field was chosen, so that is refused, naming the file and the line or row.
    """
    for path in input_files(source):
        if path.suffix == ".txt":
            try:
                yield {"id": path.stem, text_field: path.read_text("utf-8")}
            except UnicodeDecodeError as err:
                raise PipelineError(f"{path} is not UTF-8 text ({err.reason})") from err
            continue
        read = _read_jsonl if path.suffix == ".jsonl" else _read_parquet
        for where, record in read(path, text_field):
            text = record[text_field]
            if isinstance(text, str):
                yield record
            elif text is None:
                if skipped is not None:
                    skipped[NULL_TEXT] += 1
            else:
                raise PipelineError(
                    f"{where}: {text_field!r} holds {type(text).__name__}, not text; "
                    "choose the text field with --text-field"
                )


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


def _read_jsonl(path: Path, text_field: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, record in read_jsonl(path):
        if not isinstance(record, dict) or text_field not in record:
            fields = ", ".join(record) if isinstance(record, dict) else "none"
            raise PipelineError(
                f"{path}:{number} has no text field {text_field!r} (fields: {fields}); "
                "choose it with --text-field"
            )
        yield f"{path}:{number}", record


def _read_parquet(path: Path, text_field: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise PipelineError(f"{path} is not a readable Parquet file ({err})") from err
    schema = table.schema_arrow
    if text_field not in schema.names:
        raise PipelineError(
            f"{path} has no column {text_field!r} (columns: {', '.join(schema.names)});"
            " choose it with --text-field"
        )
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise PipelineError(
            f"{path}: column {text_field!r} holds {kind}, not text; choose it with --text-field"
        )
    row = 0
    for batch in table.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            yield f"{path}, row {row}", record
            row += 1


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
    input_files(source)  # a missing or unsupported input fails before `out` is touched
    skipped: Counter[str] = Counter()
    with staged_output(out, overwrite) as staging:
        jobs = enumerate(shards(read_documents(source, text_field, skipped), shard_size))
        work = partial(_process_shard, step, text_field, staging)
        if num_proc > 1:
            # Spawned, not forked: a fork copies whatever threads the parent runs (OpenMP's, once
            # xgboost or torch has worked in it) without them, and the workers then hang.
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(num_proc, mp_context=spawn) as pool:
                total = _collect(_in_order(pool, work, jobs, 2 * num_proc), on_shard)
        else:
            total = _collect(map(work, jobs), on_shard)
        if total.documents_in == 0:
            nulls = f" ({skipped[NULL_TEXT]} with null text skipped)" if skipped else ""
            raise PipelineError(f"{source} holds no documents{nulls}")
        total.counts.update(skipped)
        summary = {
            "source": str(source), "documents_in": total.documents_in + skipped.total(),
            "documents_out": total.documents_out, "counts": dict(sorted(total.counts.items())),
        }  # fmt: skip
        (staging / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n", "utf-8")
    return summary


@contextmanager
def staged_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """An empty hidden sibling of `out` to fill; on success it becomes `out`, on failure it goes.

    The old `out` is renamed aside before the new one is renamed in and deleted only then, so at
    every moment `out` is the whole old output, the whole new one, or absent (the same scheme as
    quantize.artifact.staged, which this layer may not import). Leftovers of a killed run are
    hidden (`.<name>.partial`, `.<name>.old`) and removed by the next run.
    """
    if out.exists() and not overwrite:
        raise PipelineError(f"{out} already exists; pass --overwrite to replace it")
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    trash = out.with_name(f".{out.name}.old")
    shutil.rmtree(trash, ignore_errors=True)
    if out.exists():
        out.rename(trash)
    staging.rename(out)
    shutil.rmtree(trash, ignore_errors=True)


def _in_order(
    pool: Executor, work: Callable[[Any], ShardResult], jobs: Iterable[Any], bound: int
) -> Iterator[ShardResult]:
    """`pool.map(work, jobs)` with at most `bound` jobs read and not yet returned.

    Executor.map submits every job before the first result, and each job holds its shard's
    records, so the whole corpus would sit in this process. Here the next shard is read only when
    a slot is free; results still come back in the jobs' order, so the output is deterministic.
    """
    jobs = iter(jobs)
    pending: deque[Future[ShardResult]] = deque()
    while True:
        while len(pending) < bound and (job := next(jobs, None)) is not None:
            pending.append(pool.submit(work, job))
        if not pending:
            return
        yield pending.popleft().result()


def _collect(results: Iterable[ShardResult], on_shard: Callable | None) -> ShardResult:
    total = ShardResult(-1, 0, 0)
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
