"""The training stack's parts, each against a hand computation: recipes, schedule, loss, data."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from training.config import ConfigError, TrainConfig, load_config, parse_overrides
from training.loss import IGNORE_INDEX, weighted_token_loss
from training.samples import DataError, pack_pretraining, pack_sft, render_conversation
from training.schedule import adaptive_lr, cosine_lr

# Recipes -------------------------------------------------------------------------------------


def test_paper_recipes_as_written() -> None:
    cpt = load_config("bielik-7b-cpt")
    assert (cpt.betas, cpt.weight_decay, cpt.lr, cpt.min_lr) == ((0.9, 0.95), 0.1, 3e-5, 2e-5)
    assert (cpt.warmup_steps, cpt.max_steps, cpt.global_batch, cpt.micro_batch) == (
        2000, 17350, 256, 4)  # fmt: skip
    assert (cpt.clip_grad, cpt.dtype, cpt.seq_len) == (1.0, "bfloat16", 4096)
    sft = load_config("bielik-7b-sft")
    assert (sft.weight_decay, sft.lr, sft.min_lr, sft.warmup_steps) == (0.05, 7e-6, 6e-7, 50)
    assert (sft.global_batch, sft.micro_batch, sft.epochs, sft.seq_len) == (128, 1, 3, 4096)
    assert sft.quality_weights == {"high": 1.0, "medium": 0.7, "low": 0.5}
    assert sft.alr_baseline_tokens > 0
    for tiny in ("tiny-pretrain", "tiny-sft"):
        assert isinstance(load_config(tiny), TrainConfig)


def test_overrides_are_parsed_by_the_field_type() -> None:
    config = load_config(
        "tiny-pretrain",
        ["lr=1e-4", "min_lr=1e-5", "max_steps=7", "betas=[0.8, 0.9]", "compile=true", "out=x"],
    )
    assert (config.lr, config.max_steps, config.betas, config.compile, config.out) == (
        1e-4, 7, (0.8, 0.9), True, "x")  # fmt: skip
    assert isinstance(load_config("tiny-pretrain", ["lr=1"]).lr, float)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["learning_rate=1e-4"], "unknown field 'learning_rate'"),
        (["warmup_step=5"], "did you mean 'warmup_steps'"),
        (["max_steps=ten"], "max_steps must be an integer"),
        (["betas=[0.9]"], "betas must be a list"),
        (["compile=1"], "compile must be true/false"),
        (["lr"], "not KEY=VALUE"),
    ],
)
def test_bad_overrides_are_named(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        load_config("tiny-pretrain", overrides)
    if "unknown" in message:
        assert "valid fields:" in str(error.value) and "min_lr" in str(error.value)


def test_bad_recipe_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; built-in recipes: bielik"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1e-4\nwarmup: 10\n")
    with pytest.raises(ConfigError, match=rf"{bad}: unknown field 'warmup'.*warmup_steps"):
        load_config(bad)
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    assert parse_overrides(["data=[a.txt, b.txt]"]) == {"data": ["a.txt", "b.txt"]}


# Schedule and ALR ----------------------------------------------------------------------------


def test_schedule_at_warmup_start_peak_and_end() -> None:
    peak, floor, warmup, total = 3e-5, 2e-5, 2000, 17350
    assert cosine_lr(0, peak, floor, warmup, total) == pytest.approx(peak / warmup)
    assert cosine_lr(warmup - 1, peak, floor, warmup, total) == pytest.approx(peak)
    assert cosine_lr(warmup, peak, floor, warmup, total) == pytest.approx(peak)
    middle = warmup + (total - 1 - warmup) // 2
    assert cosine_lr(middle, peak, floor, warmup, total) == pytest.approx((peak + floor) / 2, 1e-4)
    assert cosine_lr(total - 1, peak, floor, warmup, total) == pytest.approx(floor)
    assert cosine_lr(total + 5, peak, floor, warmup, total) == pytest.approx(floor)
    lrs = [cosine_lr(s, peak, floor, warmup, total) for s in range(warmup, total)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_alr_scales_with_the_square_root_of_loss_tokens() -> None:
    assert adaptive_lr(7e-6, 131072, 131072) == pytest.approx(7e-6)
    assert adaptive_lr(7e-6, 131072 // 4, 131072) == pytest.approx(3.5e-6)
    assert adaptive_lr(1e-3, 900, 100) == pytest.approx(3e-3)
    assert adaptive_lr(1e-3, 5, 0) == 1e-3  # off


# Loss ----------------------------------------------------------------------------------------


def test_weighted_loss_is_the_hand_computation() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    labels = torch.tensor([[1, IGNORE_INDEX, 4], [IGNORE_INDEX, 0, 2]])
    weights = torch.tensor([1.0, 0.5])
    total, count, correct = weighted_token_loss(logits, labels, weights)
    log_p = torch.log_softmax(logits.detach(), -1)
    by_hand = -(1.0 * (log_p[0, 0, 1] + log_p[0, 2, 4]) + 0.5 * (log_p[1, 1, 0] + log_p[1, 2, 2]))
    assert float(total) == pytest.approx(float(by_hand), rel=1e-6)
    assert int(count) == 4
    hits = [logits[0, 0].argmax() == 1, logits[0, 2].argmax() == 4, logits[1, 1].argmax() == 0,
            logits[1, 2].argmax() == 2]  # fmt: skip
    assert int(correct) == sum(bool(h) for h in hits)
    (total / count).backward()
    # Masked positions take no part: their logits get exactly zero gradient.
    assert (
        torch.count_nonzero(logits.grad[0, 1]) == 0 and torch.count_nonzero(logits.grad[1, 0]) == 0
    )
    assert torch.count_nonzero(logits.grad[0, 0]) == 5


# Data ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer)


def test_pretraining_blocks_are_the_stream_cut_and_mixed(tokenizer: Any, tmp_path: Path) -> None:
    polish = [
        f"Dokument numer {i}: Kraków leży nad Wisłą, a Gdańsk nad Bałtykiem." for i in range(40)
    ]
    english = ["The quick brown fox jumps over the lazy dog."] * 10
    samples = pack_pretraining(
        tokenizer, [("pl", polish), ("en", english)], [3.0, 1.0], 16, tmp_path / "d", seed=1
    )
    assert samples.inputs.shape == samples.labels.shape and samples.inputs.shape[1] == 16
    # Labels are the inputs shifted by one, within each block; every weight is 1.
    np.testing.assert_array_equal(samples.inputs[:, 1:], samples.labels[:, :-1])
    assert (np.asarray(samples.weights) == 1).all()
    # Documents are joined as BOS doc EOS; 3:1 by blocks, the English ones repeated to get there.
    english_ids = set(tokenizer("The quick brown fox", add_special_tokens=False)["input_ids"])
    is_english = [bool(english_ids & set(row.tolist())) for row in samples.inputs]
    share = sum(is_english) / len(is_english)
    assert 0.15 < share < 0.35, share
    assert tokenizer.eos_token_id in samples.inputs and tokenizer.bos_token_id in samples.inputs


def test_too_little_text_is_refused(tokenizer: Any, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"tiny: .* fewer than one block of 513"):
        pack_pretraining(tokenizer, [("tiny", ["Krótko."])], [], 512, tmp_path, seed=0)


def test_sft_learns_only_assistant_content_and_its_eos(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Odpowiadaj krótko."},
        {"role": "user", "content": "Jaka jest stolica Polski?"},
        {"role": "assistant", "content": "Warszawa."},
        {"role": "user", "content": "A Niemiec?"},
        {"role": "assistant", "content": "Berlin."},
    ]
    ids, learned = render_conversation(tokenizer, messages)
    learned_text = tokenizer.decode([t for t, keep in zip(ids, learned, strict=True) if keep])
    assert learned_text.replace(" ", "") == "Warszawa.</s>Berlin.</s>"
    assert not learned[0] and ids[0] == tokenizer.bos_token_id  # BOS is not learned


def test_sft_samples_carry_weights_and_masks(tokenizer: Any, tmp_path: Path) -> None:
    records = [
        {"id": "a", "quality": "high", "messages": [
            {"role": "user", "content": "Hej"}, {"role": "assistant", "content": "Cześć!"}]},
        {"id": "b", "quality": "low", "messages": [
            {"role": "user", "content": "Ile to 2+2?"}, {"role": "assistant", "content": "4"}]},
    ]  # fmt: skip
    weights = {"high": 1.0, "medium": 0.7, "low": 0.5}
    samples = pack_sft(tokenizer, records, weights, 32, tmp_path / "sft")
    assert np.asarray(samples.weights).tolist() == [1.0, 0.5]
    for row in range(2):
        learned = samples.labels[row][samples.labels[row] != IGNORE_INDEX]
        text = tokenizer.decode(learned.tolist())
        assert text.replace(" ", "") == ["Cześć!</s>", "4</s>"][row]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"id": "x", "messages": [{"role": "user", "content": "Hej"}]}, "record x: no assistant"),
        ({"id": "y", "quality": "superb", "messages": [{"role": "assistant", "content": "a"}]},
         "record y: quality 'superb' has no weight"),
        ({"id": "z", "messages": [{"role": "bot", "content": "a"}]}, "record z: every message"),
        ({"id": "w"}, "record w: no 'messages'"),
    ],
)  # fmt: skip
def test_bad_sft_records_are_named(
    tokenizer: Any, tmp_path: Path, record: dict, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        pack_sft(tokenizer, [record], {"high": 1.0, "great": 1.5}, 64, tmp_path)
    with pytest.raises(DataError, match="not in \\(0, 1\\]"):
        good = {"messages": [{"role": "assistant", "content": "a"}], "quality": "great"}
        pack_sft(tokenizer, [good], {"great": 1.5}, 64, tmp_path)


def test_a_conversation_longer_than_seq_len_is_named(tokenizer: Any, tmp_path: Path) -> None:
    record = {"id": "long", "messages": [{"role": "user", "content": "słowo " * 50},
                                          {"role": "assistant", "content": "ok"}]}  # fmt: skip
    with pytest.raises(DataError, match=r"record long: .* longer than seq_len"):
        pack_sft(tokenizer, [record], {"high": 1.0}, 16, tmp_path)


def test_a_data_pipeline_output_directory_is_a_pretraining_source(tmp_path: Path) -> None:
    from training.trainer import pretraining_texts

    for index, texts in enumerate((["Pierwszy.", "Drugi."], ["Trzeci."])):
        shard = tmp_path / f"shard-{index:05d}.jsonl"
        shard.write_text("".join(json.dumps({"id": t, "text": t}) + "\n" for t in texts))
    (tmp_path / "summary.json").write_text("{}")
    assert pretraining_texts(str(tmp_path), "train") == ["Pierwszy.", "Drugi.", "Trzeci."]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no \.txt"):
        pretraining_texts(str(tmp_path / "empty"), "train")


# Recipe values the trainer cannot run are refused while the recipe loads -----------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dtype=bf16"], "dtype must be one of float32, bfloat16, float16, got 'bf16'"),
        (["parallel=fdsp"], "parallel must be one of none, ddp, fsdp, got 'fdsp'"),
        (["task=finetune"], "task must be one of pretrain, sft, got 'finetune'"),
        (["data_split=test"], "data_split must be one of train, calib, eval, got 'test'"),
        (["micro_batch=0"], "micro_batch must be at least 1, got 0"),
        (["max_steps=-3"], "max_steps must be at least 1, got -3"),
        (["epochs=-1"], "epochs must be 0 or more, got -1"),
        (["global_batch=6"], "global_batch 6 is not a multiple of micro_batch 4"),
        (["lr=1e-4", "min_lr=1e-3"], "lr > 0 and lr >= min_lr >= 0, got lr=0.0001, min_lr=0.001"),
        (["min_lr=-1e-5"], "lr >= min_lr >= 0"),
        (["lr=.nan"], "lr >= min_lr >= 0"),
        (["betas=[0.9, 1.0]"], r"betas must each lie in \[0, 1\), got \[0.9, 1.0\]"),
        (["eps=0"], "eps must be above 0, got 0.0"),
        (["clip_grad=-1"], "clip_grad must be above 0"),
        (["weight_decay=-0.1"], "weight_decay must be 0 or more"),
        (["quality_weights={high: 1.5}"], "quality_weights: high's weight 1.5 is not in"),
        (["data=[]"], "data names no source"),
        (["data=[pl-en, nope.txt]"], "data: nope.txt is neither the built-in pretrain set"),
        (["task=sft", "data=[pl-en]"], r"data: pl-en is neither the built-in sft set \(sft\)"),
        (["data_weights=[1, 2]"], "data_weights has 2 values for 1 sources"),
        (["data_weights=[0]"], "data_weights must be positive"),
        (["seed=-1"], "seed must be 0 or more"),
    ],
)
def test_values_the_trainer_cannot_run_are_refused_at_load(
    overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("tiny-pretrain", overrides)


def test_a_recipe_is_checked_with_its_overrides_applied(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 1.0e-4\nmin_lr: 1.0e-3\n")  # wrong alone, fixed on the command line
    assert load_config(recipe, ["min_lr=1e-5"]).min_lr == 1e-5
    with pytest.raises(ConfigError, match="lr >= min_lr"):
        load_config(recipe)


def test_a_missing_local_model_is_named_not_downloaded(tmp_path: Path) -> None:
    """A path that does not exist is an error, not a hub repository of that name; hf: is."""
    missing = "mistralai/Mistral-7B-v0.1"  # a typo'd local path that is also a hub name
    with pytest.raises(ConfigError, match=rf"model: {missing} is not a local directory .*hf:"):
        load_config("tiny-pretrain", [f"model={missing}"])
    with pytest.raises(ConfigError, match=r"tokenizer: .* is not a local directory"):
        load_config("tiny-pretrain", [f"tokenizer={tmp_path / 'nope'}"])
    assert load_config("tiny-pretrain", [f"model=hf:{missing}"]).model == f"hf:{missing}"
    with pytest.raises(ConfigError, match="names no Hugging Face hub repository"):
        load_config("tiny-pretrain", ["model=hf:/"])


def test_from_pretrained_downloads_only_for_hf_names(
    tiny_tokenizer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    from training.trainer import TrainingError, load_tokenizer

    calls = []
    real = AutoTokenizer.from_pretrained

    def recording(name: str, **kwargs: Any) -> Any:
        calls.append((name, kwargs.get("local_files_only", False)))
        return real(name, **kwargs) if kwargs.get("local_files_only") else None

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", recording)
    load_tokenizer(load_config("tiny-pretrain", [f"tokenizer={tiny_tokenizer}"]))
    load_tokenizer(load_config("tiny-pretrain", ["tokenizer=hf:org/name"]))
    assert calls == [(str(tiny_tokenizer), True), ("org/name", False)]
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", real)
    with pytest.raises(TrainingError, match=rf"tokenizer {tmp_path} \(a local directory\) cannot"):
        load_tokenizer(load_config("tiny-pretrain", [f"tokenizer={tmp_path}"]))


# Checkpoints and logs ------------------------------------------------------------------------


def test_rng_state_loads_with_weights_only_and_restores_every_generator(tmp_path: Path) -> None:
    import random

    from training.checkpoint import restore_rng, rng_state

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached Gaussian, part of the state, in both
    np.random.standard_normal()
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(), torch.rand(3))
    state = torch.load(tmp_path / "rng.pt", weights_only=True)  # no arbitrary unpickling
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng(state)
    drawn = (random.random(), random.gauss(0, 1), np.random.standard_normal(), torch.rand(3))
    assert drawn[:3] == expected[:3] and torch.equal(drawn[3], expected[3])


def test_a_torn_last_log_line_is_dropped_and_the_log_rewritten_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from training.trainer import TrainingError, open_log

    log = tmp_path / "log.jsonl"
    whole = "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 7))
    log.write_text(whole + '{"step": 7, "lo')  # the crash tore step 7's line
    open_log(log, start=5).close()
    assert log.read_text() == whole.replace(json.dumps({"step": 6, "loss": 1.0}) + "\n", "")
    # A crash while rewriting leaves the old log as it was, not a truncated one.
    log.write_text(whole)

    def crash(*_: object) -> None:
        raise OSError("crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="crash"):
        open_log(log, start=2)
    assert log.read_text() == whole
    monkeypatch.undo()
    log.write_text('{"step": 1}\nnot json\n{"step": 2}\n')  # damage before the end is not a crash's
    with pytest.raises(TrainingError, match=r"log.jsonl:2 is not a log record"):
        open_log(log, start=2)
