"""The `bielik-quant` command line. Each sub-command is a thin layer over a library module."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from bielik_quant import __version__
from bielik_quant.commands.release import demo_command, release_command
from bielik_quant.console import Bars, console, output, progress
from calibration_data import BUILTIN, Calibration, CalibrationError

# Our own rich progress bars replace the tqdm bars transformers draws when loading weights.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

app = typer.Typer(
    name="bielik-quant",
    help="Train, quantize and evaluate Polish LLMs: every format, with the numbers to prove it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"bielik-quant {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    pass


@app.command("tokenizer-stats")
def tokenizer_stats(
    tokenizer: Annotated[
        list[Path],
        typer.Option(
            "--tokenizer",
            "-t",
            help="A Hugging Face tokenizer directory or a SentencePiece .model file; repeat to "
            "compare several side by side.",
        ),
    ],
    text: Annotated[
        str, typer.Option(help=f"Built-in text set ({BUILTIN}) or a .txt/.jsonl/.parquet file.")
    ] = BUILTIN,
    split: Annotated[
        str | None, typer.Option(help="Only this split of the built-in corpus: train, calib, eval.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")
    ] = None,
) -> None:
    """Tokens, characters per token and tokens per word, per language and tokenizer."""
    from bielik_quant.tokenizer_stats import group_by_language, load_encoder, measure
    from calibration_data import load
    from quantize.artifact import atomic_write_text

    groups = group_by_language(load(text, split=split))
    encoders = {str(path): load_encoder(path) for path in tokenizer}
    rows = []
    with progress() as bar:
        for name, encode in encoders.items():
            for language, texts in groups.items():
                task = bar.add_task(f"{Path(name).name} {language}", total=len(texts))
                rows.append(measure(name, encode, language, bar.track(texts, task_id=task)))

    table = Table(title=f"Tokenizer statistics on {text}" + (f" ({split})" if split else ""))
    for column in ("Tokenizer", "Language", "Documents", "Words", "Characters", "Tokens"):
        table.add_column(column, justify="left" if column in ("Tokenizer", "Language") else "right")
    table.add_column("Chars/token", justify="right")
    table.add_column("Tokens/word", justify="right")
    for row in rows:
        table.add_row(
            row.tokenizer, row.language, f"{row.documents:,}", f"{row.words:,}",
            f"{row.characters:,}", f"{row.tokens:,}",
            f"{row.chars_per_token:.3f}", f"{row.tokens_per_word:.3f}",
        )  # fmt: skip
    output.print(table)
    if json_out:
        payload = {"text": text, "split": split, "rows": [row.to_dict() for row in rows]}
        atomic_write_text(json_out, json.dumps(payload, indent=1) + "\n")
        console.print(f"wrote {json_out}")


@app.command("train-tokenizer")
def train_tokenizer(
    out: Annotated[Path, typer.Option(help="Directory to create for the tokenizer files.")],
    text: Annotated[
        str, typer.Option(help=f"Built-in text set ({BUILTIN}) or a .txt/.jsonl/.parquet file.")
    ] = BUILTIN,
    vocab_size: Annotated[int, typer.Option(min=300, help="Vocabulary size.")] = 4096,
) -> None:
    """Train a SentencePiece BPE tokenizer (Mistral's kind) on the train split or a file."""
    from calibration_data import load
    from quantize.artifact import staged
    from training.tokenizer import train_sentencepiece

    if out.exists():
        fail(f"{out} already exists; choose another --out or remove it")
    texts = load(text, split="train" if text == BUILTIN else None).texts
    with (
        console.status(f"training a {vocab_size}-piece tokenizer on {len(texts)} documents"),
        staged(out, overwrite=False) as staging,
    ):
        staging.rmdir()  # train_sentencepiece creates its directory; staged() still cleans up
        train_sentencepiece(texts, staging, vocab_size)
    console.print(f"wrote {out}")


CalibrationOption = Annotated[
    str,
    typer.Option(
        help=f"Calibration text: built-in {BUILTIN} (its calib split) or a "
        ".txt/.jsonl/.parquet file."
    ),
]


def _calibration(text: str, split: str | None) -> Calibration:
    from calibration_data import load

    return load(text, split=split if text == BUILTIN else None)


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="Hugging Face checkpoint directory (safetensors).")],
    variant: Annotated[
        list[str],
        typer.Option(
            "--variant",
            "-v",
            help="Variant to make, e.g. Q4_K_M (gguf), w4g128 (gptq, awq), 4bit-g64 (hqq, mlx), "
            "4.0bpw-h6 (exl2); repeat for several, which share the expensive steps. "
            "`bielik-quant info` lists them all.",
        ),
    ],
    format_name: Annotated[
        str, typer.Option("--format", "-f", help="Output format: gguf, gptq, awq, hqq, mlx, exl2.")
    ] = "gguf",
    out: Annotated[
        Path,
        typer.Option(
            help="Root directory; each variant goes to <out>/<model>-<FORMAT>-<variant>/."
        ),
    ] = Path("artifacts"),
    calibration: Annotated[
        str,
        typer.Option(
            help=f"Calibration text for the GGUF imatrix, GPTQ, AWQ and EXL2 (HQQ and MLX use "
            f"none): built-in {BUILTIN} (its calib split) or a .txt/.jsonl/.parquet file."
        ),
    ] = BUILTIN,
    n_ctx: Annotated[
        int, typer.Option(min=8, help="Calibration window (sample) length in tokens.")
    ] = 512,
    samples: Annotated[
        int,
        typer.Option(
            min=1, help="GPTQ, AWQ, EXL2: at most this many calibration windows of --n-ctx."
        ),
    ] = 128,
    imatrix: Annotated[
        str,
        typer.Option(
            help="GGUF importance matrix: auto (computed from --calibration), a "
            "file from `bielik-quant imatrix`, or none."
        ),
    ] = "auto",
    tensor_type: Annotated[
        list[str] | None,
        typer.Option(
            "--tensor-type",
            help="GGUF per-tensor override REGEX=TYPE, e.g. 'ffn_down=Q6_K'; repeatable.",
        ),
    ] = None,
    threads: Annotated[int, typer.Option(min=0, help="Quantization threads (0: all cores).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace artifacts that already exist.")] = False,
) -> None:
    """Export a checkpoint to a quantized format, one artifact directory per variant.

    Every artifact holds the format's own files (loadable by its ecosystem), a model card and
    bielik-quant.json, written last; a failed export leaves no artifact behind.
    """
    from quantize.quiet import library_output
    from quantize.registry import ExportRequest, get_format
    from quantize.source import ModelSource

    fmt = get_format(format_name)
    fmt.check()
    source = ModelSource.open(model)
    request = ExportRequest(
        source=source,
        out_root=out,
        variants=tuple(dict.fromkeys(variant)),
        calibration=_calibration(calibration, "calib"),
        overwrite=overwrite,
        threads=threads,
        n_ctx=n_ctx,
        calibration_samples=samples,
        imatrix={"auto": "auto", "none": None}.get(imatrix.lower(), Path(imatrix)),
        tensor_types=tuple(tensor_type or ()),
    )
    with progress() as bar, library_output():
        artifacts = fmt.export(request, Bars(bar))
    for artifact in artifacts:
        manifest = artifact.manifest
        output.print(
            f"{artifact.path}  {manifest['size_bytes'] / 2**20:,.1f} MiB  "
            f"{manifest['bits_per_weight']:.2f} bpw",
            highlight=False,
        )


