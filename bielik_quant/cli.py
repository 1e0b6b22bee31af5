"""The `bielik-quant` command line. Each sub-command is a thin layer over a library module."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.table import Table

from bielik_quant import __version__
from bielik_quant.console import console, output, progress
from calibration_data import BUILTIN, CalibrationError

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
        json_out.write_text(json.dumps(payload, indent=1) + "\n", "utf-8")
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
    from training.tokenizer import train_sentencepiece

    if out.exists():
        fail(f"{out} already exists; choose another --out or remove it")
    texts = load(text, split="train" if text == BUILTIN else None).texts
    with console.status(f"training a {vocab_size}-piece tokenizer on {len(texts)} documents"):
        train_sentencepiece(texts, out, vocab_size)
    console.print(f"wrote {out}")


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean the user's input is wrong: shown as one line, never a traceback."""
    from bielik_quant.tokenizer_stats import TokenizerLoadError
    from training.tokenizer import TokenizerTrainingError

    return (CalibrationError, TokenizerLoadError, TokenizerTrainingError)


def fail(message: str) -> NoReturn:
    """Report a user mistake as one line and exit 1."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(1)


def main() -> None:
    try:
        app()
    except user_errors() as err:
        fail(str(err))
