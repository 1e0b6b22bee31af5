"""A GGUF quantized with an importance matrix carries llama-quantize's `quantize.imatrix.*` keys."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest

from calibration_data import load
from quantize.imatrix import ImportanceMatrix, compute_imatrix, save_imatrix
from tests.cli import invoke

DATASET = "pl-en (calib)"


@pytest.fixture(scope="module")
def exports(
    tmp_path_factory: pytest.TempPathFactory, one_step_model: Path
) -> tuple[ImportanceMatrix, dict[bool, Path]]:
    """A small imatrix, and the bare Q4_K_M .gguf made with it (True) and without one (False)."""
    tmp = tmp_path_factory.mktemp("imatrix-keys")
    texts = load("pl-en", split="calib").texts
    matrix = compute_imatrix(one_step_model, texts, n_ctx=64, max_windows=3, dataset_name=DATASET)
    save_imatrix(matrix, tmp / "matrix.gguf")
    files = {}
    for used, choice in ((True, str(tmp / "matrix.gguf")), (False, "none")):
        out = tmp / str(used)
        result = invoke("export", str(one_step_model), "--variant", "Q4_K_M", "--imatrix", choice,
                        "--out", str(out))  # fmt: skip
        assert result.returncode == 0, result.stderr
        name = one_step_model.name
        [files[used]] = (out / f"{name}-GGUF-Q4_K_M").glob(f"{name}*.gguf")
    return matrix, files


def test_the_keys_describe_the_imatrix(exports: tuple[ImportanceMatrix, dict[bool, Path]]) -> None:
    matrix, files = exports
    reader = gguf.GGUFReader(files[True])
    keys = {name: field.contents() for name, field in reader.fields.items()
            if name.startswith("quantize.imatrix.")}  # fmt: skip
    assert keys == {
        # The artifact ships the imatrix used under this name, beside the model.
        "quantize.imatrix.file": "imatrix.gguf",
        "quantize.imatrix.dataset": DATASET,
        "quantize.imatrix.entries_count": len(matrix.sums),
        "quantize.imatrix.chunks_count": matrix.chunk_count,
    }
    plain = gguf.GGUFReader(files[False])
    assert not [name for name in plain.fields if name.startswith("quantize.imatrix.")]


def test_eval_of_the_bare_file_reports_the_imatrix(
    exports: tuple[ImportanceMatrix, dict[bool, Path]], one_step_model: Path, tmp_path: Path
) -> None:
    _, files = exports
    out = tmp_path / "results.json"
    result = invoke("eval", "--reference", str(one_step_model), "--candidate", str(files[True]),
                    "--candidate", str(files[False]), "--out", str(out), "--ctx", "64",
                    "--chunks", "2", "--cache-dir", str(tmp_path / "cache"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    candidates = json.loads(out.read_text("utf-8"))["candidates"]
    assert [(c["path"], c["imatrix"]) for c in candidates] == [
        (str(files[True].resolve()), True),
        (str(files[False].resolve()), False),
    ]