@app.command("imatrix")
def imatrix_command(
    model: Annotated[Path, typer.Argument(help="Hugging Face checkpoint directory (safetensors).")],
    out: Annotated[Path, typer.Option(help="The imatrix file to write (llama.cpp's GGUF layout).")],
    calibration: CalibrationOption = BUILTIN,
    n_ctx: Annotated[int, typer.Option(min=8, help="Window length in tokens.")] = 512,
    max_windows: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many windows.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Compute an importance matrix from the FP16 model on calibration text (like llama-imatrix)."""
    from quantize.imatrix import compute_imatrix, save_imatrix
    from quantize.quiet import library_output
    from quantize.source import ModelSource

    if out.exists() and not overwrite:
        fail(f"{out} already exists; pass --overwrite to replace it")
    source = ModelSource.open(model)
    text = _calibration(calibration, "calib")
    with progress() as bar, library_output():
        report = Bars(bar)
        matrix = compute_imatrix(
            source.path, text.texts, n_ctx=n_ctx, max_windows=max_windows,
            dataset_name=text.name, on_window=lambda done, total: report("windows", done, total),
        )  # fmt: skip
    save_imatrix(matrix, out)
    output.print(f"{out}  {len(matrix.sums)} tensors, {matrix.chunk_count} windows of {n_ctx}")


@app.command()
def info() -> None:
    """Formats and variants this installation can export, and what is missing for the rest."""
    from quantize.registry import format_names, get_format

    table = Table(title="bielik-quant formats")
    for column in ("Format", "Ready", "Variants", "Install"):
        table.add_column(column)
    for name in format_names():
        fmt = get_format(name)
        missing = fmt.missing()
        table.add_row(
            name,
            "yes" if not missing else f"no: missing {', '.join(missing)}",
            " ".join(v + ("*" if fmt.needs_imatrix(v) else "") for v in fmt.variants()),
            escape(f"pip install 'bielik-quant[{fmt.extra}]'"),
        )
    output.print(table)
    output.print("* needs an importance matrix (--imatrix auto or FILE)")


@app.command("eval")
def eval_command(
    reference: Annotated[
        Path,
        typer.Option(
            help="The FP16 model: a Hugging Face checkpoint directory or an F16/BF16 .gguf."
        ),
    ],
    candidate: Annotated[
        list[Path],
        typer.Option(
            help="An artifact directory, a .gguf file or a checkpoint to compare; repeatable."
        ),
    ],
    out: Annotated[Path, typer.Option(help="results.json to write (for `bielik-quant report`).")],
    text: Annotated[
        str,
        typer.Option(
            help=f"Evaluation text: built-in {BUILTIN} (its eval split), a .txt file (read "
            "as-is, like llama-perplexity -f) or .jsonl/.parquet documents."
        ),
    ] = BUILTIN,
    ctx: Annotated[int, typer.Option(min=4, help="Window length in tokens (llama: -c).")] = 512,
    chunks: Annotated[
        int | None, typer.Option(min=1, help="Evaluate only the first N windows.")
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the reference's cached logits live (default: "
            "$XDG_CACHE_HOME or ~/.cache, then bielik-quant/reference)."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """KLD, Δp and PPL of each candidate against the reference, as llama-perplexity computes them.

    The reference runs once and its logits are cached; candidates then run one at a time on the
    same windows (the second half of each window is scored).
    """
    from eval_quant.statistics import format_blocks
    from eval_quant.suite import Settings, default_cache_dir, load_text, run_suite
    from quantize.artifact import write_json
    from quantize.quiet import library_output

    if out.exists() and not overwrite:
        fail(f"{out} already exists; pass --overwrite to replace it")
    settings = Settings(n_ctx=ctx, chunks=chunks, cache_dir=cache_dir or default_cache_dir())

    def show(row: dict) -> None:
        output.print(f"\n### {row['name']} ({row['format']} {row['variant']})", highlight=False)
        output.print(format_blocks(row["statistics"]), highlight=False, markup=False)

    with progress() as bar, library_output():
        results = run_suite(
            reference, candidate, load_text(text), settings, Bars(bar), on_candidate=show
        )
    write_json(out, results)
    cache = results["cache"]
    console.print(
        f"reference cache {cache['status']}: {cache['path']} ({cache['size_bytes'] / 2**20:.1f} "
        f"MiB); wrote {out}",
        highlight=False,
    )


@app.command()
def report(
    results: Annotated[
        list[Path], typer.Argument(help="results.json files from `bielik-quant eval`.")
    ],
    out: Annotated[Path, typer.Option(help="Directory for report.md, .csv, .html and plots.")],
) -> None:
    """The quality report in the layout of the Bielik paper's Table 8 (Markdown, CSV, HTML)."""
    from eval_quant.report import load_results, write_report

    written = write_report(load_results(results), out)
    for path in written.values():
        output.print(str(path), highlight=False)


@app.command()
def train(
    recipe: Annotated[str, typer.Argument(help="A recipe in training/recipes/ or a YAML file.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="KEY=VALUE for any recipe field, e.g. lr=1e-4 max_steps=200."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in out.")] = False,
    stop_after: Annotated[
        int, typer.Option(min=0, help="Stop after N steps (with a checkpoint); 0: run to the end.")
    ] = 0,
) -> None:
    """Continued pretraining or SFT from a recipe; one process here, DDP/FSDP under torchrun.

    The recipe's fields are documented in training/config.py. Several processes run the same code
    as `torchrun --nproc_per_node N -m training RECIPE KEY=VALUE ...`.
    """
    from quantize.quiet import library_output, terminal
    from training.run import run

    # The libraries' output (transformers importing torchao, ...) stays off the terminal; the
    # run's own lines (steps, the result, a one-line error) reach it through `terminal`.
    with library_output():
        code = run(
            recipe, overrides or [], resume=resume, stop_after=stop_after,
            out=terminal(1), err=terminal(2),
        )  # fmt: skip
    if code:
        raise typer.Exit(code)


data_app = typer.Typer(
    help="The pretraining data pipeline: clean, anonymize, features, train-quality, filter.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

SourceArgument = Annotated[
    Path, typer.Argument(help="A .txt, .jsonl or .parquet file, or a directory of them.")
]
OutOption = Annotated[Path, typer.Option(help="Output directory (shards + summary.json).")]
TextFieldOption = Annotated[
    str, typer.Option(help="The text's field (.jsonl) or column (.parquet).")
]
ShardOption = Annotated[int, typer.Option(min=1, help="Documents per shard.")]
ProcOption = Annotated[int, typer.Option(min=1, help="Worker processes, one shard each.")]
OverwriteOption = Annotated[bool, typer.Option(help="Replace --out if it exists.")]


def _run_data_step(
    step: object, source: Path, out: Path, text_field: str, shard_size: int, num_proc: int,
    overwrite: bool,
) -> None:  # fmt: skip
    from training.data.pipeline import run_step

    with progress() as bar:
        task = bar.add_task(f"{source.name} → {out.name}", total=None)
        summary = run_step(
            step, source, out, text_field, shard_size, num_proc, overwrite,  # type: ignore[arg-type]
            on_shard=lambda result: bar.update(task, advance=result.documents_in),
        )  # fmt: skip
    table = Table(
        title=f"{summary['documents_in']:,} documents in, {summary['documents_out']:,} out"
    )
    table.add_column("what changed")
    table.add_column("count", justify="right")
    for name, count in summary["counts"].items():
        table.add_row(name, f"{count:,}")
    output.print(table)
    output.print(str(out), highlight=False)


@data_app.command("clean")
def data_clean(
    source: SourceArgument,
    out: OutOption,
    rules: Annotated[
        str,
        typer.Option(
            help="Comma-separated rules to run (default: all): encoding, unicode, control, html, "
            "boilerplate, repeated, whitespace."
        ),
    ] = "",
    skip: Annotated[str, typer.Option(help="Comma-separated rules not to run.")] = "",
    text_field: TextFieldOption = "text",
    shard_size: ShardOption = 1000,
    num_proc: ProcOption = 1,
    overwrite: OverwriteOption = False,
) -> None:
    """Repair encoding, normalise, strip HTML, boilerplate, repeats and extra whitespace."""
    from functools import partial

    from training.data.clean import select_rules
    from training.data.pipeline import clean_step

    chosen = tuple(n for n in rules.split(",") if n)
    skipped = tuple(n for n in skip.split(",") if n)
    try:
        select_rules(chosen or None, skipped)
    except ValueError as err:
        fail(str(err))
    step = partial(clean_step, rules=chosen, skip=skipped)
    _run_data_step(step, source, out, text_field, shard_size, num_proc, overwrite)


@data_app.command("anonymize")
def data_anonymize(
    source: SourceArgument,
    out: OutOption,
    text_field: TextFieldOption = "text",
    shard_size: ShardOption = 1000,
    num_proc: ProcOption = 1,
    overwrite: OverwriteOption = False,
) -> None:
    """Replace e-mails, URLs, phones, addresses, PESEL and IBAN/NRB with [TYPE] placeholders."""
    from training.data.pipeline import anonymise_step

    _run_data_step(anonymise_step, source, out, text_field, shard_size, num_proc, overwrite)


@data_app.command("features")
def data_features(
    source: SourceArgument,
    out: OutOption,
    morphology: Annotated[
        bool, typer.Option(help="Grammatical shares from morfeusz2 (slower).")
    ] = True,
    text_field: TextFieldOption = "text",
    shard_size: ShardOption = 1000,
    num_proc: ProcOption = 1,
    overwrite: OverwriteOption = False,
) -> None:
    """Stylometric features per document (names and definitions: training/data/features.py)."""
    from functools import partial

    from training.data.pipeline import features_step

    step = partial(features_step, morphology=morphology)
    _run_data_step(step, source, out, text_field, shard_size, num_proc, overwrite)


@data_app.command("train-quality")
def data_train_quality(
    out: Annotated[Path, typer.Option(help="Directory for the classifier and its report.")],
    source: Annotated[
        Path | None,
        typer.Argument(help="Labelled .jsonl/.parquet (default: our corpus's quality set)."),
    ] = None,
    label_field: Annotated[str, typer.Option(help="The HIGH/MEDIUM/LOW field.")] = "label",
    text_field: TextFieldOption = "text",
    folds: Annotated[int, typer.Option(min=2, help="Stratified cross-validation folds.")] = 5,
    morphology: Annotated[bool, typer.Option(help="Use the morfeusz2 features.")] = True,
    overwrite: OverwriteOption = False,
) -> None:
    """Train the XGBoost quality classifier; report precision, recall, F1 and a confusion plot."""
    from calibration_data import load_records
    from training.data.pipeline import read_documents, staged_output
    from training.data.quality import plot_confusion, train_quality

    if out.exists() and not overwrite:
        fail(f"{out} already exists; pass --overwrite to replace it")
    records = list(read_documents(source, text_field)) if source else load_records("quality")
    missing = [r.get("id", i) for i, r in enumerate(records) if label_field not in r]
    if missing:
        fail(f"{len(missing)} records have no {label_field!r} field, e.g. {missing[0]}")
    with console.status(f"features and {folds}-fold validation on {len(records)} documents"):
        model = train_quality(
            [r[text_field] for r in records], [r[label_field] for r in records],
            folds=folds, morphology=morphology,
        )  # fmt: skip
    with staged_output(out, overwrite) as staging:  # never a new model beside old metadata
        model.save(staging)
        plot_confusion(model.metrics, staging / "confusion.png")
    table = Table(title=f"out-of-fold, {folds} folds, {len(records)} documents")
    for column in ("class", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="right")
    for label, row in model.metrics["per_class"].items():
        table.add_row(label, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                      str(row["support"]))  # fmt: skip
    output.print(table)
    output.print(
        f"accuracy {model.metrics['accuracy']:.3f} (majority baseline "
        f"{model.metrics['majority_baseline']:.3f}); wrote {out}",
        highlight=False,
    )


@data_app.command("filter")
def data_filter(
    source: SourceArgument,
    model: Annotated[Path, typer.Option(help="A classifier from `data train-quality`.")],
    out: OutOption,
    threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Keep documents with P(HIGH) above this.")
    ] = 0.9,
    text_field: TextFieldOption = "text",
    shard_size: ShardOption = 1000,
    num_proc: ProcOption = 1,
    overwrite: OverwriteOption = False,
) -> None:
    """Keep the documents the quality classifier rates HIGH with probability above --threshold."""
    from functools import partial

    from training.data.pipeline import filter_step
    from training.data.quality import QualityModel

    QualityModel.load(model)  # a wrong or stale classifier fails before any shard
    step = partial(filter_step, model_dir=str(model), threshold=threshold)
    _run_data_step(step, source, out, text_field, shard_size, num_proc, overwrite)


@app.command("make-tiny-model")
def make_tiny_model(
    out: Annotated[Path, typer.Option(help="Directory to create for the checkpoint.")],
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 160,
) -> None:
    """Build the tests' tiny Mistral (tokenizer + briefly trained model) from the corpus."""
    import tempfile

    from calibration_data import load
    from quantize.artifact import staged
    from quantize.quiet import library_output
    from training.tiny_model import TinyMistral, build_tiny_mistral
    from training.tokenizer import train_sentencepiece

    if out.exists():
        fail(f"{out} already exists; choose another --out or remove it")
    texts = load(BUILTIN, split="train").texts
    with (
        tempfile.TemporaryDirectory() as tmp,
        console.status("training a tiny Mistral"),
        staged(out, overwrite=False) as staging,
        library_output(),
    ):
        staging.rmdir()  # build_tiny_mistral creates its directory; staged() still cleans up
        tokenizer = train_sentencepiece(texts, Path(tmp) / "tokenizer", 4096)
        build_tiny_mistral(tokenizer, texts, staging, TinyMistral(train_steps=steps))
    output.print(f"{out}")


app.command("release")(release_command)
app.command("demo")(demo_command)


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean the user's input is wrong: shown as one line, never a traceback."""
    from bielik_quant.release.folder import ReleaseFolderError
    from bielik_quant.tokenizer_stats import TokenizerLoadError
    from eval_quant.errors import EvalError
    from quantize.errors import QuantizeError
    from training.data.pipeline import PipelineError
    from training.data.quality import QualityError
    from training.run import USER_ERRORS as TRAINING_ERRORS
    from training.tokenizer import TokenizerTrainingError

    return (
        CalibrationError, TokenizerLoadError, TokenizerTrainingError, QuantizeError, EvalError,
        PipelineError, QualityError, ReleaseFolderError, *TRAINING_ERRORS,
    )  # fmt: skip


def fail(message: str) -> NoReturn:
    """Report a user mistake as one line and exit 1."""
    # Escaped: messages hold brackets rich would take for markup ("bielik-quant[gptq]").
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(1)


def main() -> None:
    try:
        app()
    except Exception as err:  # not SystemExit: a command that ends normally imports nothing here
        if not isinstance(err, user_errors()):
            raise
        # Notes name where a library's output before the failure was kept (quantize.quiet).
        fail("; ".join([str(err), *getattr(err, "__notes__", ())]))
