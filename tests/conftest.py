"""Shared fixtures. Everything is built locally from our own corpus: nothing comes from a hub."""

from pathlib import Path

import pytest

from calibration_data import load
from training.tokenizer import train_sentencepiece

TOKENIZER_VOCAB = 4096


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Mistral-style SentencePiece BPE tokenizer trained on the corpus's train split."""
    out = tmp_path_factory.mktemp("tokenizer") / "tiny-tokenizer"
    return train_sentencepiece(load("pl-en", split="train").texts, out, TOKENIZER_VOCAB)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    """A tiny Mistral (GQA, sliding window, RoPE, SwiGLU, RMSNorm) trained briefly on the corpus.

    A Hugging Face checkpoint directory, bfloat16 safetensors, with `tokenizer.model`.
    """
    from training.tiny_model import build_tiny_mistral

    out = tmp_path_factory.mktemp("model") / "tiny-mistral"
    return build_tiny_mistral(tiny_tokenizer, load("pl-en", split="train").texts, out)
