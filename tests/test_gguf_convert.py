"""Our HF → GGUF conversion, checked against the HF model in torch and read back with gguf-py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import sentencepiece
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from calibration_data import load
from quantize.gguf.convert import convert_to_gguf
from quantize.gguf.runner import GGUFRunner
from quantize.source import ModelSource

PROMPT = "Wisła jest najdłuższą rzeką w Polsce. Płynie przez Kraków, Warszawę i Toruń"


@pytest.fixture(scope="module")
def converted(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("converted")
    source = ModelSource.open(tiny_model)
    return {t: convert_to_gguf(source, out / f"{t}.gguf", t) for t in ("F32", "F16", "BF16")}


@pytest.fixture(scope="module")
def hf_logits(tiny_model: Path) -> tuple[list[int], np.ndarray]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids = tokenizer(" ".join(load("pl-en", split="eval", language="pl").texts[:2]))["input_ids"]
    ids = ids[:200]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].numpy()
    return ids, logits


def gguf_fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


@pytest.mark.parametrize(("out_type", "tolerance"), [("F32", 2e-4), ("F16", 5e-3), ("BF16", 2e-2)])
def test_logits_match_the_hf_model(
    converted: dict[str, Path], hf_logits: tuple[list[int], np.ndarray], out_type: str,
    tolerance: float,
) -> None:  # fmt: skip
    ids, expected = hf_logits
    got = GGUFRunner(converted[out_type], n_ctx=256).logits(ids)
    assert got.shape == expected.shape
    # The checkpoint is bfloat16, so F32 holds it exactly; F16/BF16 matmuls round activations.
    assert np.abs(got - expected).max() < tolerance * np.abs(expected).max()
    assert (got.argmax(-1) == expected.argmax(-1)).mean() > 0.97


def test_rope_permutation_is_needed(
    tiny_model: Path, tmp_path: Path, hf_logits: tuple[list[int], np.ndarray]
) -> None:
    """Without undoing HF's rotary layout the logits drift: the permutation is doing real work."""
    from quantize.gguf import convert

    ids, expected = hf_logits
    original = convert._unpermute_rope
    convert._unpermute_rope = lambda weight, n_head: weight
    try:
        path = convert_to_gguf(ModelSource.open(tiny_model), tmp_path / "raw.gguf", "F32")
    finally:
        convert._unpermute_rope = original
    got = GGUFRunner(path, n_ctx=256).logits(ids)
    assert np.abs(got - expected).max() > 100 * 2e-4 * np.abs(expected).max()


def test_metadata_is_complete(converted: dict[str, Path], tiny_model: Path) -> None:
    config = json.loads((tiny_model / "config.json").read_text())
    fields = gguf_fields(converted["F16"])
    expected = {
        "general.architecture": "llama",
        "general.type": "model",
        "general.name": tiny_model.name,
        "general.file_type": int(gguf.LlamaFileType.MOSTLY_F16),
        "general.quantization_version": gguf.GGML_QUANT_VERSION,
        "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": config["hidden_size"],
        "llama.block_count": config["num_hidden_layers"],
        "llama.feed_forward_length": config["intermediate_size"],
        "llama.attention.head_count": config["num_attention_heads"],
        "llama.attention.head_count_kv": config["num_key_value_heads"],
        "llama.rope.dimension_count": config["head_dim"],
        "llama.attention.sliding_window": config["sliding_window"],
        "llama.vocab_size": config["vocab_size"],
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.bos_token_id": config["bos_token_id"],
        "tokenizer.ggml.eos_token_id": config["eos_token_id"],
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_space_prefix": True,
    }
    assert {key: fields.get(key) for key in expected} == expected
    assert fields["llama.rope.freq_base"] == pytest.approx(config["rope_parameters"]["rope_theta"])
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config["rms_norm_eps"])
    assert fields["tokenizer.chat_template"] == (tiny_model / "chat_template.jinja").read_text()
    assert len(fields["tokenizer.ggml.tokens"]) == config["vocab_size"]
    assert "general.size_label" in fields


