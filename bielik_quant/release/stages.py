"""The work of each stage of the release road, on the library functions the verbs use.

Each function fills its stage directory and returns the stage's product (what the next stage
reads). When `resume` is true the directory holds the same stage's work killed part-way, and each
function goes on from what was finished: data steps whose output folder exists (they appear only
when complete), training from its last checkpoint, export from the variants not yet written
(artifacts appear only when complete), eval from the candidates not yet measured.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bielik_quant.release.config import DataStage, EvalStage, ExportStage, PublishStage, TrainStage
from calibration_data import BUILTIN
from quantize.artifact import (
    MANIFEST,
    artifact_name,
    atomic_write_text,
    link_or_copy,
    staged,
    write_json,
)
from quantize.registry import Progress, stage


def run_data(cfg: DataStage, directory: Path, progress: Progress | None) -> Path:
    """The sources through clean, anonymize and the quality filter; returns the last folder."""
    from training.data.pipeline import anonymise_step, clean_step, filter_step, run_step

    current = _gather_sources(cfg, directory / "input")
    for name in cfg.steps:
        target = directory / name
        if target.is_dir():  # finished before the run was killed
            current = target
            continue
        if name == "clean":
            step: Any = partial(clean_step, rules=(), skip=())
        elif name == "anonymize":
            step = anonymise_step
        else:
            model = Path(cfg.quality_model) if cfg.quality_model else directory / "quality-model"
            if not cfg.quality_model and not model.is_dir():
                _train_quality_model(model, cfg.morphology)
            step = partial(filter_step, model_dir=str(model), threshold=cfg.threshold)
        on_shard = _shard_bar(stage(progress, f"data: {name}"), current, cfg.text_field)
        run_step(
            step, current, target, cfg.text_field, cfg.shard_size, cfg.num_proc, on_shard=on_shard
        )
        current = target
    return current


def _shard_bar(report: Any, source: Path, text_field: str) -> Any:
    """A `run_step` callback that advances `report` by each shard's documents."""
    if report is None:
        return None
    from training.data.pipeline import SUMMARY, read_documents

    summary = source / SUMMARY  # a finished step's output says how many documents it kept
    if summary.is_file():
        total = json.loads(summary.read_text("utf-8"))["documents_out"]
    else:
        total = sum(1 for _ in read_documents(source, text_field))
    done = 0

    def on_shard(result: Any) -> None:
        nonlocal done
        done += result.documents_in
        report(done, max(total, done))

    return on_shard


def _gather_sources(cfg: DataStage, folder: Path) -> Path:
    """One folder holding every source: the built-in corpus as JSONL, files as symbolic links."""
    from training.data.pipeline import input_files, staged_output

    if folder.is_dir():
        return folder
    with staged_output(folder, overwrite=False) as staging:
        for index, source in enumerate(cfg.sources):
            if source == BUILTIN:
                from calibration_data import load

                corpus = load(BUILTIN, split=cfg.split)
                lines = [
                    json.dumps({"id": d.id, cfg.text_field: d.text}, ensure_ascii=False) + "\n"
                    for d in corpus.documents
                ]
                (staging / f"{index:03d}-{BUILTIN}-{cfg.split}.jsonl").write_text(
                    "".join(lines), "utf-8"
                )
                continue
            for file in input_files(Path(source)):
                os.symlink(file.resolve(), staging / f"{index:03d}-{file.name}")
    return folder


def _train_quality_model(folder: Path, morphology: bool) -> None:
    from calibration_data import load_records
    from training.data.pipeline import staged_output
    from training.data.quality import train_quality

    records = load_records("quality")
    model = train_quality(
        [r["text"] for r in records], [r["label"] for r in records], morphology=morphology
    )
    with staged_output(folder, overwrite=False) as staging:
        model.save(staging)


def train_tokenizer(data: Path, folder: Path, vocab_size: int) -> Path:
    """A SentencePiece tokenizer trained on the data stage's output (skipped if already made)."""
    from training.tokenizer import train_sentencepiece
    from training.trainer import pretraining_texts

    if not folder.is_dir():
        with staged(folder, overwrite=False) as staging:
            staging.rmdir()  # train_sentencepiece creates its directory
            train_sentencepiece(pretraining_texts(str(data), "train"), staging, vocab_size)
    return folder


