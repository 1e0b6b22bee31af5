"""A command prints only lines we wrote: no backend's warnings, banners or log lines.

Backends are imported only by the commands that use them, and what a library prints while it works
is captured (`quantize.quiet.library_output`); when the work fails, the one-line error names the
log file that holds it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from quantize.errors import QuantizeError
from tests.cli import invoke, run_cli

# What libraries' noise looks like: warnings, logging prefixes, torchao's failed extension loads.
NOISE = re.compile(
    r"warn|deprecat|failed to load|traceback|^\s*(DEBUG|INFO|ERROR|CRITICAL)\b|^\[?(INFO|WARN)"
    r"|torchao|gptqmodel|it/s",
    re.IGNORECASE,
)
# Libraries that have no business in a command that does not quantize or run their format.
BACKENDS = ("gptqmodel", "torchao", "hqq", "mlx", "mlx_lm", "exllamav2", "optimum", "datatrove")


def noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if NOISE.search(line)]


def test_help_prints_only_the_help() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert result.stderr == ""
    assert "Usage: python -m bielik_quant" in result.stdout
    assert noise(result.stdout) == []


def test_info_prints_only_its_table() -> None:
    result = run_cli("info")
    assert result.returncode == 0
    assert result.stderr == ""
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines[0].strip() == "bielik-quant formats"
    assert lines[-1] == "* needs an importance matrix (--imatrix auto or FILE)"
    # Everything between is the table: rows and rules drawn with box characters.
    assert all(line[0] in "┏┃┡│└" for line in lines[1:-1]), lines
    assert noise(result.stdout) == []


@pytest.mark.parametrize("args", [["--help"], ["info"], ["export", "--help"], ["eval", "--help"]])
def test_commands_that_quantize_nothing_import_no_backend(args: list[str]) -> None:
    probe = (
        "import sys\n"
        "from bielik_quant.cli import main\n"
        f"sys.argv = ['bielik-quant', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('IMPORTED', sorted({{m.split('.')[0] for m in sys.modules}} & {set(BACKENDS)!r}))"
    )
    result = run_python(probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "IMPORTED []"


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def gguf_export(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """A GGUF export as a user runs it: the default imatrix (computed through transformers, which
    imports torchao) and two variants."""
    out = tmp_path_factory.mktemp("noise") / "out"
    args = ["export", str(tiny_model), "-v", "Q8_0", "-v", "Q4_K_M", "--n-ctx", "64"]
    return run_cli(*args, "--out", str(out)), out


def test_gguf_export_prints_only_its_results(
    gguf_export: tuple[subprocess.CompletedProcess[str], Path], tiny_model: Path
) -> None:
    result, out = gguf_export
    assert result.returncode == 0, result.stderr
    # Progress bars are transient: on a pipe rich leaves only the blank line that ends them.
    assert result.stderr.strip() == "", result.stderr
    lines = result.stdout.splitlines()
    for line, variant in zip(lines, ("Q8_0", "Q4_K_M"), strict=True):
        artifact = out / f"{tiny_model.name}-GGUF-{variant}"
        assert re.fullmatch(rf"{re.escape(str(artifact))}  [\d,.]+ MiB  [\d.]+ bpw", line), line


def test_eval_prints_only_its_statistics(
    gguf_export: tuple[subprocess.CompletedProcess[str], Path], tiny_model: Path, tmp_path: Path
) -> None:
    _, out = gguf_export
    result = run_cli(
        "eval", "--reference", str(tiny_model), "--candidate",
        str(out / f"{tiny_model.name}-GGUF-Q8_0"), "--out", str(tmp_path / "results.json"),
        "--ctx", "64", "--chunks", "4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Our one closing message, however rich wrapped it: nothing before or after it.
    joined = "".join(result.stderr.split())
    assert re.fullmatch(r"referencecache\w+:.*MiB\);wrote.*results\.json", joined), result.stderr
    assert result.stdout.startswith("\n### ")
    assert noise(result.stdout) == []


LIBRARY_AT_WORK = """
import logging, os, sys, warnings
from quantize.quiet import library_output, terminal

logger = logging.getLogger("a-library")
logger.addHandler(logging.StreamHandler())  # made before the capture, as libraries do
with library_output():
    print("python stdout")
    print("python stderr", file=sys.stderr)
    os.write(1, b"native stdout\\n")
    os.write(2, b"native stderr\\n")
    warnings.warn("a library warning", stacklevel=1)
    logger.warning("a library log line")
    print("ours", file=terminal(2))
    print("our result", file=terminal(1))
print("after", file=sys.stderr)
"""


def test_library_output_keeps_noise_off_the_terminal() -> None:
    result = run_python(LIBRARY_AT_WORK)
    assert (result.returncode, result.stdout, result.stderr) == (0, "our result\n", "ours\nafter\n")


def test_a_failure_keeps_the_library_output_in_a_log_named_by_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bielik_quant.cli
    from quantize.quiet import LOG_NOTE, library_output

    def failing_command() -> None:
        with library_output():
            print("the library explains the failure")
            os.write(2, b"native detail\n")
            raise QuantizeError("the variant could not be made")

    monkeypatch.setattr(bielik_quant.cli, "app", failing_command)
    result = invoke("export")
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    match = re.fullmatch(rf"error: the variant could not be made; {LOG_NOTE}(\S+)", line)
    assert match, line
    log = Path(match[1]).read_text()
    assert log.splitlines() == ["the library explains the failure", "native detail"]
    assert Path(match[1]).is_relative_to(Path(os.environ["XDG_CACHE_HOME"]))


def test_imatrix_and_train_print_only_their_lines(tiny_model: Path, tmp_path: Path) -> None:
    """Both load the model through transformers (which imports torchao) like export does."""
    matrix = tmp_path / "imatrix.gguf"
    result = run_cli(
        "imatrix", str(tiny_model), "--out", str(matrix), "--n-ctx", "64", "--max-windows", "2"
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    assert re.fullmatch(rf"{re.escape(str(matrix))}  \d+ tensors, 2 windows of 64\n", result.stdout)

    out = tmp_path / "sft"
    result = run_cli(
        "train", "tiny-sft", f"model={tiny_model}", f"out={out}", "epochs=0", "max_steps=2",
        "log_every=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    step = r"step [12]/2 loss [\d.]+ acc [\d.]+ lr \S+ grad [\d.]+ [\d,]+ tok/s"
    assert [re.fullmatch(step, line) is not None for line in result.stderr.splitlines()] == [
        True,
        True,
    ], result.stderr
    assert result.stdout == f"{out / 'final'}\n"