def test_tensors_have_gguf_names_shapes_and_types(
    converted: dict[str, Path], tiny_model: Path
) -> None:
    config = json.loads((tiny_model / "config.json").read_text())
    tensors = {t.name: t for t in gguf.GGUFReader(converted["F16"]).tensors}
    per_block = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
                 "ffn_up", "ffn_down")  # fmt: skip
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{name}.weight" for i in range(config["num_hidden_layers"]) for name in per_block
    }
    assert set(tensors) == expected
    kv_width = config["num_key_value_heads"] * config["head_dim"]
    assert list(tensors["blk.0.attn_k.weight"].shape) == [config["hidden_size"], kv_width]
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_bf16_keeps_the_checkpoint_bits(converted: dict[str, Path], tiny_model: Path) -> None:
    from safetensors import safe_open

    tensors = {t.name: t for t in gguf.GGUFReader(converted["BF16"]).tensors}
    with safe_open(tiny_model / "model.safetensors", framework="pt") as handle:
        source = handle.get_tensor("model.layers.1.mlp.down_proj.weight")
    written = np.asarray(tensors["blk.1.ffn_down.weight"].data).view(np.uint16)
    assert np.array_equal(written.reshape(source.shape), source.view(torch.uint16).numpy())


def test_sharded_checkpoint_converts_to_the_same_file(tiny_model: Path, tmp_path: Path) -> None:
    sharded = tmp_path / "sharded"
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    model.save_pretrained(sharded, max_shard_size="3MB")
    for name in (
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ):
        shutil.copy2(tiny_model / name, sharded / name)
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    source = ModelSource.open(sharded)
    single = {
        t.name: t
        for t in gguf.GGUFReader(
            convert_to_gguf(ModelSource.open(tiny_model), tmp_path / "one.gguf", "F16")
        ).tensors
    }
    split = {t.name: t for t in gguf.GGUFReader(
        convert_to_gguf(source, tmp_path / "sharded.gguf", "F16")).tensors}  # fmt: skip
    assert set(single) == set(split)
    for name, tensor in single.items():
        assert np.array_equal(tensor.data, split[name].data), name


def eval_snippets() -> list[str]:
    """Eval-split paragraphs in both languages; none starts with whitespace (see below)."""
    texts = load("pl-en", split="eval").texts
    return [p.strip() for text in texts[::4] for p in text.split("\n\n")[:2] if p.strip()]


def test_gguf_tokenizes_like_sentencepiece(converted: dict[str, Path], tiny_model: Path) -> None:
    model_file = str(tiny_model / "tokenizer.model")
    processor = sentencepiece.SentencePieceProcessor(model_file=model_file)
    runner = GGUFRunner(converted["F16"])
    for text in [*eval_snippets(), " leading space", "emoji 🦅 and ½ and \U0001d538"]:
        assert runner.tokenize(text, add_bos=False) == processor.encode(text), text


def test_tokenizer_json_only_tokenizes_like_transformers(tiny_model: Path, tmp_path: Path) -> None:
    """Without tokenizer.model, scores come from the merge ranks; llama.cpp must agree with HF."""
    model_dir = tmp_path / "no-sentencepiece"
    shutil.copytree(tiny_model, model_dir)
    (model_dir / "tokenizer.model").unlink()
    path = convert_to_gguf(ModelSource.open(model_dir), tmp_path / "model.gguf", "F16")
    scores = gguf_fields(path)["tokenizer.ggml.scores"]
    assert len(set(scores)) > len(scores) // 2  # real scores, not a constant placeholder

    runner = GGUFRunner(path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for text in eval_snippets():
        # transformers and SentencePiece differ on text that starts with whitespace (HF's
        # `legacy=False` Metaspace); the snippets are stripped so both sides see the same input.
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert runner.tokenize(text, add_bos=False) == expected, text
