"""The trainer end to end on the tiny recipes: it learns, resumes exactly, runs under torchrun, and
its output is a checkpoint the rest of bielik-quant reads."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.cli import invoke
from training.checkpoint import CheckpointError
from training.config import TrainConfig, load_config
from training.samples import DataError
from training.trainer import TrainingError, train

STEPS = 12  # the tiny model's loss falls by about one nat in 12 steps


def pretrain_config(tiny_tokenizer: Path, out: Path, *overrides: str) -> TrainConfig:
    return load_config(
        "tiny-pretrain",
        [f"tokenizer={tiny_tokenizer}", f"out={out}", f"max_steps={STEPS}", "log_every=1",
         "save_every=100", *overrides],
    )  # fmt: skip


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def weights(final: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(final / "model.safetensors")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    """An uninterrupted tiny pretraining run; its directory (log.jsonl, final/)."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert train(pretrain_config(tiny_tokenizer, out)) == out / "final"
    return out


def test_pretraining_lowers_the_loss(pretrained: Path) -> None:
    curve = losses(pretrained)
    assert len(curve) == STEPS
    assert curve[-1] < curve[0] - 0.7, curve
    log = [json.loads(line) for line in (pretrained / "log.jsonl").read_text().splitlines()]
    # Every sequence of a pretraining block is learned (127 of 128 positions + the shifted one).
    assert all(record["loss_tokens"] == 8 * 128 for record in log)
    assert all(record["tokens_per_s"] > 0 and record["mfu"] is None for record in log)


