"""The release road end to end through the CLI, on a recipe smaller than the demo.

One uninterrupted run is the baseline. The other tests copy it and change a setting, or force a
stage to run again and kill the process (SIGKILL, a real subprocess) while that stage works, then
run again: the resumed road must end with the same measurements as the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli import run_cli

RECIPE = """
name: road-test
data:
  sources: [pl-en]
  steps: [clean, anonymize, quality]
  threshold: 0.3
  morphology: false
  num_proc: 2
pretrain:
  recipe: tiny-pretrain
  tokenizer_vocab: 4096
  overrides: {max_steps: 30, save_every: 10, warmup_steps: 3, log_every: 5}
sft:
  recipe: tiny-sft
  overrides: {epochs: 0, max_steps: 2, save_every: 1}
export:
  n_ctx: 128
  samples: 8
  formats:
    - {format: gguf, variants: [F16, Q8_0, Q4_K_M, Q2_K]}
    - {format: gguf, variants: [Q4_K_M, Q2_K], imatrix: false}
    - {format: hqq, variants: [4bit-g64, 2bit-g64]}
eval: {n_ctx: 128, chunks: 6}
report: {}
release: {}
"""
STAGES = ["data", "pretrain", "sft", "export", "eval", "report", "release"]
ARTIFACTS = 8


def road(recipe: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("release", str(recipe), "--out", str(out), *args, timeout=900)


def stage_lines(stderr: str) -> dict[str, str]:
    """stage → what the run said of it ("done", "skipped: …", "resuming …")."""
    said: dict[str, str] = {}
    for line in stderr.splitlines():
        for name in STAGES:
            prefix = f"/{len(STAGES)}] {name}: "
            if prefix in line:
                said[name] = said.get(name, "") + line.split(prefix, 1)[1] + ";"
    return said


def measurements(out: Path) -> dict[str, dict[str, float]]:
    """Each candidate's statistics by name, and the reference's hash."""
    results = json.loads((out / "eval" / "results.json").read_text("utf-8"))
    rows = {c["name"] + ("" if c["imatrix"] is not False else "-noimatrix"): c["statistics"]
            for c in results["candidates"]}  # fmt: skip
    return {"reference": results["reference"]["sha256"], **rows}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "road.yaml"
    path.write_text(RECIPE, "utf-8")
    return path


@pytest.fixture(scope="module")
def baseline(recipe: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    out = tmp_path_factory.mktemp("road") / "run"
    result = road(recipe, out)
    assert result.returncode == 0, result.stderr
    return out, result.stdout, result.stderr


def copy_of(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    return copy


def test_the_road_runs_end_to_end(baseline: tuple[Path, str, str]) -> None:
    out, stdout, stderr = baseline
    assert all(said == "done;" for said in stage_lines(stderr).values())
    assert list(stage_lines(stderr)) == STAGES
    assert "Traceback" not in stderr
    for stage in STAGES:
        assert json.loads((out / stage / "stage.json").read_text("utf-8"))["stage"] == stage
    # The Table 8 rows and where the report is.
    assert "| GGUF | Q2_K | no |" in stdout and "| HQQ | 2bit-g64 |" in stdout
    assert f"report: {out / 'report' / 'table8'}" in stdout
    # The release: every artifact, each card with its measured row, one index.
    release = out / "release" / "road-test"
    record = json.loads((release / "release.json").read_text("utf-8"))
    assert len(record["artifacts"]) == ARTIFACTS
    cards = sorted(release.glob("road-test-*/*/README.md"))
    assert len(cards) == ARTIFACTS
    assert all("Quality against the FP16 model" in c.read_text("utf-8") for c in cards)
    index = (release / "README.md").read_text("utf-8")
    assert index.count("road-test-GGUF-Q2_K") >= 2  # with and without the imatrix
    assert (release / "report" / "report.html").is_file()


def test_a_second_run_skips_every_stage(
    baseline: tuple[Path, str, str], recipe: Path, tmp_path: Path
) -> None:
    out = copy_of(baseline[0], tmp_path)
    stamps = {s: (out / s / "stage.json").read_bytes() for s in STAGES}
    result = road(recipe, out)
    assert result.returncode == 0, result.stderr
    said = stage_lines(result.stderr)
    assert all(line.startswith("skipped") for line in said.values()), said
    assert {s: (out / s / "stage.json").read_bytes() for s in STAGES} == stamps


def test_a_changed_export_setting_reruns_export_and_what_follows(
    baseline: tuple[Path, str, str], recipe: Path, tmp_path: Path
) -> None:
    out = copy_of(baseline[0], tmp_path)
    # Another importance matrix; and the report without its Markdown.
    result = road(recipe, out, "export.n_ctx=64", "report.formats=[csv, html]")
    assert result.returncode == 0, result.stderr
    said = stage_lines(result.stderr)
    assert [s for s in STAGES if said[s].startswith("skipped")] == ["data", "pretrain", "sft"]
    assert [s for s in STAGES if said[s] == "done;"] == ["export", "eval", "report", "release"]
    before, after = measurements(baseline[0]), measurements(out)
    assert after["road-test-GGUF-Q2_K"] != before["road-test-GGUF-Q2_K"]  # the imatrix changed
    assert after["road-test-HQQ-4bit-g64"] == before["road-test-HQQ-4bit-g64"]  # no calibration
    for report in (out / "report" / "table8", out / "release" / "road-test" / "report"):
        assert (report / "report.html").is_file() and not (report / "report.md").exists()


def started(out: Path, stage: str) -> bool:
    """The stage has done part of its work (and is still working on the rest)."""
    if stage == "pretrain":
        return any((out / "pretrain" / "run" / "checkpoints").glob("step-*/trainer.json"))
    if stage == "export":
        return len(list((out / "export").glob("*/*/bielik-quant.json"))) >= 2
    return any((out / "eval" / "rows").glob("*.json"))


@pytest.mark.parametrize("stage", ["pretrain", "export", "eval"])
def test_a_run_killed_during_a_stage_resumes_to_the_same_results(
    baseline: tuple[Path, str, str], recipe: Path, tmp_path: Path, stage: str
) -> None:
    out = copy_of(baseline[0], tmp_path)
    shutil.rmtree(out / stage)  # so what `started` sees is this run's work (--from redoes it)
    command = [sys.executable, "-m", "bielik_quant", "release", str(recipe), "--out", str(out),
               "--from", stage]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 600
    while not started(out, stage) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the workers it spawned too
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the stage ended before it could be killed"
    assert not (out / stage / "stage.json").exists()

    result = road(recipe, out)
    assert result.returncode == 0, result.stderr
    said = stage_lines(result.stderr)
    assert said[stage].startswith("resuming"), said
    assert measurements(out) == measurements(baseline[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("exprot: {}", "unknown field 'exprot' (did you mean 'export'?)"),
        ("model: /nowhere/model", "model: /nowhere/model is not a Hugging Face checkpoint"),
        ("export: {formats: [{format: exl2, variants: [4.0bpw-h6]}]}", "bielik-quant[exl2]"),
        ("export: {formats: [{format: gguf, variants: [Q4_K_Q]}]}", "unknown gguf variant"),
        ("eval: null", "the report stage needs an eval stage"),
    ],
)
def test_a_bad_recipe_fails_before_any_work(tmp_path: Path, change: str, message: str) -> None:
    recipe = tmp_path / "bad.yaml"
    base = "name: bad\nmodel: ''\npretrain: {recipe: tiny-pretrain, tokenizer_vocab: 4096}\n"
    base += "data: {}\nexport: {formats: [{format: gguf, variants: [Q8_0]}]}\neval: {}\n"
    base += "report: {}\n"
    key = change.split(":")[0]
    lines = [line for line in base.splitlines() if not line.startswith(f"{key}:")]
    recipe.write_text("\n".join([*lines, change]) + "\n", "utf-8")
    out = tmp_path / "run"
    result = road(recipe, out)
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()


def test_from_names_a_stage_of_the_recipe(recipe: Path, tmp_path: Path) -> None:
    result = road(recipe, tmp_path / "run", "--from", "exprot")
    assert result.returncode == 1
    assert "--from exprot: the recipe's stages are data, pretrain" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_training_stage_on_several_processes_runs_under_torchrun(
    one_step_model: Path, tmp_path: Path
) -> None:
    """nproc_per_node > 1: the stage runs `torchrun … -m training` (DDP with gloo on a CPU)."""
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(
        f"name: ddp-road\nmodel: {one_step_model}\n"
        "pretrain: {recipe: tiny-pretrain, nproc_per_node: 2, overrides: {max_steps: 2, "
        "save_every: 1, warmup_steps: 1, parallel: ddp}}\n"
        "export: {n_ctx: 64, formats: [{format: gguf, variants: [Q8_0]}]}\n",
        "utf-8",
    )
    result = road(recipe, tmp_path / "run")
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "run" / "pretrain" / "run" / "log.jsonl").read_text("utf-8").splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2]
    assert (
        tmp_path / "run" / "export" / "gguf" / "ddp-road-GGUF-Q8_0" / "bielik-quant.json"
    ).is_file()
