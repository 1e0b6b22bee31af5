"""Files the CLI writes are whole or absent: an interrupted command leaves the old file or nothing.

Each test stops a command at its last write (KeyboardInterrupt, as Ctrl-C would: click turns it
into "Aborted!" and exit 130) and looks at what is left where the output goes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.cli import invoke


def interrupt_after(monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> list[int]:
    """Make `target.name` do its work, then raise KeyboardInterrupt; returns a call counter."""
    calls = [0]
    real = getattr(target, name)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(target, name, interrupted)
    return calls


def interrupt_half_written(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """`Path.write_text` writes the first half of its text, then the process is interrupted."""
    calls = [0]
    real = Path.write_text

    def half(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        calls[0] += 1
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half)
    return calls


def test_tokenizer_stats_json_is_replaced_whole(
    tiny_tokenizer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "stats.json"
    args = ("tokenizer-stats", "-t", str(tiny_tokenizer), "--split", "eval", "--json", str(out))
    assert invoke(*args).returncode == 0
    before = out.read_bytes()
    json.loads(before)
    calls = interrupt_half_written(monkeypatch)
    assert invoke(*args).returncode == 130
    assert calls[0] == 1
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def test_write_json_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`eval --out` writes results.json with quantize.artifact.write_json."""
    from quantize.artifact import write_json

    out = tmp_path / "results.json"
    write_json(out, {"old": True})
    interrupt_half_written(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        write_json(out, {"new": True, "rows": list(range(100))})
    assert json.loads(out.read_text("utf-8")) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_interrupted_train_tokenizer_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = interrupt_after(monkeypatch, shutil, "copy")  # its last file: tokenizer.model
    out = tmp_path / "tok"
    assert invoke("train-tokenizer", "--out", str(out), "--vocab-size", "600").returncode == 130
    assert calls[0] == 1
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert invoke("train-tokenizer", "--out", str(out), "--vocab-size", "600").returncode == 0
    assert (out / "tokenizer.model").is_file() and (out / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]


def test_interrupted_make_tiny_model_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = interrupt_after(monkeypatch, shutil, "copy2")  # its last file: tokenizer.model
    out = tmp_path / "model"
    assert invoke("make-tiny-model", "--out", str(out), "--steps", "1").returncode == 130
    assert calls[0] == 1
    assert list(tmp_path.iterdir()) == []
