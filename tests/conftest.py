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