def test_stop_and_resume_match_the_uninterrupted_run(
    pretrained: Path, tiny_tokenizer: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = pretrain_config(tiny_tokenizer, out)
    assert train(config, stop_after=5) is None
    assert not (out / "final").exists()
    with (out / "log.jsonl").open("a") as log:  # a step logged after the checkpoint, then a crash
        log.write(json.dumps({"step": 6, "loss": 0.0}) + "\n")
        log.write('{"step": 7, "lo')  # that tore the next line
    assert train(config, resume=True) == out / "final"
    assert losses(out) == losses(pretrained)  # the same numbers, not merely close
    ours, theirs = weights(out / "final"), weights(pretrained / "final")
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
    for rng in (out / "checkpoints").glob("step-*/rng-rank*.pt"):  # plain data, no pickled code
        assert isinstance(torch.load(rng, weights_only=True)["torch"], torch.Tensor)


def test_the_final_checkpoint_is_what_export_reads(pretrained: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = pretrained / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert model.config.architectures == ["MistralForCausalLM"]
    # Stored as published checkpoints are: bfloat16 safetensors, the SentencePiece model beside.
    assert json.loads((final / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in weights(final).values()} == {torch.bfloat16}
    assert (final / "tokenizer.model").is_file()
    inputs = tokenizer("Kraków", return_tensors="pt")
    assert model.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] > 1
    args = ["export", str(final), "--format", "gguf", "-v", "Q8_0", "--imatrix", "none"]
    result = invoke(*args, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "final-GGUF-Q8_0" / "final-GGUF-Q8_0.gguf").is_file()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(parallel: str, tiny_tokenizer: Path, tmp_path: Path) -> None:
    """torchrun with gloo: the same global batch split over 2 processes gives the same training."""
    # Micro-batches of 2: 4 accumulation steps alone, 2 per process, so the gradient sync
    # skipped on all but the last micro-step (no_sync / set_requires_gradient_sync) is covered.
    common = [f"tokenizer={tiny_tokenizer}", "max_steps=6", "log_every=1", "dtype=float32",
              "micro_batch=2"]  # fmt: skip
    single = tmp_path / "single"
    assert train(load_config("tiny-pretrain", [*common, f"out={single}"])) is not None
    double = tmp_path / parallel
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "-m", "training", "tiny-pretrain", *common, f"out={double}", f"parallel={parallel}",
               "save_every=3"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert losses(double) == pytest.approx(losses(single), abs=1e-4)
    ours, theirs = weights(double / "final"), weights(single / "final")
    for name, tensor in theirs.items():  # bfloat16 on disk: a rounding step apart at most
        torch.testing.assert_close(ours[name].float(), tensor.float(), atol=2e-3, rtol=1e-2)
    assert sorted(p.name for p in (double / "checkpoints").iterdir()) == [
        "step-000003", "step-000006"]  # fmt: skip


def sft_records(path: Path) -> Path:
    """Conversations with fixed answers, as a user's JSONL file."""
    pairs = [
        ("Jak się nazywa stolica Polski?", "Stolicą Polski jest Warszawa, położona nad Wisłą."),
        ("Podaj nazwę najdłuższej rzeki w Polsce.", "Najdłuższą rzeką w Polsce jest Wisła."),
        ("Jakie morze leży na północy Polski?", "Na północy Polski leży Morze Bałtyckie."),
        ("Jak nazywa się najwyższy szczyt Tatr?", "Najwyższym szczytem Tatr są Rysy."),
    ]
    lines = [
        json.dumps({"id": f"r{i}", "quality": quality, "messages": [
            {"role": "user", "content": question}, {"role": "assistant", "content": answer}]},
            ensure_ascii=False)
        for i, ((question, answer), quality) in enumerate(
            zip(pairs * 2, ["high", "medium", "low", "high"] * 2, strict=True))
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def nll_by_role(model_dir: Path, records: Path) -> tuple[float, float]:
    """Mean NLL of the assistant's tokens and of the user's, over the records."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.samples import render_conversation

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sums = {"assistant": [0.0, 0], "user": [0.0, 0]}
    for line in records.read_text("utf-8").splitlines():
        messages = json.loads(line)["messages"]
        ids, learned = render_conversation(tokenizer, messages)
        question = tokenizer(messages[0]["content"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            log_p = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        nll = [-float(log_p[t - 1, ids[t]]) for t in range(1, len(ids))]
        for t in range(1, len(ids)):
            if learned[t]:
                sums["assistant"][0] += nll[t - 1]
                sums["assistant"][1] += 1
        start = next(i for i in range(len(ids)) if ids[i : i + 3] == question[:3])
        for t in range(max(start, 1), start + len(question)):
            sums["user"][0] += nll[t - 1]
            sums["user"][1] += 1
    return sums["assistant"][0] / sums["assistant"][1], sums["user"][0] / sums["user"][1]


def test_sft_learns_the_answers_not_the_questions(tiny_model: Path, tmp_path: Path) -> None:
    records = sft_records(tmp_path / "sft.jsonl")
    out = tmp_path / "sft"
    overrides = [f"model={tiny_model}", f"data=[{records}]", f"out={out}", "epochs=20",
                 "seq_len=96", "lr=2e-3", "min_lr=2e-4", "warmup_steps=2"]  # fmt: skip
    final = train(load_config("tiny-sft", overrides))
    assert final is not None
    answer_before, question_before = nll_by_role(tiny_model, records)
    answer_after, question_after = nll_by_role(final, records)
    print(f"NLL answers {answer_before:.3f} -> {answer_after:.3f}, "
          f"questions {question_before:.3f} -> {question_after:.3f}")  # fmt: skip
    assert answer_after < 0.5 * answer_before
    assert question_before - question_after < 0.25 * (answer_before - answer_after)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # Loss tokens are the answers only (ALR scales with them), far fewer than the positions.
    assert all(0 < record["loss_tokens"] < 4 * 96 // 2 for record in log)


def test_resume_from_another_recipe_or_corrupt_checkpoint_is_refused(
    tiny_tokenizer: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = pretrain_config(tiny_tokenizer, out, "save_every=2")
    assert train(config, stop_after=2) is None
    with pytest.raises(TrainingError, match="already holds checkpoints; pass --resume"):
        train(config)
    other = pretrain_config(tiny_tokenizer, out, "save_every=2", "lr=1e-3")
    with pytest.raises(TrainingError, match=r"another recipe .*differs in lr"):
        train(other, resume=True)
    shard = next((out / "checkpoints" / "step-000002").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"step-000002 is corrupt: {shard.name}"):
        train(config, resume=True)
    assert shard.is_file()  # nothing already written is lost


def test_a_diverging_run_stops_with_the_step(tiny_tokenizer: Path, tmp_path: Path) -> None:
    config = pretrain_config(tiny_tokenizer, tmp_path / "run", "lr=1e12", "warmup_steps=1")
    with pytest.raises(TrainingError, match=r"loss became nan at step \d+; .*checkpoint"):
        train(config)


def test_cli_errors_are_one_line(tiny_tokenizer: Path, tmp_path: Path) -> None:
    result = invoke("train", "tiny-pretrain", "learning_rate=1")
    assert result.returncode == 1 and "unknown field 'learning_rate'" in result.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args = ["train", "tiny-sft", f"model={tmp_path}", f"tokenizer={tiny_tokenizer}"]
    result = invoke(*args, f"data=[{empty}]", f"out={tmp_path / 'o'}")
    assert result.returncode == 1 and "no SFT records" in result.stderr, result.stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"messages": []}\nnot json\n')
    result = invoke(*args, f"data=[{broken}]", f"out={tmp_path / 'p'}")
    assert result.returncode == 1 and "broken.jsonl:2 is not JSON" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_gradient_checkpointing_changes_memory_not_results(
    tiny_tokenizer: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Same losses; and each decoder block runs twice per micro-batch (the second time in
    backward, recomputing the activations it did not keep), which only checkpointing does."""
    from torch.nn.modules.module import register_module_forward_pre_hook
    from transformers.models.mistral.modeling_mistral import MistralAttention

    calls = 0

    def count(module: torch.nn.Module, _: object) -> None:
        # The block's attention, not the block: transformers checkpoints the block's forward, so
        # hooks on the block itself stay outside and run once; what runs inside is run again.
        nonlocal calls
        calls += isinstance(module, MistralAttention)

    hook = register_module_forward_pre_hook(count)
    request.addfinalizer(hook.remove)
    runs, counts = [], []
    for flag in ("false", "true"):
        out = tmp_path / flag
        config = pretrain_config(tiny_tokenizer, out, "max_steps=3", f"grad_checkpointing={flag}")
        calls = 0
        train(config)
        runs.append(losses(out))
        counts.append(calls)
    assert runs[0] == pytest.approx(runs[1], abs=1e-4)
    layers = config.model_config["num_hidden_layers"]
    micro_steps = 3 * config.global_batch // config.micro_batch
    assert counts == [layers * micro_steps, 2 * layers * micro_steps]


def test_resume_from_another_starting_model_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    records = sft_records(tmp_path / "sft.jsonl")
    overrides = [f"model={model}", f"data=[{records}]", f"out={tmp_path / 'run'}", "seq_len=96"]
    config = load_config("tiny-sft", overrides)
    assert train(config, stop_after=1) is None
    weights_file = model / "model.safetensors"
    data = bytearray(weights_file.read_bytes())
    data[-1] ^= 0x01  # the same path, other weights
    weights_file.write_bytes(bytes(data))
    with pytest.raises(TrainingError, match="made from another starting model"):
        train(config, resume=True)


def test_data_smaller_than_one_global_batch_is_refused_before_the_model(
    tiny_tokenizer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's bielik-7b-cpt command on our corpus: fewer 4096-token blocks than the 256 of
    one global batch. Refused with the counts before a 7B model is built, in both step modes."""
    import training.trainer

    def no_model(*_: object) -> None:
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(training.trainer, "build_model", no_model)
    base = [f"tokenizer={tiny_tokenizer}", "parallel=none", "compile=false"]
    for steps in ("max_steps=17350", "epochs=1"):
        config = load_config("bielik-7b-cpt", [*base, steps, f"out={tmp_path / steps}"])
        with pytest.raises(DataError, match=r"gives \d+ pretrain samples, fewer than one global "
                           r"batch of 256; give more data or a smaller global_batch"):  # fmt: skip
            train(config)
    records = sft_records(tmp_path / "sft.jsonl")  # 8 conversations, a global batch of 16
    config = load_config("tiny-sft", [f"tokenizer={tiny_tokenizer}", f"data=[{records}]",
                                      "global_batch=16", f"out={tmp_path / 'sft'}"])  # fmt: skip
    with pytest.raises(DataError, match="gives 8 sft samples, fewer than one global batch of 16"):
        train(config)


def test_recipe_and_data_errors_are_one_line(tiny_tokenizer: Path, tmp_path: Path) -> None:
    from training.run import run

    args = ["train", "tiny-pretrain", f"tokenizer={tiny_tokenizer}", f"out={tmp_path / 'b'}"]
    result = invoke(*args, "dtype=bf16")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: dtype must be one of float32, bfloat16, float16, got 'bf16'"]  # fmt: skip
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "Dobry."}\n{"text": \n')
    args = [f"tokenizer={tiny_tokenizer}", f"data=[{bad}]", f"out={tmp_path / 'o'}"]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert run("tiny-pretrain", args) == 1  # as `python -m training` (torchrun) runs it
    assert err.getvalue().splitlines() == [f"error: {bad}:2: invalid JSON (Expecting value)"]


def test_errors_under_torchrun_are_one_line_per_process(
    tiny_tokenizer: Path, tmp_path: Path
) -> None:
    """A bad data path (refused at load) and an empty SFT file (found by the main process while
    the other waits for its samples): one line from each process, no traceback from either.
    (torchrun itself then reports the failed processes, with its own launcher's traceback.)"""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases = {"data=[nope.txt]": "error: data: nope.txt is neither",
             f"data=[{empty}]": "error: "}  # fmt: skip
    for data, expected in cases.items():
        recipe = "tiny-sft" if "empty" in data else "tiny-pretrain"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                   "-m", "training", recipe, f"tokenizer={tiny_tokenizer}", data,
                   f"out={tmp_path / 'o'}", "parallel=ddp"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode != 0
        ours = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(ours) == 2 and all(line.startswith(expected) for line in ours), result.stderr
        assert not [line for line in result.stderr.splitlines()
                    if line.startswith("[rank") and "Traceback" in line], result.stderr  # fmt: skip
