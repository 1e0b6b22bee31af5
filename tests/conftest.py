"""Shared fixtures. Everything is built locally from our own corpus: nothing comes from a hub."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from calibration_data import load
from training.tokenizer import train_sentencepiece

TOKENIZER_VOCAB = 4096


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Hash and reference caches go to a directory of this run, never the user's ~/.cache (the
    commands run in subprocesses inherit it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


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


# Every variant the issue names, made in one call so they share one F16 intermediate and imatrix.
EXPORTED_VARIANTS = (
    "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q3_K_L", "Q3_K_M",
    "Q3_K_S", "Q2_K", "IQ4_XS", "IQ3_XXS", "IQ2_XS", "IQ2_XXS", "IQ1_S",
)  # fmt: skip


@pytest.fixture(scope="session")
def gguf_exports(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Path]:
    """`bielik-quant export --format gguf` of every variant, imatrix from the calib split."""
    from tests.cli import invoke

    out = tmp_path_factory.mktemp("artifacts")
    args = ["export", str(tiny_model), "--format", "gguf", "--out", str(out), "--n-ctx", "256"]
    for variant in EXPORTED_VARIANTS:
        args += ["--variant", variant]
    result = invoke(*args)
    assert result.returncode == 0, result.stderr
    return {variant: out / f"{tiny_model.name}-GGUF-{variant}" for variant in EXPORTED_VARIANTS}


@pytest.fixture(scope="session")
def one_step_model(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    """The tiny Mistral after one training step: enough for input and metadata checks, and cheap."""
    from training.tiny_model import TinyMistral, build_tiny_mistral

    out = tmp_path_factory.mktemp("one-step") / "one-step-mistral"
    return build_tiny_mistral(
        tiny_tokenizer, load("pl-en", split="train").texts, out, TinyMistral(train_steps=1)
    )