def run_training(
    cfg: TrainStage,
    directory: Path,
    product: Path,
    changes: dict[str, Any],
    progress: Progress | None,
) -> Path:
    """Train the stage's recipe; the final checkpoint is linked as `product` (its name is the
    model's name, which exporters give their artifacts)."""
    import yaml

    from training import checkpoint
    from training.config import build_config

    run = directory / "run"
    config = build_config(cfg.recipe, {**cfg.overrides, **changes, "out": str(run)})
    recipe = directory / "recipe.yaml"
    values = json_ready(dataclasses.asdict(config))
    atomic_write_text(recipe, yaml.safe_dump(values, sort_keys=False, allow_unicode=True))
    resume = checkpoint.latest(run) is not None
    if cfg.nproc_per_node > 1:
        command = [
            sys.executable, "-m", "torch.distributed.run",
            f"--nproc_per_node={cfg.nproc_per_node}", "-m", "training", str(recipe),
        ] + (["--resume"] if resume else [])  # fmt: skip
        finished = subprocess.run(command, check=False)
        if finished.returncode:
            from training.trainer import TrainingError

            raise TrainingError(
                f"torchrun exited with status {finished.returncode}; run again to resume"
            )
    else:
        from training.trainer import train

        report = stage(progress, f"{config.task} steps")
        train(
            config, resume=resume,
            on_step=(lambda record, steps: report(record["step"], steps)) if report else None,
        )  # fmt: skip
    link_tree(run / "final", product)
    return product


def link_tree(source: Path, target: Path) -> None:
    """`target` as a copy of `source` made of hard links (copies across file systems)."""
    with staged(target, overwrite=True) as staging:
        for file in sorted(source.rglob("*")):
            if file.is_file():
                destination = staging / file.relative_to(source)
                destination.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(file, destination)


def export_artifacts(cfg: ExportStage, directory: Path, model: Path) -> list[Path]:
    """Every artifact the stage makes, in recipe order (whether made yet or not)."""
    name = model.resolve().name
    return [
        directory / item.folder / artifact_name(name, item.format, variant)
        for item in cfg.formats
        for variant in item.variants
    ]


def run_export(cfg: ExportStage, directory: Path, model: Path, progress: Progress | None) -> Path:
    from calibration_data import load
    from quantize.registry import ExportRequest, get_format
    from quantize.source import ModelSource

    source = ModelSource.open(model)
    calibration = load(cfg.calibration, split="calib" if cfg.calibration == BUILTIN else None)
    for item in cfg.formats:
        root = directory / item.folder
        todo = tuple(
            v for v in item.variants
            if not (root / artifact_name(source.name, item.format, v) / MANIFEST).is_file()
        )  # fmt: skip
        if not todo:
            continue
        get_format(item.format).export(
            ExportRequest(
                source=source, out_root=root, variants=todo, calibration=calibration,
                threads=cfg.threads, n_ctx=cfg.n_ctx, calibration_samples=cfg.samples,
                imatrix="auto" if item.uses_imatrix else None,
            ),
            progress,
        )  # fmt: skip
    return directory


def run_eval(
    cfg: EvalStage,
    directory: Path,
    model: Path,
    artifacts: Sequence[Path],
    progress: Progress | None,
) -> Path:
    from eval_quant.suite import Settings, load_text, run_suite

    settings = Settings(n_ctx=cfg.n_ctx, chunks=cfg.chunks, cache_dir=directory / "cache")
    results = run_suite(
        model, list(artifacts), load_text(cfg.text), settings, progress,
        rows_dir=directory / "rows",
    )  # fmt: skip
    write_json(directory / "results.json", results)
    return directory / "results.json"


def run_report(formats: Sequence[str], directory: Path, results: Path) -> Path:
    from eval_quant.report import load_results, write_report

    folder = directory / "table8"
    written = write_report(load_results([results]), folder)
    for kind, path in written.items():  # the formats the recipe did not ask for
        if kind in ("md", "csv", "html") and kind not in formats:
            path.unlink()
    return folder


def run_release(
    cfg: PublishStage | None,
    name: str,
    directory: Path,
    artifacts: Sequence[Path],
    results: Path,
    report: Path,
) -> Path:
    from bielik_quant.release.folder import assemble_release

    folder = directory / name
    assemble_release(
        artifacts, results, report, folder, name=name,
        license_id=(cfg.license if cfg else "") or None,
    )  # fmt: skip
    return folder


def json_ready(value: Any) -> Any:
    """Tuples as lists, for YAML and JSON."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value
