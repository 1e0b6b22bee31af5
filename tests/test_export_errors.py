"""Bad input to `bielik-quant export` / `imatrix`: one clear line, exit 1, and no artifact left."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli import invoke


def assert_fails_cleanly(args: list[str], out: Path, *phrases: str) -> str:
    result = invoke(*args)
    assert result.returncode == 1, result.stderr
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message, message
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in message, message
    # Nothing that looks like an artifact, and no hidden leftovers either.
    assert not out.exists() or list(out.iterdir()) == []
    return message


def copy_model(tiny_model: Path, tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    return model


def export_args(model: Path, out: Path, *extra: str) -> list[str]:
    return ["export", str(model), "--variant", "Q4_K_M", "--out", str(out), *extra]


def test_missing_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_fails_cleanly(export_args(tmp_path / "nope", out), out, "is not a directory")


def test_not_a_hugging_face_directory(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    out = tmp_path / "out"
    assert_fails_cleanly(export_args(tmp_path / "notes", out), out, "no config.json")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors(tiny_model: Path, tmp_path: Path, damage: str) -> None:
    model = copy_model(tiny_model, tmp_path)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 64)
    out = tmp_path / "out"
    assert_fails_cleanly(
        export_args(model, out), out, "model.safetensors", "not a valid safetensors"
    )


def test_pytorch_pickles_are_named(tiny_model: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_model, tmp_path)
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    out = tmp_path / "out"
    assert_fails_cleanly(export_args(model, out), out, "not safetensors", "save_pretrained")


def test_unsupported_architecture(tiny_model: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_model, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    message = assert_fails_cleanly(export_args(model, out), out, "GPT2LMHeadModel")
    assert "LlamaForCausalLM" in message and "MistralForCausalLM" in message


def test_missing_tokenizer(tiny_model: Path, tmp_path: Path) -> None:
    model = copy_model(tiny_model, tmp_path)
    (model / "tokenizer.model").unlink()
    (model / "tokenizer.json").unlink()
    out = tmp_path / "out"
    assert_fails_cleanly(export_args(model, out), out, "no tokenizer", "tokenizer.model")


def test_unknown_variant_lists_the_valid_ones(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["export", str(tiny_model), "--variant", "Q4_K_XL", "--out", str(out)]
    message = assert_fails_cleanly(args, out, "Q4_K_XL")
    assert "Q4_K_M" in message and "IQ2_XXS" in message


def test_unknown_format_lists_the_available_ones(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_fails_cleanly(export_args(tiny_model, out, "--format", "onnx"), out, "onnx", "gguf")


@pytest.mark.parametrize("variant", ["IQ2_XXS", "IQ1_S", "IQ3_XXS"])
def test_iq_types_refuse_to_run_without_an_imatrix(
    tiny_model: Path, tmp_path: Path, variant: str
) -> None:
    out = tmp_path / "out"
    args = ["export", str(tiny_model), "-v", variant, "--imatrix", "none", "--out", str(out)]
    assert_fails_cleanly(args, out, variant, "importance matrix", "--imatrix auto")


def test_override_to_an_iq_type_needs_an_imatrix_too(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = export_args(tiny_model, out, "--imatrix", "none", "--tensor-type", "ffn_up=IQ2_XXS")
    assert_fails_cleanly(args, out, "importance matrix")


@pytest.mark.parametrize(
    ("override", "phrase"),
    [("ffn_up", "REGEX=TYPE"), ("ffn_up=Q9_K", "unknown ggml type"), ("(ffn=Q8_0", "regular")],
)
def test_bad_tensor_type_override(
    tiny_model: Path, tmp_path: Path, override: str, phrase: str
) -> None:
    out = tmp_path / "out"
    assert_fails_cleanly(export_args(tiny_model, out, "--tensor-type", override), out, phrase)


@pytest.mark.parametrize(
    ("content", "phrase"),
    [(b"", "no text"), (b"  \n\n", "no text"), (b"Za\xbf\xf3\xb3\xe6", "UTF-8")],
)
def test_bad_calibration_file(
    tiny_model: Path, tmp_path: Path, content: bytes, phrase: str
) -> None:
    calibration = tmp_path / "calibration.txt"
    calibration.write_bytes(content)
    out = tmp_path / "out"
    args = export_args(tiny_model, out, "--calibration", str(calibration))
    assert_fails_cleanly(args, out, "calibration.txt", phrase)


def test_bad_imatrix_file(tiny_model: Path, tmp_path: Path) -> None:
    fake = tmp_path / "imatrix.gguf"
    fake.write_bytes(b"GGUF but not really")
    out = tmp_path / "out"
    assert_fails_cleanly(export_args(tiny_model, out, "--imatrix", str(fake)), out, "imatrix.gguf")


def test_imatrix_command_refuses_an_existing_output(tiny_model: Path, tmp_path: Path) -> None:
    existing = tmp_path / "imatrix.gguf"
    existing.write_text("mine")
    result = invoke("imatrix", str(tiny_model), "--out", str(existing))
    assert result.returncode == 1 and "already exists" in result.stderr
    assert existing.read_text() == "mine"


def test_existing_output_is_refused_unless_overwrite(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = export_args(tiny_model, out, "--imatrix", "none")
    assert invoke(*args).returncode == 0
    artifact = out / f"{tiny_model.name}-GGUF-Q4_K_M"
    manifest = json.loads((artifact / "bielik-quant.json").read_text())

    refused = invoke(*args)
    assert refused.returncode == 1 and "already exists" in refused.stderr
    assert "--overwrite" in refused.stderr
    assert json.loads((artifact / "bielik-quant.json").read_text()) == manifest

    replaced = invoke(*args, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert (
        json.loads((artifact / "bielik-quant.json").read_text())["created_at"]
        >= manifest["created_at"]
    )
    assert sorted(p.name for p in out.iterdir()) == [artifact.name]


def test_a_killed_export_leaves_nothing_finished_looking_and_reruns(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["export", str(tiny_model), "-v", "Q4_K_M", "-v", "Q8_0", "--out", str(out)]
    process = subprocess.Popen(
        [sys.executable, "-m", "bielik_quant", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    work = out / f".{tiny_model.name}-GGUF.work"
    deadline = time.monotonic() + 120
    while not work.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert work.exists(), "the export ended before it could be interrupted"
    # Only hidden work/staging directories remain: nothing a user or a tool could take as done.
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []

    result = invoke(*args)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        f"{tiny_model.name}-GGUF-Q4_K_M",
        f"{tiny_model.name}-GGUF-Q8_0",
    ]
    for artifact in out.iterdir():
        assert (artifact / "bielik-quant.json").is_file()
