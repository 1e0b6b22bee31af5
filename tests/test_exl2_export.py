"""EXL2 without a GPU: everything of ours around exllamav2's converter, and the refusal.

Every test here runs on any machine (the converter is a stand-in, CUDA is patched away for the
refusal); the real export on a CUDA machine is tests/test_all_formats.py's.
"""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from calibration_data import load
from quantize.errors import MissingDependencyError, QuantizeError, UnknownVariantError
from quantize.exl2 import format as exl2
from quantize.registry import ExportRequest
from quantize.source import ModelSource


def test_variant_names_round_trip() -> None:
    assert "4.0bpw-h6" in exl2.variant_names() and "8.0bpw-h8" in exl2.variant_names()
    variant = exl2.Exl2Variant.parse("4.0bpw-h6")
    assert (variant.bits, variant.head_bits, variant.name) == (4.0, 6, "4.0bpw-h6")
    for bad in ("4bpw-h6", "4.0bpw-h5", "9.0bpw-h6", "Q4_K_M"):
        with pytest.raises(UnknownVariantError, match=r"valid: 2\.5bpw-h6"):
            exl2.Exl2Variant.parse(bad)


def test_calibration_parquet_holds_the_documents_in_order(tmp_path: Path) -> None:
    texts = load("pl-en", split="calib").texts
    path = exl2.write_calibration_parquet(texts, tmp_path / "cal.parquet")
    table = pq.read_table(path)
    assert table.column_names == ["text"]
    assert "".join(table.column("text").to_pylist()) == "".join(t + "\n\n" for t in texts)


def test_converter_arguments(tmp_path: Path) -> None:
    job = exl2.ConvertJob(Path("/m"), tmp_path, tmp_path / "cal.parquet", rows=10, length=256)
    measure = job.measure()
    assert measure[1:3] == ["-m", "exllamav2.conversion.convert_exl2"]
    assert measure[measure.index("-om") + 1] == str(tmp_path / "measurement.json")
    assert "-nr" in measure and measure[measure.index("-c") + 1] == str(tmp_path / "cal.parquet")
    assert measure[measure.index("-r") + 1] == "10" and measure[measure.index("-l") + 1] == "256"
    quantize = job.quantize(exl2.Exl2Variant(4.0, 8), tmp_path / "out")
    assert quantize[quantize.index("-m", 3) + 1] == str(tmp_path / "measurement.json")
    assert quantize[quantize.index("-b") + 1] == "4.0"
    assert quantize[quantize.index("-hb") + 1] == "8"
    assert quantize[quantize.index("-cf") + 1] == str(tmp_path / "out")


def request(tiny_model: Path, out: Path, *variants: str) -> ExportRequest:
    return ExportRequest(
        source=ModelSource.open(tiny_model), out_root=out, variants=variants,
        calibration=load("pl-en", split="calib"), n_ctx=256,
    )  # fmt: skip


def test_without_cuda_export_refuses_and_writes_nothing(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exl2, "_cuda_available", lambda: False)  # any machine, CUDA or not
    assert "a CUDA GPU" in exl2.EXL2().missing()
    with pytest.raises(UnknownVariantError):
        exl2.EXL2().export(request(tiny_model, tmp_path, "Q4_K_M"))
    with pytest.raises(MissingDependencyError, match=r"CUDA.*bielik-quant\[exl2\]"):
        exl2.EXL2().export(request(tiny_model, tmp_path, "4.0bpw-h6"))
    assert list(tmp_path.iterdir()) == []


# A stand-in for exllamav2's converter, run the way the real one is (a module under `python -m`):
# it parses the same arguments, prints [STATUS] lines and writes what the real one writes.
FAKE_CONVERTER = """
import argparse, json, os, pathlib, shutil, sys
p = argparse.ArgumentParser()
for flag in ("-i", "-o", "-c", "-r", "-l", "-mr", "-ml", "-om", "-m", "-b", "-hb", "-cf"):
    p.add_argument(flag)
p.add_argument("-nr", action="store_true")
p.add_argument("-so", action="store_true")
a = p.parse_args()
calls = pathlib.Path(os.environ["FAKE_EXL2_CALLS"])
calls.write_text(calls.read_text() + json.dumps(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_EXL2_REFUSE"):
    print(" ## Error: " + os.environ["FAKE_EXL2_REFUSE"])
    sys.exit()  # the real converter refuses with exit status 0
status = {"stage": "Measuring" if a.om else "Quantizing", "completion": 0.5}
print("[STATUS]" + json.dumps(status) + "[/STATUS]")
if a.om:
    pathlib.Path(a.om).write_text(json.dumps({"measurement": {}, "last_module_idx": 0}))
else:
    out = pathlib.Path(a.cf)
    for f in pathlib.Path(a.i).iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    header = json.dumps({"w": {"dtype": "U8", "shape": [1000], "data_offsets": [0, 1000]}}).encode()
    data = len(header).to_bytes(8, "little") + header + bytes(1000)
    (out / "output.safetensors").write_bytes(data)
"""


