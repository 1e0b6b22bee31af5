"""`bielik-quant release RECIPE` and `bielik-quant demo`: the whole road in one command.

The road itself is `bielik_quant.release.road.release`; this module draws its progress (stage k of
n, and the stage's own bars), keeps the libraries' output off the terminal, and prints the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bielik_quant.console import Bars, console, output, progress

if TYPE_CHECKING:
    from bielik_quant.release.config import ReleaseConfig

FromOption = Annotated[
    str | None,
    typer.Option(
        "--from",
        help="Re-run this stage and every later one even if their inputs have not changed: "
        "data, pretrain, sft, export, eval, report or release.",
    ),
]


def release_command(
    recipe: Annotated[
        str, typer.Argument(help="A release recipe: a YAML file, or a name in recipes/ (demo, …).")
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="KEY=VALUE for any recipe field, e.g. export.n_ctx=256 eval.chunks=8."),
    ] = None,
    out: Annotated[Path, typer.Option(help="The run's folder (one subfolder per stage).")] = Path(
        "runs/release"
    ),
    from_stage: FromOption = None,
) -> None:
    """Run a release recipe: data, pretrain, sft, export, eval, report, release.

    Each stage writes its own folder under --out with a stamp of its inputs and settings. Run
    again, a stage whose stamp matches is skipped; a changed setting re-runs that stage and the
    ones after it; a run that was killed resumes where it stopped.
    """
    from bielik_quant.release.config import load_release

    config = load_release(recipe, overrides or [])
    run_road(config, out, from_stage)


def demo_command(
    out: Annotated[Path, typer.Option(help="The run's folder.")] = Path("runs/demo"),
    from_stage: FromOption = None,
) -> None:
    """The built-in release recipe on our own corpus, nothing downloaded (recipes/demo.yaml).

    Cleans, anonymises and quality-filters the corpus, pretrains a tiny Mistral on it, instruction-
    tunes it on our conversations, exports every format this machine can make, measures each
    against the FP16 model and writes the Table 8 report and the release folder.
    """
    from bielik_quant.release.config import load_release

    run_road(load_release("demo"), out, from_stage)


def run_road(config: ReleaseConfig, out: Path, from_stage: str | None) -> None:
    from bielik_quant.release.road import release
    from quantize.quiet import library_output

    with progress() as bar, library_output():
        bars = Bars(bar)
        road = bar.add_task("release", total=len(config.stages()))

        def on_stage(k: int, n: int, name: str, status: str) -> None:
            if status in ("running", "resuming"):
                bar.update(road, description=f"[{k}/{n}] {name}", completed=k - 1)
                if status == "resuming":
                    console.print(f"[{k}/{n}] {name}: resuming the run that was stopped")
                return
            bars.clear()
            bar.update(road, completed=k)
            said = "done" if status == "done" else "skipped: its inputs and settings are unchanged"
            console.print(f"[{k}/{n}] {name}: {said}", highlight=False)

        products = release(config, out, bars, on_stage, from_stage)
    report = products.get("report")
    table = report / "report.md" if report else None
    if table is not None and table.is_file():
        output.print(_results_section(table.read_text("utf-8")), highlight=False, markup=False)
    for name in ("report", "release"):
        if name in products:
            output.print(f"{name}: {products[name]}", highlight=False)


def _results_section(markdown: str) -> str:
    """The Table 8 rows (and the words beside them) from report.md: its "Results" section."""
    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Results"), None)
    if start is None:
        return markdown
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end]).strip()
