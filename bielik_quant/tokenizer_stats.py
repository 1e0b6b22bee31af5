"""Tokenizer efficiency on Polish and English text (the Bielik paper's Table 2).

For each tokenizer and language: how many tokens the text becomes, characters per token and tokens
per word. Fewer tokens per word means more text fits in a context window and every step of
training and inference covers more language. Special tokens (BOS/EOS) are not counted, and each
document is encoded on its own, as a model would see it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from calibration_data import LANGUAGES, Calibration, count_words

Encode = Callable[[str], list[int]]


class TokenizerLoadError(ValueError):
    """A path that is not a tokenizer we can read."""


@dataclass(frozen=True)
class TokenizerStats:
    tokenizer: str
    language: str
    documents: int
    words: int
    characters: int
    tokens: int

    @property
    def chars_per_token(self) -> float:
        return self.characters / self.tokens

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / self.words

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self) | {
            "chars_per_token": self.chars_per_token,
            "tokens_per_word": self.tokens_per_word,
        }


def load_encoder(path: Path) -> Encode:
    """An encoder for a SentencePiece `.model` file or a Hugging Face tokenizer directory."""
    if path.is_file() and path.suffix == ".model":
        import sentencepiece

        try:
            processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as err:
            raise TokenizerLoadError(f"{path}: not a SentencePiece model ({err})") from None
        return processor.encode
    if not path.is_dir():
        raise TokenizerLoadError(
            f"{path}: expected a tokenizer directory (tokenizer.json or tokenizer.model) "
            "or a SentencePiece .model file"
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise TokenizerLoadError(f"{path}: no tokenizer could be loaded from it ({err})") from None
    # Long documents are fine here: we count tokens, we do not feed a model.
    tokenizer.model_max_length = 1 << 62

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    return encode


def group_by_language(calibration: Calibration) -> dict[str, list[str]]:
    """Texts per language, Polish first; a user's file has no language labels: one group, "all"."""
    groups: dict[str, list[str]] = {language: [] for language in LANGUAGES}
    for document in calibration.documents:
        groups.setdefault(document.language or "all", []).append(document.text)
    return {language: texts for language, texts in groups.items() if texts}


def measure(name: str, encode: Encode, language: str, texts: Iterable[str]) -> TokenizerStats:
    documents = words = characters = tokens = 0
    for text in texts:
        documents += 1
        words += count_words(text)
        characters += len(text)
        tokens += len(encode(text))
    return TokenizerStats(name, language, documents, words, characters, tokens)