@pytest.fixture
def fake_converter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    package = tmp_path / "fake" / "exllamav2" / "conversion"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "convert_exl2.py").write_text(FAKE_CONVERTER)
    calls = tmp_path / "calls.jsonl"
    calls.write_text("")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    monkeypatch.setenv("FAKE_EXL2_CALLS", str(calls))
    monkeypatch.setattr(exl2.EXL2, "check", lambda self: None)  # no GPU needed by the fake
    return calls


def test_export_drives_the_converter_once_per_pass(
    tmp_path: Path, tiny_model: Path, fake_converter: Path
) -> None:
    out = tmp_path / "out"
    seen: list[tuple[str, int, int]] = []
    artifacts = exl2.EXL2().export(
        request(tiny_model, out, "4.0bpw-h6", "6.0bpw-h8"), lambda *a: seen.append(a)
    )
    calls = [json.loads(line) for line in fake_converter.read_text().splitlines()]
    assert [sum("-om" in c for c in calls), len(calls)] == [1, 3]
    measurement = calls[0][calls[0].index("-om") + 1]
    assert all(c[c.index("-m") + 1] == measurement for c in calls[1:])
    assert [c[c.index("-b") + 1] for c in calls[1:]] == ["4.0", "6.0"]
    assert [a.path.name for a in artifacts] == [
        f"{tiny_model.name}-EXL2-4.0bpw-h6",
        f"{tiny_model.name}-EXL2-6.0bpw-h8",
    ]
    # The converter's [STATUS] lines became progress, per pass and stage.
    assert ("EXL2 measure: Measuring", 500, 1000) in seen
    assert ("EXL2 6.0bpw-h8: Quantizing", 500, 1000) in seen
    manifest = json.loads((artifacts[1].path / "bielik-quant.json").read_text())
    assert manifest["format"] == "exl2" and manifest["variant"] == "6.0bpw-h8"
    settings = manifest["exl2"]
    assert (settings["target_bits"], settings["head_bits"]) == (6.0, 8)
    assert settings["calibration_length"] == settings["measurement_length"] == 256
    # Rows: what the calib split fills at 256 tokens, up to the default 128.
    assert 0 < settings["measurement_rows"] <= settings["calibration_rows"] <= 128
    assert manifest["calibration"]["sha256"] == load("pl-en", split="calib").sha256
    assert manifest["size_bytes"] == (artifacts[1].path / "output.safetensors").stat().st_size
    assert manifest["bits_per_weight"] == pytest.approx(8000 / manifest["n_parameters"], abs=1e-4)
    card = (artifacts[1].path / "README.md").read_text()
    assert "ExLlamaV2DynamicGenerator" in card and card.startswith("---")
    # -cf copied the tokenizer; nothing else is left behind (work dir, log).
    assert (artifacts[1].path / "tokenizer.model").read_bytes() == (
        tiny_model / "tokenizer.model"
    ).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == [a.path.name for a in artifacts]


def test_converter_refusal_is_an_error_not_an_artifact(
    tmp_path: Path, tiny_model: Path, fake_converter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The converter says '## Error' and exits 0: we report it, and leave no artifact."""
    monkeypatch.setenv("FAKE_EXL2_REFUSE", "model architecture not supported")
    out = tmp_path / "out"
    with pytest.raises(QuantizeError, match=r"exit status 0.*## Error: model architecture"):
        exl2.EXL2().export(request(tiny_model, out, "4.0bpw-h6"))
    # Only the converter's log, named in the message, stays for the bug report.
    assert [p.name for p in out.iterdir()] == [f".{tiny_model.name}-EXL2.log"]


def test_rows_fit_the_calibration_text(tiny_model: Path) -> None:
    texts = load("pl-en", split="calib").texts
    rows = exl2.calibration_rows(tiny_model, texts, 256, 10_000)
    assert 0 < rows < 10_000  # what the text fills, not what was asked
    assert exl2.calibration_rows(tiny_model, texts, 256, 3) == 3
    with pytest.raises(QuantizeError, match="fewer than one row of 256"):
        exl2.calibration_rows(tiny_model, ["Krótki tekst."], 256, 100)
